"""Local backend vs Ray Serve (direct data path, one handle call per batch, one per request).

    make bench-ray             (about 4 minutes; make bench-ray BENCH_ARGS=--quick: about 2)
    .venv/bin/python bench/ray_backend.py [--quick] [--rounds R] [--seconds S] [--steps 1,2,4,...]

Model: inferential.models.vision_policy:VisionPolicy (224x224x3 uint8 image + 7 float32
joints -> an (8, 7) action chunk; batched numpy, ~0.2 ms per observation on this machine).
Two servers (`inferential serve --config FILE`, subprocesses), both up for the whole run:
  local        local backend, max_batch_size 16, one worker thread
  ray batched  backend ray: one Serve deployment, max_batch_size 16, each batch over the
               direct data path (the replica's socket; docs/ray.md)
  ray handle   the same, but each batch is one Serve handle call (ray.handle_models): the
               data path before the direct one
  ray per-req  max_batch_size 1 through Serve handles: every batch is one request, so one
               handle call per request; concurrency 1 like the batched ones
  ray per-req x4  max_batch_size 1, concurrency 4 (four calls in flight): per-request calls
               that overlap, the best case of calling Serve per request
The four Ray variants are four applications of ONE embedded Ray cluster (started by the
server, 2 CPUs, 0.5 CPU per replica), so the variants can be measured in interleaved rounds.

0. Breakdown (in this process, before the servers start: its own embedded cluster): one
   batch at a time of 1, 8 and 16 observations to the local backend, over the direct path
   and as a Serve handle call, with wall-clock stamps taken on the replica; the handle call
   is split into pickling the batch, the object store (ray.put of it), Serve's routing and
   the replica's event loop (a call with no payload), and the rest.

1. Fleet: 20 robots x 50 Hz, 150,556-byte observations, open loop (bench/_fleet.py), budget
   20 ms; rounds interleaved across variants. Per request, from the reply's timing: server
   overhead = total_ms - inference_ms (time in the server not spent in the model call: the
   queue and the reply), and the model call split into the model's compute (VisionPolicy
   timed in this process at that batch size) and the rest (for Ray: the handle call and the
   transfer); the round trip seen by the robot; late (after its next observation), sheds,
   silent losses; CPU of the server's whole process tree (the Ray cluster included). For the
   direct path, where its batches' time went under this load, from the replica's stamps
   (the server's /status, RayBackend.health()'s direct_ms): to the replica's thread, to the
   model, the model's run, back to the server's loop.
2. Maximum sustained throughput: closed loop (bench/_closed_loop.py), N robots with one
   150 KB observation in flight each, declaring a 1 s budget (so the backend's capacity,
   not admission against the default 50 ms budget, is what limits); N stepped up until two
   steps in a row gain < 5%, or a loss or sheds over 0.1% of the answers appear
   (_closed_loop.clean); the best such clean N re-measured in rounds (median).
Writes bench/results/ray_backend.json and ray_backend.png; the servers' output (Ray's logs
included) goes to bench/results/ray_backend.server.log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _closed_loop import clean, run_closed_loop, stalled  # noqa: E402
from _fleet import FAST, RobotSpec, run_fleet, summarize  # noqa: E402
from _peers import REPO, descendants, free_port, start_server, stop, tree_cpu_seconds  # noqa: E402

RESULTS = REPO / "bench" / "results"
TARGET = "inferential.models.vision_policy:VisionPolicy"
IMAGE = np.random.default_rng(0).integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
GRACE_S = 6.0
MAX_BATCH = 16
# Closed-loop robots declare a budget this long: with N in flight the round trip is N /
# throughput by construction, and the server's default 50 ms budget would make admission
# shed (DEADLINE_UNMEETABLE) before the backend's capacity is reached.
CLOSED_LOOP_BUDGET_MS = 1000.0
LOG = RESULTS / "ray_backend.server.log"  # the servers' output (Ray's own logging included)

LOCAL, BATCHED, HANDLE = "local", "ray batched", "ray handle"
PER_REQ, PER_REQ_X4 = "ray per-req", "ray per-req x4"
# variant -> (server, model name)
VARIANTS = {LOCAL: ("local", "policy"), BATCHED: ("ray", "batched"), HANDLE: ("ray", "batched-handle"),
            PER_REQ: ("ray", "per-request"), PER_REQ_X4: ("ray", "per-request-x4")}
CALLS = {LOCAL: "in process", BATCHED: "direct, 1 per batch", HANDLE: "1 handle call per batch",
         PER_REQ: "1 handle call per request", PER_REQ_X4: "1 per request, 4 at once"}
HANDLE_MODELS = ["batched-handle", "per-request", "per-request-x4"]


# backend -> the port of its server's /status (metrics.http_port), for the direct path's legs.
STATUS_PORTS: dict[str, int] = {}


def direct_legs(backend: str, model: str) -> dict | None:
    """Where the server's last direct batches of ``model`` spent their time (medians, ms;
    RayBackend.health()'s ``direct_ms``), read from its /status; None if not reported."""
    import urllib.request

    port = STATUS_PORTS.get(backend)
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
            status = json.load(r)
        return status["backend"]["models"][model]["details"].get("direct_ms")
    except Exception:  # an older server, or no answer: the table goes without it
        return None


