"""Our server against the transport floor, the published 1.4.0 package and gRPC, in one run.

    make bench                 (about 6 minutes; make bench BENCH_ARGS=--quick: about 2)
    .venv/bin/python bench/compare.py [--quick] [--rounds R] [--seconds S] [--fleet100-image small|150kb]

Peers, each a process of its own on loopback, all started once and kept for the run:
  floor      raw pyzmq ROUTER echo (bench/_peers.py). Sequential: it sends back every frame
             (the 150 KB too); fleets and throughput: only the envelope frame, a reply as
             small as the servers' (else the floor would move twice the bytes they do)
  ours       `inferential serve`, local backend, models noop (testing.NoOp) and sleep1
             (testing.Sleep, 1 ms per batch), on the pure-Python transport (transport.native
             off); the Python client, sync and async, and (row "ours no SDK") a bare DEALER
             sending the SDK's frames: the server's share alone
  ours native  the same server with transport.native on (the inferential_native module,
             server-native/: socket on a native I/O thread); skipped with --no-native or
             when the module is not built
  1.4.0      the published server in its own venv (bench/_published_peer.py): noop inline,
             sleep1 1 ms per call on a worker thread; its own client for the sequential runs
  gRPC       a generic bytes echo, sync grpcio server (bench/_grpc_echo.py): unary and
             bidi stream sequentially, unary ("Head": envelope-sized reply) in fleets
While one peer is measured the others are stopped (SIGSTOP), so an idle peer's timers
cannot take CPU from it (1.4.0 polls each model it has seen at 1 kHz forever). After its run
a peer may first work off any backlog (until it uses < 30% of a core, at most 20 s).

Workloads
  1 robot    sequential round trips of a 150,556-byte observation (224x224x3 uint8 image +
             7 float32 joints), rounds interleaved across peers (ABAB), medians of rounds
  20 x 50 Hz open-loop fleet (bench/_fleet.py), 150 KB observations, the 1 ms model;
             a robot's budget is its period (20 ms)
  100 x 50 Hz the same with small observations (32x32x3 image + joints, 3,100 bytes): 5,000
             150 KB observations/s (750 MB/s) are more than this 2-core machine moves even
             through the raw echo (--fleet100-image 150kb to see it)
  max throughput  closed loop, small observations: N robots with one request in flight each,
             N stepped up until two steps in a row gain < 5%, or a loss or sheds over
             0.1% of the answers appear (_closed_loop.clean);
             with the no-op model (server overhead only) and the 1 ms model (batching);
             then the best N of each peer re-measured in interleaved rounds (median); the
             robots declare no budget (our server applies its default, 50 ms)
Per fleet run, from the robot's side: p50/p99 round trip, late = OK after the robot's next
observation, explicit sheds (status), silent losses (no reply by the end + 6 s), server CPU
(/proc of the server process over the run). Fleet counts are totals over rounds; latency and
CPU are medians of rounds. Idle server CPU is measured before any traffic and after it.
Writes bench/results/compare.json and compare.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _grpc_echo  # noqa: E402
from _closed_loop import SHED_TOLERANCE, clean, run_closed_loop, stalled  # noqa: E402
from _fleet import FAST, RobotSpec, run_fleet, summarize  # noqa: E402
from _fleet import IMAGE as SMALL_IMAGE  # noqa: E402
from _peers import IMAGE, JOINTS, PY, REPO, cpu_seconds, free_port, pause, resume, start_echo, start_server, stop, measure_echo, time_round_trips, wait_ready  # noqa: E402

from inferential import AsyncConnection, Connection  # noqa: E402
from inferential.errors import DeadlineUnmeetable  # noqa: E402
from inferential._envelope import encode_observation  # noqa: E402
from inferential._proto import inferential_pb2 as pb  # noqa: E402
from inferential.wire import DEFAULT_LIMITS  # noqa: E402

PUBLISHED_PY = REPO / ".venv-published" / "bin" / "python"
RESULTS = REPO / "bench" / "results"
GRACE_S = 6.0  # TTL (5 s, both servers' default) + 1 s

FLOOR, OURS, OURS_ASYNC, OURS_RAW, PUB, GRPC, GRPC_STREAM = (
    "floor", "ours", "ours async", "ours no SDK", "1.4.0", "gRPC", "gRPC stream")
NATIVE, NATIVE_RAW = "ours native", "native no SDK"
BENCH_MODELS = {"noop": "inferential.models.testing:NoOp", "sleep1": "inferential.models.testing:Sleep"}


def _transport_config(native: bool) -> Path:
    """A config file selecting the transport (the server's default, auto, would pick native
    whenever the module is built)."""
    path = RESULTS / f".bench-transport-{'native' if native else 'python'}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"transport:\n  native: \"{'on' if native else 'off'}\"\n")
    return path


# --- peers -------------------------------------------------------------------------------


class Peers:
    """Every peer process, started once; at most one running while measured."""

    def __init__(self, with_published: bool, with_native: bool = False) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.endpoints: dict[str, str] = {}
        self.settle_s: dict[str, float] = {}
        self.settle_max_s: dict[str, float] = {}
        try:
            self.procs["echo"], self.endpoints["echo"] = start_echo("all")
            self.procs["echo-env"], self.endpoints["echo-env"] = start_echo("envelope")
            self.procs["ours"], self.endpoints["ours"] = start_server(
                BENCH_MODELS, ["--config", str(_transport_config(False))]
            )
            if with_native:
                self.procs["native"], self.endpoints["native"] = start_server(
                    BENCH_MODELS, ["--config", str(_transport_config(True))]
                )
            if with_published:
                ep = f"tcp://127.0.0.1:{free_port()}"
                proc = subprocess.Popen([str(PUBLISHED_PY), str(REPO / "bench" / "_published_peer.py"), "--bind", ep])
                self.procs["published"], self.endpoints["published"] = proc, ep
                wait_ready(proc, ep)
            port = free_port()
            self.procs["grpc"] = subprocess.Popen(
                [PY, str(REPO / "bench" / "_grpc_echo.py"), "--bind", f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL
            )
            self.endpoints["grpc"] = f"127.0.0.1:{port}"
            wait_ready(self.procs["grpc"], f"tcp://127.0.0.1:{port}")
            time.sleep(0.3)
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def only(self, *keys: str) -> Iterator[None]:
        """Run only these peers; afterwards let them finish their backlog before they may be paused."""
        for key, proc in self.procs.items():
            (resume if key in keys else pause)(proc)
        try:
            yield
        finally:
            for key in keys:
                self.settle(key)
            for proc in self.procs.values():
                resume(proc)

    def settle(self, key: str, quiet: float = 0.3, limit_s: float = 20.0) -> None:
        """Wait until the peer uses less than ``quiet`` of a core (an overloaded server may
        still be working through a backlog), so it starts its next run clean."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit_s:
            cpu0 = self.cpu(key)
            time.sleep(0.25)
            if (self.cpu(key) - cpu0) / 0.25 < quiet:
                break
        waited = time.perf_counter() - t0
        self.settle_s[key] = self.settle_s.get(key, 0.0) + waited
        self.settle_max_s[key] = max(self.settle_max_s.get(key, 0.0), waited)

    def cpu(self, key: str) -> float:
        return cpu_seconds(self.procs[key].pid)

    def idle_cpu(self, seconds: float) -> dict[str, float]:
        """Share of a core each peer uses with no traffic, all measured at once."""
        before = {k: self.cpu(k) for k in self.procs}
        time.sleep(seconds)
        return {k: (self.cpu(k) - before[k]) / seconds for k in self.procs}

    def close(self) -> None:
        for proc in self.procs.values():
            resume(proc)
            stop(proc)


def observation_message(image: np.ndarray) -> bytes:
    """What gRPC carries for one observation: the same envelope and payload bytes, as one message."""
    frames = encode_observation(client_id="bench", client_type="", model_id="noop", request_id=1,
                                inputs={"image": image, "joints": JOINTS}, limits=DEFAULT_LIMITS)
    return b"".join(bytes(f) for f in frames[1:])


# --- 1 robot, sequential -------------------------------------------------------------------------


class Timed(list):
    """Round trips in ms, plus the server's own share of each (reply timing.total_ms)."""

    server_ms: list[float]


def measure_sync(endpoint: str, model_id: str, n: int, warmup: int) -> Timed:
    out = Timed()
    out.server_ms = []
    with Connection(server=endpoint, client_id=f"bench-sync-{model_id}") as conn:
        model = conn.model(model_id)
        for i in range(n + warmup):
            t = time.perf_counter()
            try:
                result = model.request(timeout_ms=5000, image=IMAGE, joints=JOINTS)
            except DeadlineUnmeetable:
                # A stall of this shared machine past the default 50 ms budget: the server
                # withholds the late result, the round trip still happened.
                result = None
            if i >= warmup:
                out.append((time.perf_counter() - t) * 1e3)
                if result is not None:
                    out.server_ms.append(result.timing.total_ms)
    return out


def measure_async(endpoint: str, model_id: str, n: int, warmup: int) -> Timed:
    async def run() -> Timed:
        out = Timed()
        out.server_ms = []
        async with AsyncConnection(server=endpoint, client_id=f"bench-async-{model_id}") as conn:
            model = conn.model(model_id)
            for i in range(n + warmup):
                t = time.perf_counter()
                try:
                    result = await model.request(timeout_ms=5000, image=IMAGE, joints=JOINTS)
                except DeadlineUnmeetable:  # as in measure_sync
                    result = None
                if i >= warmup:
                    out.append((time.perf_counter() - t) * 1e3)
                    if result is not None:
                        out.server_ms.append(result.timing.total_ms)
        return out

    return asyncio.run(run())