def server_config(backend: str, status_port: int | None = None) -> dict:
    if backend == "local":
        models = [{"name": "policy", "target": TARGET, "max_batch_size": MAX_BATCH}]
    else:
        replica = {"target": TARGET, "num_replicas": 1, "num_cpus": 0.5}
        models = [
            {"name": "batched", **replica, "max_batch_size": MAX_BATCH},
            {"name": "batched-handle", **replica, "max_batch_size": MAX_BATCH},
            {"name": "per-request", **replica, "max_batch_size": 1},
            {"name": "per-request-x4", **replica, "max_batch_size": 1, "concurrency": 4},
        ]
    # scheduling.max_batch_size caps every model's batch (default 8): raised to the models' 16.
    config = {"backend": backend, "models": models, "scheduling": {"max_batch_size": MAX_BATCH},
              "logging": {"level": "WARNING"}}
    if status_port is not None:
        config["metrics"] = {"http_port": status_port}
    if backend == "ray":
        config["ray"] = {"num_cpus": 2, "handle_models": HANDLE_MODELS}
    return config


def start(backend: str, attempts: int = 3) -> tuple[subprocess.Popen, str, float]:
    """A server that answers. The port is picked free before the server starts, and an
    embedded Ray cluster starting meanwhile may take it (Ray picks random ports too): then
    the server cannot bind and exits while a Ray process answers TCP connects on that port.
    So readiness is a real round trip, and a server that exited is started on another port."""
    for attempt in range(attempts):
        STATUS_PORTS[backend] = free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            json.dump(server_config(backend, STATUS_PORTS[backend]), f)  # JSON is YAML
        t0 = time.perf_counter()
        try:
            proc, endpoint = start_server({}, ["--config", f.name], ready_timeout_s=240.0, log_path=LOG)
        finally:
            os.unlink(f.name)
        if answers(proc, endpoint, VARIANTS[LOCAL if backend == "local" else BATCHED][1]):
            return proc, endpoint, time.perf_counter() - t0
        print(f"  the {backend} server did not answer on {endpoint} (exit code {proc.poll()}); starting it again",
              flush=True)
        shutdown(proc)
    raise RuntimeError(f"the {backend} server did not start (see {LOG})")


def answers(proc: subprocess.Popen, endpoint: str, model: str, timeout_s: float = 240.0) -> bool:
    from inferential import Connection

    end = time.monotonic() + timeout_s
    while time.monotonic() < end and proc.poll() is None:
        try:
            with Connection(server=endpoint, client_id=f"bench-ready-{os.getpid()}") as conn:
                conn.model(model, latency_budget_ms=5000).request(
                    timeout_ms=5000, image=IMAGE, joints=np.zeros(7, np.float32))
            return True
        except Exception:  # no answer yet, or not our server on that port
            time.sleep(0.5)
    return False