def measure_raw(endpoint: str, model_id: str, n: int, warmup: int) -> list[float]:
    """Our server through a bare DEALER sending the SDK's frames (a new request id each):
    the server's share of the round trip without the client SDK's."""
    frames = encode_observation(client_id="bench-raw", client_type="", model_id=model_id, request_id=1,
                                inputs={"image": IMAGE, "joints": JOINTS}, limits=DEFAULT_LIMITS)
    obs = pb.Observation.FromString(frames[1])

    def renumber(frames: list, i: int) -> None:
        obs.request_id = i + 1
        frames[1] = obs.SerializeToString()

    return time_round_trips(endpoint, frames, n, warmup, renumber)


def measure_published(endpoint: str, model_id: str, n: int, warmup: int) -> list[float]:
    out = subprocess.run(
        [str(PUBLISHED_PY), str(REPO / "bench" / "_published_client.py"), endpoint, model_id, str(n), str(warmup)],
        capture_output=True, text=True, timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"1.4.0 client failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def sequential(peers: Peers, args: argparse.Namespace) -> list[dict]:
    ep = peers.endpoints
    message = observation_message(IMAGE)
    rows: list[tuple[str, str, str, Callable[[], list[float]]]] = [
        (FLOOR, "-", "echo", lambda: measure_echo(ep["echo"], args.n, args.warmup_n)),
        (OURS, "no-op", "ours", lambda: measure_sync(ep["ours"], "noop", args.n, args.warmup_n)),
        (OURS_ASYNC, "no-op", "ours", lambda: measure_async(ep["ours"], "noop", args.n, args.warmup_n)),
        (OURS_RAW, "no-op", "ours", lambda: measure_raw(ep["ours"], "noop", args.n, args.warmup_n)),
        (OURS, "1 ms", "ours", lambda: measure_sync(ep["ours"], "sleep1", args.n, args.warmup_n)),
        (OURS_ASYNC, "1 ms", "ours", lambda: measure_async(ep["ours"], "sleep1", args.n, args.warmup_n)),
    ]
    if "native" in ep:
        rows += [
            (NATIVE, "no-op", "native", lambda: measure_sync(ep["native"], "noop", args.n, args.warmup_n)),
            (NATIVE_RAW, "no-op", "native", lambda: measure_raw(ep["native"], "noop", args.n, args.warmup_n)),
            (NATIVE, "1 ms", "native", lambda: measure_sync(ep["native"], "sleep1", args.n, args.warmup_n)),
        ]
    if "published" in ep:
        rows += [
            (PUB, "no-op", "published", lambda: measure_published(ep["published"], "noop", args.n, args.warmup_n)),
            (PUB, "1 ms", "published", lambda: measure_published(ep["published"], "sleep1", args.n, args.warmup_n)),
        ]
    rows += [
        (GRPC, "-", "grpc", lambda: _grpc_echo.sequential_unary(ep["grpc"], message, args.n, args.warmup_n)),
        (GRPC_STREAM, "-", "grpc", lambda: _grpc_echo.sequential_stream(ep["grpc"], message, args.n, args.warmup_n)),
    ]
    per_round: dict[tuple[str, str], list[dict]] = {(p, m): [] for p, m, _, _ in rows}
    for _ in range(args.rounds):
        for peer, model, key, fn in rows:
            with peers.only(key):
                cpu0, t0 = peers.cpu(key), time.perf_counter()
                lat = fn()
                cpu = (peers.cpu(key) - cpu0) / (time.perf_counter() - t0)
            server_ms = getattr(lat, "server_ms", None)
            per_round[(peer, model)].append({
                "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "per_s": 1e3 / float(np.mean(lat)), "server_cpu": cpu,
                "server_p50_ms": _pct(server_ms, 50) if server_ms else float("nan"),
            })
    out = []
    for (peer, model), rs in per_round.items():
        out.append({"peer": peer, "model": model, **{k: statistics.median(r[k] for r in rs) for k in rs[0]}, "rounds": rs})
    floor = out[0]["p50_ms"]
    for row in out:
        row["p50_vs_floor"] = row["p50_ms"] / floor
    return out


# --- fleets -------------------------------------------------------------------------------------


def robots(n: int, tag: str, seed: int) -> list[RobotSpec]:
    rng = random.Random(seed)
    return [RobotSpec(f"{tag}-{i:03d}", 50.0, 20.0, 1, FAST, False, rng.randrange(20_000_000)) for i in range(n)]


def fleet(peers: Peers, args: argparse.Namespace, n: int, image: np.ndarray, label: str) -> list[dict]:
    ep = peers.endpoints
    grpc_message = observation_message(image)
    variants: list[tuple[str, str, Callable[[list[RobotSpec]], object]]] = [
        (FLOOR, "echo-env", lambda rs: run_fleet(ep["echo-env"], rs, args.seconds, warmup_s=args.warmup, grace_s=GRACE_S,
                                                 image=image, echo_peer=True)),
        (OURS, "ours", lambda rs: run_fleet(ep["ours"], rs, args.seconds, warmup_s=args.warmup, grace_s=GRACE_S,
                                            image=image, model="sleep1")),
    ]
    if "native" in ep:
        variants.append((NATIVE, "native", lambda rs: run_fleet(
            ep["native"], rs, args.seconds, warmup_s=args.warmup, grace_s=GRACE_S, image=image, model="sleep1")))
    if "published" in ep:
        variants.append((PUB, "published", lambda rs: run_fleet(
            ep["published"], rs, args.seconds, warmup_s=args.warmup, grace_s=GRACE_S, image=image, model="sleep1",
            v1_server=True)))
    variants.append((GRPC, "grpc", lambda rs: _grpc_echo.run_fleet(
        ep["grpc"], rs, args.seconds, grpc_message, warmup_s=args.warmup, grace_s=GRACE_S)))
    per_round: dict[str, list[dict]] = {v[0]: [] for v in variants}
    for r in range(args.fleet_rounds):
        for peer, key, fn in variants:
            rs = robots(n, f"{label}-r{r}-{key}", args.seed + r)
            with peers.only(key):
                cpu0, t0 = peers.cpu(key), time.perf_counter()
                run = fn(rs)
                cpu = (peers.cpu(key) - cpu0) / (time.perf_counter() - t0)
            s = summarize(run)  # type: ignore[arg-type]
            timed = [x for x in run.measured() if x.status == "OK" and x.total_ms > 0]  # type: ignore[attr-defined]
            inside = {
                "server_p50_ms": _pct([x.total_ms for x in timed], 50), "server_p99_ms": _pct([x.total_ms for x in timed], 99),
                "queue_p50_ms": _pct([x.queue_ms for x in timed], 50), "model_p50_ms": _pct([x.infer_ms for x in timed], 50),
            }
            per_round[peer].append({**inside,
                "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "submitted": s["submitted"], "ok": s["answered_ok"],
                "late": s["ok_stale"], "over_budget": s["ok_late"], "sheds": sum(s["sheds"].values()),
                "shed_kinds": s["sheds"], "lost": s["silent_losses"], "mean_batch": s["mean_batch"],
                "server_cpu": cpu, "replies_per_s": s["answered_ok"] / args.seconds,
                "send_lag_p99_ms": s["send_lag_p99_ms"], "loadgen_cpu": s["loadgen_cpu_fraction"],
            })
            print(f"    {label} round {r + 1}: {peer} done", flush=True)
    out = []
    for peer, rs in per_round.items():
        row = {"peer": peer, "rounds": rs}
        for k in ("p50_ms", "p99_ms", "server_cpu", "replies_per_s", "mean_batch", "send_lag_p99_ms", "loadgen_cpu",
                  "server_p50_ms", "server_p99_ms", "queue_p50_ms", "model_p50_ms"):
            row[k] = statistics.median(x[k] for x in rs)
        for k in ("submitted", "ok", "late", "over_budget", "sheds", "lost"):
            row[k] = sum(x[k] for x in rs)
        out.append(row)
    floor = out[0]["p50_ms"]
    for row in out:
        row["p50_vs_floor"] = row["p50_ms"] / floor
    return out


# --- maximum throughput -----------------------------------------------------------------------------


def throughput(peers: Peers, args: argparse.Namespace, model: str) -> dict:
    """Replies/s against robots in flight, per peer, and the best N re-measured in rounds."""
    ep = peers.endpoints
    grpc_message = observation_message(SMALL_IMAGE)
    variants: dict[str, tuple[str, Callable[[int, str, float], dict]]] = {}
    if model == "noop":
        variants[FLOOR] = ("echo-env", lambda n, tag, s: run_closed_loop(
            ep["echo-env"], n, s, mode="echo", image=SMALL_IMAGE, name_prefix=tag, cpu_probe=lambda: peers.cpu("echo-env")))
    variants[OURS] = ("ours", lambda n, tag, s: run_closed_loop(
        ep["ours"], n, s, mode="v2", model=model, image=SMALL_IMAGE, name_prefix=tag, cpu_probe=lambda: peers.cpu("ours")))
    if "native" in ep:
        variants[NATIVE] = ("native", lambda n, tag, s: run_closed_loop(
            ep["native"], n, s, mode="v2", model=model, image=SMALL_IMAGE, name_prefix=tag,
            cpu_probe=lambda: peers.cpu("native")))
    if "published" in ep:
        variants[PUB] = ("published", lambda n, tag, s: run_closed_loop(
            ep["published"], n, s, mode="v1", model=model, image=SMALL_IMAGE, name_prefix=tag,
            cpu_probe=lambda: peers.cpu("published")))
    if model == "noop":
        variants[GRPC] = ("grpc", lambda n, tag, s: _grpc_echo.closed_loop(
            ep["grpc"], n, s, grpc_message, cpu_probe=lambda: peers.cpu("grpc")))

    curves: dict[str, list[dict]] = {p: [] for p in variants}
    searching = set(variants)
    for n in args.steps:
        for peer in [p for p in variants if p in searching]:
            key, fn = variants[peer]
            with peers.only(key):
                res = fn(n, f"tp-{model}-{key}-{n}", args.step_seconds)
            res["robots"] = n
            curves[peer].append(res)
            if stalled(curves[peer]):
                searching.discard(peer)
        print(f"    throughput ({model}): {n} robots in flight done", flush=True)
    best_n = {p: max((r for r in c if clean(r)), key=lambda r: r["replies_per_s"],
                     default=c[0])["robots"] for p, c in curves.items()}
    confirm: dict[str, list[dict]] = {p: [] for p in variants}
    for r in range(args.confirm_rounds):
        for peer, (key, fn) in variants.items():
            with peers.only(key):
                confirm[peer].append(fn(best_n[peer], f"tpc-{model}-{key}-{r}", args.step_seconds))
    rows = []
    for peer in variants:
        rs = confirm[peer] or [next(r for r in curves[peer] if r["robots"] == best_n[peer])]
        rows.append({
            "peer": peer, "model": model, "robots": best_n[peer],
            **{k: statistics.median(x[k] for x in rs) for k in ("replies_per_s", "p50_ms", "p99_ms", "server_cpu_fraction")},
            "lost": sum(x["lost"] for x in rs), "sheds": sum(x["sheds"] for x in rs), "rounds": rs,
        })
    return {"model": model, "curves": curves, "rows": rows}


# --- output ------------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def print_sequential(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\n[1 robot, sequential] 150,556-byte observation; {args.rounds} interleaved rounds x {args.n} round trips, medians")
    print(f"{'peer':<13}{'model':<7}{'p50 ms':>8}{'p99 ms':>8}{'x floor':>9}{'in server':>10}{'req/s':>8}{'server CPU':>12}")
    for r in rows:
        inside = "-" if r["server_p50_ms"] != r["server_p50_ms"] else f"{r['server_p50_ms']:.3f}"
        print(f"{r['peer']:<13}{r['model']:<7}{r['p50_ms']:>8.3f}{r['p99_ms']:>8.3f}{r['p50_vs_floor']:>8.2f}x"
              f"{inside:>10}{r['per_s']:>8.0f}{r['server_cpu']:>11.0%}")
    print("in server: p50 of the reply's timing.total_ms (arrival to reply handed to the socket); "
          "server CPU: share of a core while measured")


LAG_LIMIT_MS = 5.0  # robots' send lag beyond which a row measures the load generator too


def print_fleet(rows: list[dict], title: str) -> None:
    print(f"\n[{title}]")
    print(f"{'peer':<12}{'p50 ms':>8}{'p99 ms':>9}{'x floor':>9}{'replies/s':>10}{'batch':>6}{'late':>6}"
          f"{'>budget':>8}{'sheds':>7}{'lost':>6}{'server CPU':>11}{'send lag p99':>13}")
    for r in rows:
        flag = " *" if r["send_lag_p99_ms"] > LAG_LIMIT_MS else ""
        print(f"{r['peer']:<12}{r['p50_ms']:>8.2f}{r['p99_ms']:>9.2f}{r['p50_vs_floor']:>8.2f}x{r['replies_per_s']:>10.0f}"
              f"{r['mean_batch']:>6.1f}{r['late']:>6}{r['over_budget']:>8}{r['sheds']:>7}{r['lost']:>6}"
              f"{r['server_cpu']:>10.0%}{r['send_lag_p99_ms']:>10.1f} ms{flag}")
    ours = next((r for r in rows if r["peer"] == OURS), None)
    if ours and ours["server_p50_ms"] == ours["server_p50_ms"]:
        print(f"ours, inside the server (reply timing, p50): arrival to reply {ours['server_p50_ms']:.2f} ms "
              f"(p99 {ours['server_p99_ms']:.2f}) = queue {ours['queue_p50_ms']:.2f} + model call {ours['model_p50_ms']:.2f} + "
              f"reply; the rest of the round trip ({ours['p50_ms'] - ours['server_p50_ms']:.2f} ms) is transport, "
              "decoding, and the wait in socket buffers before the server reads")
    if any(r["send_lag_p99_ms"] > LAG_LIMIT_MS for r in rows):
        print(f"* the load generator sent late (p99 send lag > {LAG_LIMIT_MS:g} ms): the machine, not only the peer, limits that row")


def _cpu_per_reply_us(row: dict) -> float:
    """Server CPU (all its threads) per reply: the cost that noise on a shared machine moves least."""
    return row["server_cpu_fraction"] / row["replies_per_s"] * 1e6 if row["replies_per_s"] else float("nan")


def print_throughput(result: dict) -> None:
    model = result["model"]
    print(f"\n[maximum throughput, small observations, {model} model] replies/s by robots in flight (closed loop)")
    peers = list(result["curves"])
    steps = sorted({r["robots"] for c in result["curves"].values() for r in c})
    print(f"{'robots':>7}" + "".join(f"{p:>13}" for p in peers))
    for n in steps:
        cells = []
        for p in peers:
            r = next((x for x in result["curves"][p] if x["robots"] == n), None)
            cells.append("-" if r is None else f"{r['replies_per_s']:.0f}" + ("!" if r["lost"] or r["sheds"] else ""))
        print(f"{n:>7}" + "".join(f"{c:>13}" for c in cells))
    pub = next((r for r in result["rows"] if r["peer"] == PUB), None)
    print("best N re-measured (median of rounds):")
    print(f"{'peer':<12}{'robots':>7}{'replies/s':>11}{'x 1.4.0':>9}{'p50 ms':>8}{'p99 ms':>8}{'lost':>6}{'sheds':>7}{'server CPU':>11}"
          f"{'us/reply':>9}")
    for r in result["rows"]:
        ratio = f"{r['replies_per_s'] / pub['replies_per_s']:.2f}x" if pub and pub["replies_per_s"] else "-"
        print(f"{r['peer']:<12}{r['robots']:>7}{r['replies_per_s']:>11.0f}{ratio:>9}{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}"
              f"{r['lost']:>6}{r['sheds']:>7}{r['server_cpu_fraction']:>10.0%}"
              f"{_cpu_per_reply_us(r):>9.0f}")
    print(f"(! = a loss or shed at that step; the search goes on past sheds of at most {SHED_TOLERANCE:.1%} of the answers)")


def evaluate(report: dict) -> list[dict]:
    out = []
    seq = {(r["peer"], r["model"]): r for r in report["sequential"]}
    for peer in (OURS, OURS_ASYNC):
        r = seq[(peer, "no-op")]
        out.append({"target": f"1 robot p50 <= 1.25x raw pyzmq floor ({peer}, no-op model)", "met": r["p50_vs_floor"] <= 1.25,
                    "detail": f"{r['p50_ms']:.3f} ms = {r['p50_vs_floor']:.2f}x floor {seq[(FLOOR, '-')]['p50_ms']:.3f} ms"})
    f20 = next(r for r in report["fleet20"] if r["peer"] == OURS)
    out.append({"target": "20 x 50 Hz, 150 KB, 1 ms model: p99 <= 5 ms, 0 lost, 0 late", "met":
                f20["p99_ms"] <= 5.0 and f20["lost"] == 0 and f20["late"] == 0 and f20["sheds"] == 0,
                "detail": f"p99 {f20['p99_ms']:.2f} ms (median of rounds; worst round "
                          f"{max(x['p99_ms'] for x in f20['rounds']):.2f}), lost {f20['lost']}, late {f20['late']}, "
                          f"sheds {f20['sheds']} of {f20['submitted']}"})
    for tp in report["throughput"]:
        rows = {r["peer"]: r for r in tp["rows"]}
        if PUB in rows and rows[PUB]["replies_per_s"]:
            ratio = rows[OURS]["replies_per_s"] / rows[PUB]["replies_per_s"]
            out.append({"target": f"max throughput >= 3x 1.4.0 ({tp['model']} model, small observations)", "met": ratio >= 3,
                        "detail": f"{rows[OURS]['replies_per_s']:.0f} vs {rows[PUB]['replies_per_s']:.0f} replies/s = {ratio:.2f}x"})
    out += evaluate_native(report)
    for when in ("idle_before", "idle_after"):
        cpu = report[when]["ours"]
        out.append({"target": f"idle server CPU < 1% of a core ({when.replace('_', ' ')} traffic)", "met": cpu < 0.01,
                    "detail": f"ours {cpu:.2%}" + (f", 1.4.0 {report[when]['published']:.2%}" if "published" in report[when] else "")})
    return out


def evaluate_native(report: dict) -> list[dict]:
    """Issue 16 §2's targets for the native path, each from this run (ratios, same run)."""
    seq = {(r["peer"], r["model"]): r for r in report["sequential"]}
    if (NATIVE, "no-op") not in seq:
        return []
    out = []
    floor = seq[(FLOOR, "-")]["p50_ms"]
    for peer in (NATIVE, NATIVE_RAW):
        r = seq[(peer, "no-op")]
        py = seq[(OURS if peer == NATIVE else OURS_RAW, "no-op")]
        out.append({"target": f"1 robot p50 <= 1.15x raw pyzmq floor ({peer}, no-op model)", "met": r["p50_vs_floor"] <= 1.15,
                    "detail": f"{r['p50_ms']:.3f} ms = {r['p50_vs_floor']:.2f}x floor {floor:.3f} ms "
                              f"(Python transport, same run: {py['p50_vs_floor']:.2f}x)"})
    f20 = {r["peer"]: r for r in report["fleet20"]}
    n20, p20 = f20[NATIVE], f20[OURS]
    out.append({"target": "20 x 50 Hz, 150 KB, 1 ms model, native: p99 <= 3 ms, 0 lost, 0 late", "met":
                n20["p99_ms"] <= 3.0 and n20["lost"] == 0 and n20["late"] == 0 and n20["sheds"] == 0,
                "detail": f"p99 {n20['p99_ms']:.2f} ms (worst round {max(x['p99_ms'] for x in n20['rounds']):.2f}), lost "
                          f"{n20['lost']}, late {n20['late']}, sheds {n20['sheds']} of {n20['submitted']}; server CPU "
                          f"{n20['server_cpu']:.0%} (Python transport, same run: p99 {p20['p99_ms']:.2f} ms, CPU "
                          f"{p20['server_cpu']:.0%})"})
    for tp in report["throughput"]:
        rows = {r["peer"]: r for r in tp["rows"]}
        if tp["model"] == "noop" and NATIVE in rows and PUB in rows and rows[PUB]["replies_per_s"]:
            nat, pub, py = rows[NATIVE]["replies_per_s"], rows[PUB]["replies_per_s"], rows[OURS]["replies_per_s"]
            floor_row = rows.get(FLOOR)
            extra = f"; floor {floor_row['replies_per_s'] / pub:.2f}x" if floor_row else ""
            out.append({"target": "max throughput, native >= 2x 1.4.0 (noop model, small observations)",
                        "met": nat / pub >= 2.0,
                        "detail": f"{nat:.0f} vs {pub:.0f} replies/s = {nat / pub:.2f}x (Python transport {py / pub:.2f}x"
                                  f"{extra}); server CPU per reply {_cpu_per_reply_us(rows[NATIVE]):.0f} us native, "
                                  f"{_cpu_per_reply_us(rows[OURS]):.0f} us Python"})
    for when in ("idle_before", "idle_after"):
        cpu = report[when]["native"]
        out.append({"target": f"idle server CPU, native, < 1% of a core ({when.replace('_', ' ')} traffic)",
                    "met": cpu < 0.01, "detail": f"native {cpu:.2%}, Python transport {report[when]['ours']:.2%}"})
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    colors = {FLOOR: "#777777", OURS: "#2a7ab0", OURS_ASYNC: "#5fa8d3", OURS_RAW: "#1b4f72", PUB: "#d1495b", GRPC: "#edae49", GRPC_STREAM: "#f4d35e",
              NATIVE: "#3b9c5a", NATIVE_RAW: "#1e6b3a"}

    def bars(ax, rows, labels, title, floor=None, log=True):  # type: ignore[no-untyped-def]
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [r["p50_ms"] for r in rows], 0.4, color=[colors.get(r["peer"], "grey") for r in rows], label="p50")
        ax.bar(xs + 0.2, [r["p99_ms"] for r in rows], 0.4, color=[colors.get(r["peer"], "grey") for r in rows], alpha=0.45,
               hatch="//", label="p99")
        if floor:
            ax.axhline(floor, color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        if log:
            ax.set_yscale("log")
        ax.set_ylabel("round trip, ms" + (" (log)" if log else ""))
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)

    seq = report["sequential"]
    bars(axes[0, 0], seq, [f"{r['peer']}, {r['model']} ({r['p50_vs_floor']:.2f}x)" for r in seq],
         "1 robot, 150 KB, sequential (dashed: floor p50)", seq[0]["p50_ms"], log=False)
    for ax, key, title in ((axes[0, 1], "fleet20", "20 robots x 50 Hz, 150 KB, 1 ms model"),
                           (axes[1, 0], "fleet100", f"100 robots x 50 Hz, {report['meta']['fleet100_image']} obs., 1 ms model")):
        rows = report[key]
        bars(ax, rows, [f"{r['peer']}\nlate {r['late']} shed {r['sheds']} lost {r['lost']}\nCPU {r['server_cpu']:.0%}"
                        for r in rows], title)
        ax.axhline(20, color="red", linestyle=":", linewidth=0.8)
    ax = axes[1, 1]
    for tp, style in zip(report["throughput"], ("-", "--")):
        for peer, curve in tp["curves"].items():
            ax.plot([r["robots"] for r in curve], [r["replies_per_s"] for r in curve], style, marker="o",
                    color=colors.get(peer, "grey"), label=f"{peer}, {tp['model']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("robots, one request in flight each")
    ax.set_ylabel("replies/s")
    ax.set_title("maximum throughput, small observations (closed loop)", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(f"Inferential vs floor, 1.4.0 and gRPC ({report['meta']['mode']} run {report['meta']['date']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main --------------------------------------------------------------------------------------------


def _native_built() -> bool:
    return subprocess.run([PY, "-c", "import inferential_native"], capture_output=True).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs (about 2 minutes)")
    ap.add_argument("--rounds", type=int, help="sequential rounds (default 5, quick 3)")
    ap.add_argument("--n", type=int, help="round trips per sequential round (default 500, quick 200)")
    ap.add_argument("--seconds", type=float, help="measured seconds per fleet run (default 6, quick 3)")
    ap.add_argument("--fleet-rounds", type=int, help="fleet rounds (default 2, quick 1)")
    ap.add_argument("--fleet100-image", choices=("small", "150kb"), default="small")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-native", action="store_true", help="skip the native-transport rows")
    ap.add_argument("--out", default=str(RESULTS / "compare.json"))
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (3 if q else 5)
    args.n = args.n or (200 if q else 500)
    args.warmup_n = 50
    args.seconds = args.seconds or (3.0 if q else 6.0)
    args.warmup = 0.5 if q else 1.0
    args.fleet_rounds = args.fleet_rounds or (1 if q else 2)
    args.steps = (4, 16, 64) if q else (1, 4, 16, 64, 128)
    args.step_seconds = 1.5 if q else 2.0
    args.confirm_rounds = 0 if q else 3
    idle_s = 2.0 if q else 3.0

    with_published = PUBLISHED_PY.exists()
    if not with_published:
        print(f"note: {PUBLISHED_PY} missing (make setup creates it): the 1.4.0 rows are skipped")
    started = time.perf_counter()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average before the run "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "mode": "quick" if q else "full",
        "fleet100_image": args.fleet100_image,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }
    print(f"Machine: {meta['machine']}. Mode: {meta['mode']}.")
    with_native = not args.no_native and _native_built()
    if not with_native and not args.no_native:
        print("note: the inferential_native module is not built (make setup-native): the native rows are skipped")
    meta["native"] = with_native
    peers = Peers(with_published, with_native)
    report: dict = {"meta": meta}
    try:
        report["idle_before"] = peers.idle_cpu(idle_s)
        print("  1 robot, sequential ...", flush=True)
        report["sequential"] = sequential(peers, args)
        print_sequential(report["sequential"], args)
        print("\n  20 robots x 50 Hz ...", flush=True)
        report["fleet20"] = fleet(peers, args, 20, IMAGE, "f20")
        print_fleet(report["fleet20"], f"20 robots x 50 Hz, 150 KB observations, 1 ms model; {args.fleet_rounds} round(s) x "
                    f"{args.seconds:g} s; budget 20 ms; late = after the robot's next observation")
        image100 = IMAGE if args.fleet100_image == "150kb" else SMALL_IMAGE
        print("\n  100 robots x 50 Hz ...", flush=True)
        report["fleet100"] = fleet(peers, args, 100, image100, "f100")
        print_fleet(report["fleet100"], f"100 robots x 50 Hz, {image100.nbytes + 28:,}-byte observations, 1 ms model; "
                    f"{args.fleet_rounds} round(s) x {args.seconds:g} s")
        report["throughput"] = []
        for model in ("noop", "sleep1"):
            print(f"\n  maximum throughput ({model}) ...", flush=True)
            report["throughput"].append(throughput(peers, args, model))
            print_throughput(report["throughput"][-1])
        report["idle_after"] = peers.idle_cpu(idle_s)
    finally:
        peers.close()
    meta["settle_s"] = {"total": peers.settle_s, "longest": peers.settle_max_s}
    print("\nAfter each run a peer may finish its backlog before the next (seconds, total / longest): " + "; ".join(
        f"{k} {peers.settle_s[k]:.1f} / {peers.settle_max_s[k]:.1f}" for k in peers.settle_s))

    print("\nIdle CPU (share of a core, no traffic): " + "; ".join(
        f"{k}: before {report['idle_before'][k]:.2%}, after {report['idle_after'][k]:.2%}" for k in report["idle_before"]))
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
    print(f"\nwrote {out} and {png} (wall time {meta['wall_time_s']:.0f} s; load average after {meta['load_average_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