def shutdown(proc: subprocess.Popen) -> list[int]:
    """Stop a server; returns the pids of its descendants still alive afterwards (then killed)."""
    children = descendants(proc.pid)
    stop(proc)
    time.sleep(1.0)
    left = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    for pid in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    return left


def compute_ms_table() -> dict[int, float]:
    """VisionPolicy's own run time per batch size, in this process (median of 15)."""
    from inferential.models.vision_policy import VisionPolicy

    model = VisionPolicy()
    model.load()
    joints = np.zeros(7, np.float32)
    table = {}
    for b in range(1, MAX_BATCH + 1):
        batch = [{"image": IMAGE, "joints": joints}] * b
        model.execute(batch)
        times = []
        for _ in range(15):
            t = time.perf_counter()
            model.execute(batch)
            times.append((time.perf_counter() - t) * 1e3)
        table[b] = statistics.median(times)
    return table


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- measurements -------------------------------------------------------------------------------


def breakdown(iterations: int) -> dict:
    """Section 0: where one batch's time goes, local vs direct vs a Serve handle call."""
    import asyncio

    return asyncio.run(_breakdown(iterations))


async def _breakdown(iterations: int) -> dict:
    import pickle

    import ray

    from inferential.config.schema import ModelConfig, RayConfig
    from inferential.dispatch.local import LocalBackend
    from inferential.dispatch.ray.backend import RayBackend
    from inferential.dispatch.ray.direct import decode, encode

    local = LocalBackend([ModelConfig(name="policy", target=TARGET, max_batch_size=MAX_BATCH)])
    backend = RayBackend(
        [ModelConfig(name=name, target=TARGET, num_cpus=0.5, max_batch_size=MAX_BATCH) for name in ("direct", "handle")],
        RayConfig(num_cpus=2, handle_models=["handle"]),
    )
    await local.start()
    await backend.start()
    try:
        # The stamps need the parts under execute(): this reads the backend's internals.
        pool = backend._targets["direct"].direct
        assert pool is not None and pool.pick() is not None, "no replica on the direct path"
        base = backend._targets["handle"].base
        timed = base.options(method_name="execute_batch_timed", _by_reference=True)
        tiny = base.options(method_name="describe", _by_reference=True)
        out: dict = {}
        for n in (1, 8, 16):
            batch = [{"image": IMAGE, "joints": np.zeros(7, np.float32)} for _ in range(n)]
            st: dict[str, list[float]] = {}

            def add(key: str, seconds: float) -> None:
                st.setdefault(key, []).append(seconds * 1e3)

            for i in range(iterations + 3):  # 3 warm-up calls
                keep = i >= 3
                t = time.perf_counter()
                await local.execute("policy", batch)
                local_s = time.perf_counter() - t
                t = time.perf_counter()
                await backend.execute("direct", batch)
                execute_s = time.perf_counter() - t
                # The direct path by hand, with the replica's stamps (wall clock, same machine).
                t0 = time.time()
                frames = encode(batch)
                t1 = time.time()
                reply = await pool.pick().call(frames, 10.0)
                t2 = time.time()
                _, _, (received, started, finished) = decode(reply)
                t3 = time.time()
                # A Serve handle call of the same batch, with the replica's stamps.
                h0 = time.time()
                _, (entered, h_started, h_finished) = await timed.remote(batch)
                h1 = time.time()
                p0 = time.perf_counter()
                pickle.dumps(batch, protocol=5, buffer_callback=lambda b: False)
                p1 = time.perf_counter()
                ref = ray.put(batch)
                p2 = time.perf_counter()
                del ref
                await tiny.remote()
                p3 = time.perf_counter()
                if not keep:
                    continue
                add("local", local_s)
                add("direct", execute_s)
                add("d_encode", t1 - t0)
                add("d_to_replica", received - t1)
                add("d_handoff", started - received)
                add("d_compute", finished - started)
                add("d_back", t2 - finished)
                add("d_decode", t3 - t2)
                add("handle", h1 - h0)
                add("h_to_entry", entered - h0)
                add("h_handoff", h_started - entered)
                add("h_compute", h_finished - h_started)
                add("h_back", h1 - h_finished)
                add("pickle", p1 - p0)
                add("ray_put", p2 - p1)
                add("tiny_call", p3 - p2)
            out[n] = {k: statistics.median(v) for k, v in st.items()}
            out[n]["direct_over_local"] = out[n]["direct"] - out[n]["local"]
            out[n]["handle_over_local"] = out[n]["handle"] - out[n]["local"]
        return out
    finally:
        await backend.stop()
        await local.stop()


def print_breakdown(rows: dict, iterations: int) -> None:
    print(f"\n[breakdown: one batch at a time of 150 KB observations, VisionPolicy; p50 ms of {iterations} "
          f"interleaved calls]")
    print(f"{'batch':>5}{'local':>8}{'direct':>8}{'+local':>8}{'handle':>8}{'+local':>8}")
    for n, r in rows.items():
        print(f"{n:>5}{r['local']:>8.2f}{r['direct']:>8.2f}{r['direct_over_local']:>8.2f}{r['handle']:>8.2f}"
              f"{r['handle_over_local']:>8.2f}")
    print("direct path: " + f"{'batch':>5}{'encode':>8}{'to rep.':>8}{'hand-off':>9}{'compute':>8}{'back':>7}{'decode':>8}")
    for n, r in rows.items():
        print(" " * 13 + f"{n:>5}{r['d_encode']:>8.2f}{r['d_to_replica']:>8.2f}{r['d_handoff']:>9.2f}"
              f"{r['d_compute']:>8.2f}{r['d_back']:>7.2f}{r['d_decode']:>8.2f}")
    print("handle call: " + f"{'batch':>5}{'to rep. loop':>13}{'hand-off':>9}{'compute':>8}{'back':>7}"
          f"{'| pickle':>9}{'ray.put':>8}{'empty call':>11}")
    for n, r in rows.items():
        print(" " * 13 + f"{n:>5}{r['h_to_entry']:>13.2f}{r['h_handoff']:>9.2f}{r['h_compute']:>8.2f}"
              f"{r['h_back']:>7.2f}{r['pickle']:>9.2f}{r['ray_put']:>8.2f}{r['tiny_call']:>11.2f}")
    print("+local: minus the local backend's call. direct: RayBackend.execute over the replica's socket; encode "
          "(pickle, tensors out\nof band), to rep. (send to the replica's I/O thread), hand-off (decode, to its "
          "model thread), back (result to the\nbackend's loop). handle: one Serve handle call (by reference); to "
          "rep. loop = routing + serialisation + object\nstore + the replica's event loop, of which: pickle alone, "
          "ray.put alone (pickle + object store), an empty handle call\n(routing + both event loops, no payload).")


def fleet_round(variant: str, endpoint: str, pid: int, args: argparse.Namespace, r: int, compute: dict) -> dict:
    rng = random.Random(args.seed + r)
    robots = [RobotSpec(f"{variant.replace(' ', '_')}-r{r}-{i:02d}", 50.0, 20.0, 1, FAST, False, rng.randrange(20_000_000))
              for i in range(20)]
    cpu0, t0 = tree_cpu_seconds(pid), time.perf_counter()
    run = run_fleet(endpoint, robots, args.seconds, warmup_s=args.warmup, grace_s=GRACE_S, image=IMAGE,
                    model=VARIANTS[variant][1])
    cpu = (tree_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
    s = summarize(run)
    ok = [x for x in run.measured() if x.status == "OK"]
    overhead = [x.total_ms - x.infer_ms for x in ok]
    call_rest = [x.infer_ms - compute[min(max(x.batch_size, 1), MAX_BATCH)] for x in ok]
    return {
        "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"],
        "overhead_p50_ms": _pct(overhead, 50), "overhead_p99_ms": _pct(overhead, 99),
        "queue_p50_ms": _pct([x.queue_ms for x in ok], 50),
        "call_p50_ms": _pct([x.infer_ms for x in ok], 50), "call_p99_ms": _pct([x.infer_ms for x in ok], 99),
        "compute_p50_ms": _pct([compute[min(max(x.batch_size, 1), MAX_BATCH)] for x in ok], 50),
        "call_rest_p50_ms": _pct(call_rest, 50),
        "outside_p50_ms": _pct([(x.reply_ns - x.sent_ns) / 1e6 - x.total_ms for x in ok], 50),  # type: ignore[operator]
        "mean_batch": s["mean_batch"], "submitted": s["submitted"], "ok": s["answered_ok"],
        "replies_per_s": s["answered_ok"] / args.seconds, "late": s["ok_stale"], "over_budget": s["ok_late"],
        "sheds": sum(s["sheds"].values()), "shed_kinds": s["sheds"], "lost": s["silent_losses"],
        "server_cpu": cpu, "send_lag_p99_ms": s["send_lag_p99_ms"],
        # Direct path only: the server's medians over its last batches (about this round's).
        "legs": direct_legs("ray", VARIANTS[variant][1]) if variant == BATCHED else None,
    }


def fleet(servers: dict, args: argparse.Namespace, compute: dict) -> list[dict]:
    per_round: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant, (server, _) in VARIANTS.items():
            proc, endpoint = servers[server]
            per_round[variant].append(fleet_round(variant, endpoint, proc.pid, args, r, compute))
            print(f"    fleet round {r + 1}: {variant} done", flush=True)
    rows = []
    for variant, rs in per_round.items():
        row: dict = {"variant": variant, "calls": CALLS[variant], "rounds": rs}
        for k in rs[0]:
            if k == "legs":
                legs = [x["legs"] for x in rs if x["legs"]]
                row["legs"] = {n: statistics.median(x[n] for x in legs) for n in legs[0]} if legs else None
                continue
            if k == "shed_kinds":
                continue
            if k in ("submitted", "ok", "late", "over_budget", "sheds", "lost"):
                row[k] = sum(x[k] for x in rs)
            else:
                row[k] = statistics.median(x[k] for x in rs)
        rows.append(row)
    return rows


def throughput(servers: dict, args: argparse.Namespace) -> dict:
    def measure(variant: str, n: int, tag: str) -> dict:
        server, model = VARIANTS[variant]
        proc, endpoint = servers[server]
        res = run_closed_loop(endpoint, n, args.step_seconds, model=model, image=IMAGE, warmup_s=0.5, timeout_s=3.0,
                              name_prefix=tag, cpu_probe=lambda: tree_cpu_seconds(proc.pid),
                              latency_budget_ms=CLOSED_LOOP_BUDGET_MS)
        res["robots"] = n
        return res

    curves: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    searching = set(VARIANTS)
    for n in args.steps:
        for variant in [v for v in VARIANTS if v in searching]:
            res = measure(variant, n, f"tp-{variant.replace(' ', '_')}-{n}")
            curves[variant].append(res)
            if stalled(curves[variant]):
                searching.discard(variant)
        print(f"    throughput: {n} robots in flight done", flush=True)
        if not searching:
            break
    best_n = {v: max((x for x in c if clean(x)), key=lambda x: x["replies_per_s"],
                     default=c[0])["robots"] for v, c in curves.items()}
    confirm: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.confirm_rounds):
        for variant in VARIANTS:
            confirm[variant].append(measure(variant, best_n[variant], f"tpc-{variant.replace(' ', '_')}-{r}"))
    rows = []
    for variant in VARIANTS:
        rs = confirm[variant] or [next(x for x in curves[variant] if x["robots"] == best_n[variant])]
        rows.append({
            "variant": variant, "calls": CALLS[variant], "robots": best_n[variant],
            **{k: statistics.median(x[k] for x in rs) for k in ("replies_per_s", "p50_ms", "p99_ms", "server_cpu_fraction")},
            "lost": sum(x["lost"] for x in rs), "sheds": sum(x["sheds"] for x in rs), "rounds": rs,
        })
    return {"curves": curves, "rows": rows}


# --- output -------------------------------------------------------------------------------------------


def print_fleet(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\n[20 robots x 50 Hz, 150,556-byte observations, VisionPolicy; {args.rounds} interleaved round(s) x "
          f"{args.seconds:g} s; budget 20 ms] medians of rounds; counts are totals")
    print(f"{'variant':<16}{'calls':<26}{'rt p50':>7}{'rt p99':>8}{'ovh p50':>8}{'ovh p99':>8}{'queue':>7}"
          f"{'call':>7}{'compute':>8}{'rest':>6}{'batch':>6}{'in budget':>16}{'late':>5}{'sheds':>6}{'lost':>5}{'CPU':>6}")
    for r in rows:
        within = r["ok"] - r["over_budget"]
        share = f"{within}/{r['submitted']}"
        print(f"{r['variant']:<16}{r['calls']:<26}{r['p50_ms']:>7.2f}{r['p99_ms']:>8.2f}{r['overhead_p50_ms']:>8.2f}"
              f"{r['overhead_p99_ms']:>8.2f}{r['queue_p50_ms']:>7.2f}{r['call_p50_ms']:>7.2f}{r['compute_p50_ms']:>8.2f}"
              f"{r['call_rest_p50_ms']:>6.2f}{r['mean_batch']:>6.1f}{share:>16}{r['late']:>5}{r['sheds']:>6}{r['lost']:>5}"
              f"{r['server_cpu']:>6.0%}")
    print("ms. rt: round trip at the robot. ovh: server overhead per request = timing.total_ms - timing.inference_ms "
          "(queue + reply).\nqueue: arrival to dispatch. call: the model call as the server times it (inference_ms) = "
          "compute (VisionPolicy at that batch\nsize, timed in this process) + rest (thread hand-off; for Ray the "
          "handle call and transfer). in budget: OK within 20 ms / sent. late: after the robot's next\nobservation. "
          "CPU: server process tree, Ray included.")
    for r in rows:
        legs = r.get("legs")
        if legs:
            print(f"{r['variant']}: where a direct batch's time went, from the replica's stamps (medians of the server's "
                  f"last {legs['batches']:.0f} batches, median of rounds): to the replica's thread {legs['to_replica']:.2f}, "
                  f"to the model {legs['to_model']:.2f}, the model {legs['model']:.2f}, back to the server's loop "
                  f"{legs['back']:.2f} ms")


def print_throughput(result: dict) -> None:
    print("\n[maximum sustained throughput, 150 KB observations, closed loop] replies/s by robots in flight")
    variants = list(result["curves"])
    steps = sorted({x["robots"] for c in result["curves"].values() for x in c})
    print(f"{'robots':>7}" + "".join(f"{v:>17}" for v in variants))
    for n in steps:
        cells = []
        for v in variants:
            x = next((y for y in result["curves"][v] if y["robots"] == n), None)
            cells.append("-" if x is None else f"{x['replies_per_s']:.0f} ({x['p99_ms']:.0f} ms)"
                         + ("!" if x["lost"] or x["sheds"] else ""))
        print(f"{n:>7}" + "".join(f"{c:>17}" for c in cells))
    print("(replies/s (p99 round trip); ! = a loss or shed at that step)")
    per_req = next(r for r in result["rows"] if r["variant"] == PER_REQ)["replies_per_s"]
    print("best N re-measured (median of rounds):")
    print(f"{'variant':<16}{'robots':>7}{'replies/s':>11}{'x per-req':>11}{'p50 ms':>8}{'p99 ms':>8}{'lost':>6}{'sheds':>7}{'CPU':>6}")
    for r in result["rows"]:
        print(f"{r['variant']:<16}{r['robots']:>7}{r['replies_per_s']:>11.0f}{r['replies_per_s'] / per_req:>10.2f}x"
              f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['lost']:>6}{r['sheds']:>7}{r['server_cpu_fraction']:>6.0%}")


def evaluate(report: dict) -> list[dict]:
    tp = {r["variant"]: r for r in report["throughput"]["rows"]}
    fl = {r["variant"]: r for r in report["fleet"]}
    per_req = tp[PER_REQ]["replies_per_s"]
    ratio = tp[BATCHED]["replies_per_s"] / per_req
    out = [{"target": "Ray: batching >= 4x the throughput of one handle call per request", "met": ratio >= 4,
            "detail": f"{tp[BATCHED]['replies_per_s']:.0f} vs {per_req:.0f} replies/s = {ratio:.2f}x "
                      f"(vs 4 calls in flight: {tp[BATCHED]['replies_per_s'] / tp[PER_REQ_X4]['replies_per_s']:.2f}x; "
                      f"one handle call per batch, the previous path: {tp[HANDLE]['replies_per_s'] / per_req:.2f}x)"}]
    bd = report.get("breakdown")
    if bd:
        worst = max(r["direct_over_local"] for r in bd.values())
        out.append({"target": "Ray backend overhead per batch <= 2 ms over the local backend", "met": worst <= 2.0,
                    "detail": "breakdown, p50 by batch size, direct: "
                              + ", ".join(f"{n}: {r['direct_over_local']:+.2f}" for n, r in bd.items())
                              + " ms; one handle call per batch (previous): "
                              + ", ".join(f"{n}: {r['handle_over_local']:+.2f}" for n, r in bd.items())
                              + f" ms; fleet, call rest p50: direct {fl[BATCHED]['call_rest_p50_ms']:.2f}, "
                              f"handle {fl[HANDLE]['call_rest_p50_ms']:.2f}, local {fl[LOCAL]['call_rest_p50_ms']:.2f} ms"})
    for variant in (BATCHED, HANDLE, LOCAL):
        r = fl[variant]
        within = r["ok"] - r["over_budget"]
        share = within / r["submitted"] if r["submitted"] else 0.0
        out.append({"target": f"20 x 50 Hz VisionPolicy: >= 99% OK within budget ({variant})", "met": share >= 0.99,
                    "detail": f"{within} of {r['submitted']} OK within 20 ms ({share:.1%}); OK {r['ok']}, "
                              f"late {r['over_budget']}, sheds {r['sheds']}, lost {r['lost']}, p99 {r['p99_ms']:.1f} ms, "
                              f"CPU {r['server_cpu']:.0%} of a core"})
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {LOCAL: "#2a7ab0", BATCHED: "#8cc084", HANDLE: "#6c4f9e", PER_REQ: "#d1495b", PER_REQ_X4: "#edae49"}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    rows = report["fleet"]
    xs = np.arange(len(rows))
    parts = [("queue + reply (overhead)", "overhead_p50_ms", "#999999"), ("model compute", "compute_p50_ms", "#2a7ab0"),
             ("call rest (hand-off / Ray)", "call_rest_p50_ms", "#d1495b"), ("outside the server", "outside_p50_ms", "#edae49")]
    bottom = np.zeros(len(rows))
    for label, key, color in parts:
        vals = np.array([max(0.0, r[key]) for r in rows])
        ax.bar(xs, vals, 0.6, bottom=bottom, color=color, label=label)
        bottom += vals
    ax.scatter(xs, [r["p99_ms"] for r in rows], marker="D", color="black", zorder=3, label="round trip p99")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{r['variant']}\nlate {r['late']} shed {r['sheds']} lost {r['lost']}" for r in rows], fontsize=8)
    ax.set_ylabel("ms (p50 of each part; diamond: round trip p99)")
    ax.set_title("20 robots x 50 Hz, 150 KB: where a request's time goes (p50)", fontsize=10)
    ax.legend(fontsize=8)
    ax = axes[1]
    for variant, curve in report["throughput"]["curves"].items():
        ax.plot([x["robots"] for x in curve], [x["replies_per_s"] for x in curve], marker="o", color=colors[variant],
                label=variant)
    ax.axhline(1000, color="black", linestyle=":", linewidth=0.8)
    ax.text(1, 1010, "20 x 50 Hz", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("robots, one 150 KB observation in flight each")
    ax.set_ylabel("replies/s")
    ax.set_title("maximum sustained throughput (closed loop)", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(f"Local vs Ray Serve backends, VisionPolicy ({report['meta']['mode']} run {report['meta']['date']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one fleet round of 3 s, fewer steps (about 2 minutes)")
    ap.add_argument("--rounds", type=int, help="fleet rounds (default 2, quick 1)")
    ap.add_argument("--seconds", type=float, help="measured seconds per fleet run (default 6, quick 3)")
    ap.add_argument("--steps", help="robots in flight to try, comma-separated (default 1,2,4,8,16,32; quick 2,8,32)")
    ap.add_argument("--breakdown-calls", type=int, help="calls per batch size in the breakdown (default 60, quick 25; 0: skip)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "ray_backend.json"))
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 2)
    args.seconds = args.seconds or (3.0 if q else 6.0)
    args.warmup = 0.5 if q else 1.0
    args.steps = tuple(int(x) for x in args.steps.split(",")) if args.steps else ((2, 8, 32) if q else (1, 2, 4, 8, 16, 32))
    args.step_seconds = 1.5 if q else 2.5
    args.confirm_rounds = 0 if q else 2
    if args.breakdown_calls is None:
        args.breakdown_calls = 25 if q else 60

    started = time.perf_counter()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average before the run "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "mode": "quick" if q else "full",
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "configs": {b: server_config(b) for b in ("local", "ray")},
    }
    print(f"Machine: {meta['machine']}. Mode: {meta['mode']}.")
    compute = compute_ms_table()
    meta["compute_ms_by_batch"] = compute
    print("VisionPolicy compute here, ms by batch size: " + ", ".join(f"{b}: {compute[b]:.2f}" for b in (1, 2, 4, 8, 16)))
    report: dict = {"meta": meta}
    servers: dict = {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    LOG.write_text("")
    if args.breakdown_calls:
        print("  breakdown: an embedded Ray cluster in this process ...", flush=True)
        report["breakdown"] = breakdown(args.breakdown_calls)
        print_breakdown(report["breakdown"], args.breakdown_calls)
    try:
        proc, endpoint, _ = start("local")
        servers["local"] = (proc, endpoint)
        print("  starting the Ray server (embedded cluster, four applications) ...", flush=True)
        proc, endpoint, ready_s = start("ray")
        servers["ray"] = (proc, endpoint)
        meta["ray_ready_s"] = round(ready_s, 1)
        cpu0 = tree_cpu_seconds(proc.pid)
        time.sleep(3.0)
        meta["ray_idle_cpu"] = (tree_cpu_seconds(proc.pid) - cpu0) / 3.0
        meta["ray_processes"] = 1 + len(descendants(proc.pid))
        print(f"  Ray server ready in {ready_s:.1f} s ({meta['ray_processes']} processes; idle, the tree uses "
              f"{meta['ray_idle_cpu']:.1%} of a core)", flush=True)
        report["fleet"] = fleet(servers, args, compute)
        print_fleet(report["fleet"], args)
        report["throughput"] = throughput(servers, args)
        print_throughput(report["throughput"])
    finally:
        for name, (proc, _) in servers.items():
            t0 = time.perf_counter()
            left = shutdown(proc)
            meta[f"{name}_stop_s"] = round(time.perf_counter() - t0, 1)
            if left:
                print(f"  note: {len(left)} processes of the {name} server outlived it (killed): {left}")
                meta[f"{name}_leftover_pids"] = left

    report["targets"] = evaluate(report)
    print("\nTargets:")
    for t in report["targets"]:
        print(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']} -- {t['detail']}")
    meta["wall_time_s"] = round(time.perf_counter() - started, 1)
    meta["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    png = out.with_suffix(".png")
    plot(report, png)
    print(f"\nwrote {out} and {png} (wall time {meta['wall_time_s']:.0f} s; Ray ready in {meta['ray_ready_s']} s, "
          f"stopped in {meta.get('ray_stop_s')} s; load average after {meta['load_average_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
