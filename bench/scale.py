"""How the server's cost grows with the fleet: robots 1 to 200 at 50 Hz, ours (both transport
paths) against the published 1.4.0, small and 150 KB observations.

    make bench-scale                       (7-8 minutes)
    make bench-scale-quick                 (a smoke run: robots 1, 50, 200, 2 s each; 1-2.5 minutes)
    .venv/bin/python bench/scale.py [--quick] [--robots 1,10,50] [--sizes small,150kb]
        [--paths python,native] [--no-published] [--seconds 8] [--model noop|sleep1]
        [--source worktree|REV]

Each point (observation size x robots x server) gets a fresh server process, so no point
inherits another's backlog; the points are interleaved (for each size and robot count, every
server in turn) so the servers of one row are measured minutes, not the whole run, apart.

Servers
  python     `inferential serve`, local backend, with ``transport.native: off`` when the native
             module is importable (else the default configuration, which has only this path)
  native     the same with ``transport.native: on``; listed by default only when
             ``import inferential_native`` works, otherwise skipped with a note
  1.4.0      the published package in .venv-published (bench/_published_peer.py), its default
             configuration
Model: ``noop`` by default (7 zeros; 1.4.0 runs it inline on its loop), so the figures are the
server's own cost per request, not a model's; ``--model sleep1`` puts a 1 ms model behind it.

Robots are open loop at 50 Hz (period +-5 % jitter, random phases) with a 20 ms budget (the
period; sent in the observation to our server, 1.4.0 has no field for it). A robot keeps at most
``--max-inflight`` (10) unanswered observations younger than 1 s; past that it skips a send (it
counts as offered and not served). That bounds the memory of an overloaded run (200 robots x
150 KB is 1.5 GB/s offered) the way a real client's bounded queue would.

The load generator is this process: one thread, one DEALER per robot, and an epoll over the
sockets' ZMQ_FD descriptors (a zmq.Poller over 200 sockets costs more per wake-up than the
messages do). Observations are encoded once per robot with the SDK's codec; per send only the
envelope is re-serialised (request id, timestamp; for 1.4.0 the ``seq`` metadata its replies
echo). Replies are matched by request id (ours) or ``seq`` (1.4.0).

Per point, over the measured window (after a 1 s warm-up):
  server CPU/req   user+sys of the server process (/proc/<pid>/stat, every thread) divided by
                   the replies it sent in the window (any status)
  server CPU       the same CPU as a share of one core
  p50 / p99        round trip of OK replies, robot side (send to receipt)
  goodput          OK replies within the 20 ms budget per second, and as % of offered
                   (robots x 50 Hz x window)
  gen CPU          this generator's own CPU (all its threads, ZMQ's I/O thread included) as a
                   share of a core, and per observation sent
  others           the rest of the machine's busy CPU in the window (/proc/stat), in cores: on
                   a shared 2-core box it says how much the point had to itself
  by thread        the server's CPU per reply by thread name: event loop, ZMQ I/O, native I/O
A point disturbed by other processes (generator late while they held > 0.5 cores) is run once
more and the better-paced run kept (--retries, --max-retries).
Writes bench/results/scale.json, scale.md (the table) and scale.png (--quick: scale-quick.*).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import random
import resource
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fleet import IMAGE as SMALL_IMAGE
from _peers import IMAGE as LARGE_IMAGE
from _peers import REPO, cpu_seconds, free_port, start_server, stop, wait_ready
from inferential._envelope import encode_observation
from inferential._proto import inferential_pb2 as pb
from inferential.wire import DEFAULT_LIMITS

PUBLISHED_PY = REPO / ".venv-published" / "bin" / "python"
RESULTS = REPO / "bench" / "results"
JOINTS = np.linspace(-1, 1, 7, dtype=np.float32)
IMAGES = {"small": SMALL_IMAGE, "150kb": LARGE_IMAGE}
PUBLISHED = "1.4.0"
# The generator calls libzmq through pyzmq's backend methods with plain int flags, as the
# server's transport does: the convenience layer (flag enums, zmq.Again on every empty read)
# would cost the generator more than its messages, and its CPU is taken from the server.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_parse_response = pb.ModelResponse.FromString
ZERO_COPY_MIN = 65536
ABANDON_NS = 1_000_000_000  # an observation unanswered this long no longer holds a robot's in-flight slot


def native_available() -> bool:
    try:
        import inferential_native  # noqa: F401
    except ImportError:
        return False
    return True


# --- servers -----------------------------------------------------------------------------------


def start_peer(peer: str, model: str, native_known: bool, tmp: Path) -> tuple[subprocess.Popen, str]:
    """A fresh server for one point: ``python``/``native`` (ours) or ``1.4.0``."""
    if peer == PUBLISHED:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        # Without PYTHONPATH: --source puts our package there, and 1.4.0 has the same import name.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        with open(tmp / "published.log", "ab") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [str(PUBLISHED_PY), str(REPO / "bench" / "_published_peer.py"), "--bind", endpoint],
                stdout=subprocess.DEVNULL, stderr=log, env=env,
            )
        try:
            wait_ready(proc, endpoint)
        except BaseException:
            stop(proc)
            raise
        time.sleep(0.3)
        return proc, endpoint
    extra: list[str] = []
    if peer == "native" or native_known:
        # Quoted: a YAML `on` is a boolean, a string suits a bool field and an on|off one alike.
        cfg = tmp / f"transport-{peer}.yaml"
        cfg.write_text(f'transport:\n  native: "{"on" if peer == "native" else "off"}"\n')
        extra = ["--config", str(cfg)]
    models = {"noop": "inferential.models.testing:NoOp", "sleep1": "inferential.models.testing:Sleep"}
    return start_server({model: models[model]}, extra, log_path=tmp / f"server-{peer}.log")


def _log_tail(tmp: Path, peer: str, lines: int = 6) -> str:
    name = "published.log" if peer == PUBLISHED else f"server-{peer}.log"
    try:
        text = (tmp / name).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def native_loaded(pid: int) -> bool:
    """Whether the process has the native extension mapped (/proc/<pid>/maps)."""
    try:
        return "inferential_native" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def select_source(source: str, tmp: Path) -> str:
    """Point the servers started from now on at ``source``; returns what it is, for the report.

    Other engineers edit this checkout while a benchmark runs: a revision's export measures
    committed code only, not someone's half-made change.
    """
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    if source == "worktree":
        dirty = git("status", "--porcelain", "--", "server-py", "client-py", "server-native")
        return f"working tree at {git('rev-parse', '--short', 'HEAD')}" + (" with uncommitted changes" if dirty else "")
    sha = git("rev-parse", "--verify", f"{source}^{{commit}}")
    dest = tmp / "src"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", sha, "client-py/src", "server-py/src"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    # First on the path: the package's extend_path finds the exported halves before the
    # editable install's (a module only in the checkout is still found there, as a fallback).
    paths = [str(dest / "client-py" / "src"), str(dest / "server-py" / "src")]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return f"commit {sha[:10]} ({source}), exported"


# --- the load generator ------------------------------------------------------------------------


@dataclass
class Robot:
    name: str
    sock: zmq.Socket
    obs: pb.Observation
    payload: list
    phase_ns: int
    sent_ns: list[int] = field(default_factory=list)  # by request id - 1
    planned_ns: list[int] = field(default_factory=list)
    reply_ns: list[int] = field(default_factory=list)  # 0 = none yet
    status: list[int] = field(default_factory=list)  # -1 = none yet
    inflight: int = 0
    oldest: int = 0  # index of the oldest send that may still hold an in-flight slot


def _proc_stat_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat, all cores)."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(vals[:8]) - idle) / tick, sum(vals[:8]) / tick


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process so far, summed by thread name (/proc/<pid>/task)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            raw = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def thread_table(points: list[dict]) -> str:
    """µs of server CPU per reply by thread: the event loop (the main thread), ZMQ's I/O
    threads, the native module's I/O thread ("inferential-io"), and the rest (model, timers)."""
    lines = ["| obs | robots | server | total µs/req | event loop | ZMQ I/O | native I/O | other threads |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        t = dict(p.get("server_threads_us_per_req", {}))
        loop = t.pop(p.get("server_loop_thread", ""), 0.0)
        zmq_io = sum(t.pop(k) for k in [k for k in t if k.startswith("ZMQbg")])
        native_io = t.pop("inferential-io", 0.0)
        lines.append(f"| {p['size']} | {p['robots']} | {p['peer']} | {_f(p['server_cpu_us_per_req'], ',.0f')} | "
                     f"{loop:,.0f} | {zmq_io:,.0f} | {native_io:,.0f} | {sum(t.values()):,.0f} |")
    return "\n".join(lines)


def _self_cpu() -> float:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def run_point(endpoint: str, server_pid: int, n: int, image: np.ndarray, v1: bool, args: argparse.Namespace,
              tag: str) -> dict:
    rng = random.Random(args.seed * 1000 + n)
    period_ns = 1e9 / args.hz
    ctx = zmq.Context(io_threads=1)
    ep = select.epoll()
    robots: list[Robot] = []
    by_fd: dict[int, Robot] = {}
    try:
        for i in range(n):
            name = f"{tag}-{i:03d}"
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # Bounded by --max-inflight anyway; deep enough that ZMQ itself never refuses a send.
            sock.setsockopt(zmq.SNDHWM, 1000)
            sock.setsockopt(zmq.RCVHWM, 1000)
            if v1:
                sock.setsockopt(zmq.ROUTING_ID, name.encode())  # what 1.4.0's client does
            sock.connect(endpoint)
            frames = encode_observation(
                client_id=name, client_type="bench-robot", model_id=args.model, request_id=1,
                inputs={"joints": JOINTS, "image": image, "seq": "1"}, urgency=0.5, priority=1,
                latency_budget_ms=args.budget_ms, limits=DEFAULT_LIMITS, single_payload_frame=v1,
            )
            robot = Robot(name, sock, pb.Observation.FromString(bytes(frames[1])), [bytes(f) for f in frames[2:]],
                          rng.randrange(int(period_ns)))
            robots.append(robot)
            fd = sock.getsockopt(zmq.FD)
            by_fd[fd] = robot
            ep.register(fd, select.EPOLLIN)
        time.sleep(0.3 + n * 0.002)  # let every connection complete before the clock starts
        return _drive(robots, by_fd, ep, server_pid, n, period_ns, rng, args)
    finally:
        ep.close()
        for r in robots:
            r.sock.close(linger=0)
        ctx.term()


def _drive(robots: list[Robot], by_fd: dict[int, Robot], ep: select.epoll, server_pid: int, n: int,
           period_ns: float, rng: random.Random, args: argparse.Namespace) -> dict:
    start = time.monotonic_ns() + 20_000_000
    meas_start = start + int(args.warmup * 1e9)
    meas_end = meas_start + int(args.seconds * 1e9)
    grace_end = meas_end + int(args.grace * 1e9)
    heap = [(start + r.phase_ns, i) for i, r in enumerate(robots)]
    heapq.heapify(heap)
    budget_ns = args.budget_ms * 1e6
    skipped = [0]  # sends a robot skipped because its in-flight window was full (measured window)
    outstanding = [0]
    unknown = [0]
    snap: dict[str, tuple] = {}
    shed_reason: dict[int, str] = {}

    def drain(r: Robot) -> None:
        sock = r.sock
        # Asking ZMQ_EVENTS first costs less than the zmq.Again a final empty read would raise,
        # and it processes the socket's commands as a read would (re-arming ZMQ_FD).
        while _get(sock, _EVENTS) & _POLLIN:
            frame = _recv(sock, _NOBLOCK, False)
            frames = [frame]
            while frame.more:  # ZMQ delivers whole messages: the rest is already here
                frame = _recv(sock, 0, False)
                frames.append(frame)
            now = time.monotonic_ns()
            try:
                resp = _parse_response(frames[1].bytes)
                rid = resp.request_id or int(resp.metadata.get("seq", "0") or 0)
            except Exception:  # noqa: BLE001 -- a reply we cannot read is counted, never fatal to the run
                unknown[0] += 1
                continue
            if not 1 <= rid <= len(r.sent_ns) or r.reply_ns[rid - 1]:
                unknown[0] += 1
                continue
            r.reply_ns[rid - 1] = now
            r.status[rid - 1] = resp.status
            if resp.status not in (pb.OK, pb.STATUS_UNSPECIFIED) and resp.status not in shed_reason:
                shed_reason[resp.status] = resp.error[:200]  # the first reason given for each status
            outstanding[0] -= 1
            if rid - 1 >= r.oldest:
                r.inflight -= 1

    def send(r: Robot, planned: int) -> None:
        now = time.monotonic_ns()
        # Free the slots of observations unanswered for ABANDON_NS (lost, or queued for seconds).
        while r.oldest < len(r.sent_ns) and (r.reply_ns[r.oldest] or now - r.sent_ns[r.oldest] > ABANDON_NS):
            if not r.reply_ns[r.oldest]:
                r.inflight -= 1
            r.oldest += 1
        if r.inflight >= args.max_inflight:
            if meas_start <= planned < meas_end:
                skipped[0] += 1
            return
        rid = len(r.sent_ns) + 1
        obs = r.obs
        obs.request_id = rid
        obs.timestamp_ns = time.time_ns()
        obs.metadata["seq"] = str(rid)
        sock = r.sock
        try:
            _send(sock, b"", _NOBLOCK | _SNDMORE, True, False)
            last = len(r.payload) - 1
            _send(sock, obs.SerializeToString(), _NOBLOCK | (_SNDMORE if last >= 0 else 0), True, False)
            for k, frame in enumerate(r.payload):
                # Large frames go zero-copy (ZMQ reads our bytes object), small ones are copied.
                _send(sock, frame, _NOBLOCK | (_SNDMORE if k < last else 0), len(frame) < ZERO_COPY_MIN, False)
        except zmq.Again:
            if meas_start <= planned < meas_end:
                skipped[0] += 1
            return
        r.sent_ns.append(now)
        r.planned_ns.append(planned)
        r.reply_ns.append(0)
        r.status.append(-1)
        r.inflight += 1
        outstanding[0] += 1

    def snapshot() -> tuple:
        return time.monotonic_ns(), cpu_seconds(server_pid), _self_cpu(), time.thread_time(), *_proc_stat_busy()

    threads0: dict[str, float] = {}
    loop_name = [""]  # the main thread's name: the event loop's

    next_sweep = start
    while True:
        now = time.monotonic_ns()
        if "start" not in snap and now >= meas_start:
            snap["start"] = snapshot()
            threads0 = thread_cpu(server_pid)
            loop_name[0] = _comm(server_pid)
        if "end" not in snap and now >= meas_end:
            snap["end"] = snapshot()
            threads1 = thread_cpu(server_pid)
        while heap and heap[0][0] <= now:
            planned, i = heapq.heappop(heap)
            r = robots[i]
            send(r, planned)
            # A send may consume the socket's pending wake-up (ZMQ_FD is edge-like): read now.
            drain(r)
            following = planned + int(period_ns * rng.uniform(0.95, 1.05))
            if following < meas_end:
                heapq.heappush(heap, (following, i))
            now = time.monotonic_ns()
        if now >= next_sweep:
            # Safety net against a missed edge: an empty read of every socket, ten times a second.
            for r in robots:
                drain(r)
            next_sweep = now + 100_000_000
        if not heap and now >= meas_end and (outstanding[0] == 0 or now >= grace_end):
            break
        target = heap[0][0] if heap else min(grace_end, next_sweep)
        if "end" not in snap:
            target = min(target, meas_end)
        timeout = max(0.0, (min(target, next_sweep) - now) / 1e9)
        for fd, _ in ep.poll(timeout):
            drain(by_fd[fd])
    if "end" not in snap:
        snap["end"] = snapshot()
        threads1 = thread_cpu(server_pid)

    (t0, s0, g0, m0, b0, _), (t1, s1, g1, m1, b1, _) = snap["start"], snap["end"]
    wall = (t1 - t0) / 1e9
    server_cpu, gen_cpu, busy = s1 - s0, g1 - g0, b1 - b0
    offered = 0
    ok_lat: list[float] = []
    good = late = sheds = unanswered = sent = 0
    lags: list[float] = []
    shed_kinds: dict[str, int] = {}
    for r in robots:
        for k, planned in enumerate(r.planned_ns):
            if not meas_start <= planned < meas_end:
                continue
            sent += 1
            lags.append((r.sent_ns[k] - planned) / 1e6)
            st, rep = r.status[k], r.reply_ns[k]
            if not rep:
                unanswered += 1
                continue
            lat = rep - r.sent_ns[k]
            if st in (pb.OK, pb.STATUS_UNSPECIFIED):
                ok_lat.append(lat / 1e6)
                if lat <= budget_ns:
                    good += 1
                else:
                    late += 1
            else:
                sheds += 1
                name = pb.Status.Name(st) if st in pb.Status.values() else str(st)
                shed_kinds[name] = shed_kinds.get(name, 0) + 1
    offered = sent + skipped[0]
    # Replies over the same readings as the CPU (the loop may read the clocks a little after the
    # window's nominal start and end when it is busy).
    replies = sum(1 for r in robots for rep in r.reply_ns if t0 <= rep <= t1)
    return {
        "robots": n,
        "offered_per_s": offered / args.seconds,
        "offered": offered,
        "sent": sent,
        "skipped": skipped[0],
        "ok": len(ok_lat),
        "good": good,
        "late": late,
        "sheds": sheds,
        "shed_kinds": shed_kinds,
        "shed_reasons": {(pb.Status.Name(k) if k in pb.Status.values() else str(k)): v for k, v in shed_reason.items()},
        "unanswered": unanswered,
        "unknown_replies": unknown[0],
        "p50_ms": float(np.percentile(ok_lat, 50)) if ok_lat else float("nan"),
        "p99_ms": float(np.percentile(ok_lat, 99)) if ok_lat else float("nan"),
        "goodput_per_s": good / args.seconds,
        "goodput_pct": 100.0 * good / offered if offered else float("nan"),
        "replies_in_window": replies,
        "server_cpu_us_per_req": 1e6 * server_cpu / replies if replies else float("nan"),
        "server_cpu_cores": server_cpu / wall,
        "gen_cpu_cores": gen_cpu / wall,
        "gen_cpu_us_per_obs": 1e6 * gen_cpu / sent if sent else float("nan"),
        # The Python loop's share of it; the rest is ZMQ's I/O thread (TCP, wake-ups).
        "gen_python_cores": (m1 - m0) / wall,
        "others_cores": max(0.0, busy / wall - server_cpu / wall - gen_cpu / wall),
        "machine_busy_cores": busy / wall,
        "send_lag_p99_ms": float(np.percentile(lags, 99)) if lags else float("nan"),
        "window_s": wall,
        # The clock readings bracket the window only when the generator's loop came round in time.
        "window_short": wall < 0.8 * args.seconds,
        # Where the server's CPU went, by thread name (the event loop is the process's own
        # name, e.g. "python"; ZMQ's I/O threads "ZMQbg/..."): µs per reply in the window.
        "server_loop_thread": loop_name[0],
        "server_threads_us_per_req": {
            k: 1e6 * (v - threads0.get(k, 0.0)) / replies
            for k, v in sorted(threads1.items()) if replies and v - threads0.get(k, 0.0) > 0
        },
    }


# --- output --------------------------------------------------------------------------------------


def saturation(p: dict, cores: int) -> str:
    """Why a point is past what it can serve: the server's loop, or the whole machine."""
    marks = []
    if p["server_cpu_cores"] >= 0.9:
        marks.append("server")
    if p["machine_busy_cores"] >= 0.9 * cores:
        marks.append("machine")
    if p.get("window_short"):
        marks.append("gen stalled")  # the window's start and end were read late: its rates are unreliable
    if p["send_lag_p99_ms"] > LAG_LIMIT_MS:
        marks.append("gen late")  # robots sent off pace: the offered load was not what the row says
    return "+".join(marks)


HEADER = ("| obs | robots | server | offered/s | server CPU µs/req | server CPU | p50 ms | p99 ms | goodput/s | "
          "goodput % | shed | skipped | no reply | gen CPU | gen µs/obs | others | saturated |")
# saturated: server = its process >= 90 % of a core; machine = >= 90 % of all cores busy;
# gen late = the generator's p99 send lag > LAG_LIMIT_MS


def _f(x: float, spec: str) -> str:
    """A figure, or "-" where there is none (no OK reply, no reply in the window)."""
    return "-" if math.isnan(x) else format(x, spec)


def table(points: list[dict], cores: int) -> str:
    lines = [HEADER, "|" + "|".join(["---"] * (HEADER.count("|") - 1)) + "|"]
    for p in points:
        lines.append(
            f"| {p['size']} | {p['robots']} | {p['peer']} | {p['offered_per_s']:,.0f} | {_f(p['server_cpu_us_per_req'], ',.0f')} | "
            f"{100 * p['server_cpu_cores']:.0f} % | {_f(p['p50_ms'], '.2f')} | {_f(p['p99_ms'], '.2f')} | "
            f"{p['goodput_per_s']:,.0f} | {p['goodput_pct']:.1f} | {p['sheds']} | {p['skipped']} | {p['unanswered']} | "
            f"{100 * p['gen_cpu_cores']:.0f} % | {p['gen_cpu_us_per_obs']:.0f} | {p['others_cores']:.2f} | "
            f"{saturation(p, cores) or '-'} |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["points"]
    cores = report["meta"]["cores"]
    sizes = [s for s in report["meta"]["sizes"] if any(p["size"] == s for p in points)]
    peers = list(dict.fromkeys(p["peer"] for p in points))
    colors = {"python": "#2a7ab0", "native": "#1e9e5a", PUBLISHED: "#d1495b"}
    fig, axes = plt.subplots(3, len(sizes), figsize=(6.5 * len(sizes), 11), squeeze=False)
    for col, size in enumerate(sizes):
        for peer in peers:
            pts = sorted((p for p in points if p["size"] == size and p["peer"] == peer), key=lambda p: p["robots"])
            if not pts:
                continue
            xs = [p["robots"] for p in pts]
            c = colors.get(peer, "grey")
            label = f"ours, {peer} path" if peer != PUBLISHED else "published 1.4.0"
            ys = {
                0: [p["server_cpu_us_per_req"] for p in pts],
                1: [p["p50_ms"] for p in pts],
                2: [max(p["goodput_per_s"], 1.0) for p in pts],  # 0 has no place on a log axis: drawn at 1/s
            }
            axes[0, col].plot(xs, ys[0], "-o", color=c, label=label)
            axes[1, col].plot(xs, ys[1], "-o", color=c, label=f"{label} p50")
            axes[1, col].plot(xs, [p["p99_ms"] for p in pts], "--^", color=c, alpha=0.7, label=f"{label} p99")
            axes[2, col].plot(xs, ys[2], "-o", color=c, label=label)
            # Hollow markers: the point was limited by the machine (full, or the generator late), not
            # only by the server.
            limited = [k for k, p in enumerate(pts) if {"machine", "gen late"} & set(saturation(p, cores).split("+"))]
            for row, y in ys.items():
                axes[row, col].scatter([xs[k] for k in limited], [y[k] for k in limited], s=60, facecolors="white",
                                       edgecolors=c, zorder=3)
            offset = {"python": 6, "native": -2, PUBLISHED: -10}.get(peer, 0)
            for p, y in zip(pts, ys[2]):
                axes[2, col].annotate(f"{p['goodput_pct']:.0f} %", (p["robots"], y), fontsize=7, color=c,
                                      textcoords="offset points", xytext=(5, offset))
        title = f"{'small (3,100 B)' if size == 'small' else '150 KB'} observations"
        axes[0, col].set_title(f"{title}: server CPU per request", fontsize=10)
        axes[0, col].set_ylabel("µs of server CPU / request")
        axes[0, col].set_yscale("log")
        axes[1, col].set_title(f"{title}: round trip of OK replies", fontsize=10)
        axes[1, col].set_ylabel("ms (log)")
        axes[1, col].set_yscale("log")
        axes[1, col].axhline(report["meta"]["budget_ms"], color="red", linestyle=":", linewidth=0.8)
        robots = report["meta"]["robots"]
        axes[2, col].plot(robots, [n * report["meta"]["hz"] for n in robots], ":", color="grey", label="offered")
        axes[2, col].set_title(f"{title}: goodput (OK within {report['meta']['budget_ms']:g} ms; % of offered)",
                               fontsize=10)
        axes[2, col].set_ylabel("OK within budget / s (log)")
        axes[2, col].set_yscale("log")
        for row in range(3):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_xticks(report["meta"]["robots"])
            ax.set_xticklabels([str(x) for x in report["meta"]["robots"]])
            ax.set_xlabel(f"robots x {report['meta']['hz']:g} Hz")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    m = report["meta"]
    fig.suptitle(f"make bench-scale ({m['mode']}, {m['date']}; {m['model']} model; shared {m['cores']}-core machine)\n"
                 "hollow markers: the machine was >= 90 % busy or the load generator sent late "
                 f"(p99 > {LAG_LIMIT_MS:g} ms), so the machine, not only the server, limited the point", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


LAG_LIMIT_MS = 20.0
OTHERS_LIMIT = 0.5


def disturbed(p: dict) -> bool:
    """The generator could not keep the robots' pace while others used the machine: the point
    measured the neighbours, not the server (the server's own overload slows it too, but then
    ``others`` is small and a second run would say the same)."""
    return p["send_lag_p99_ms"] > LAG_LIMIT_MS and p["others_cores"] > OTHERS_LIMIT


def _line(p: dict) -> str:
    return (f"{p['size']:>5} x {p['robots']:>3} robots, {p['peer']:>6}: server {p['server_cpu_us_per_req']:7.0f} µs/req "
            f"({100 * p['server_cpu_cores']:3.0f} %), p50 {p['p50_ms']:7.2f} p99 {p['p99_ms']:8.2f} ms, "
            f"goodput {p['goodput_per_s']:6.0f}/s = {p['goodput_pct']:5.1f} %, "
            f"gen {100 * p['gen_cpu_cores']:3.0f} % ({p['gen_cpu_us_per_obs']:.0f} µs/obs), "
            f"others {p['others_cores']:.2f} cores, lag p99 {p['send_lag_p99_ms']:.1f} ms")


def measure(peer: str, n: int, image: np.ndarray, args: argparse.Namespace, native_known: bool, tmp: Path,
            label: str, failures: list[str], dropped: set[str]) -> dict | None:
    """One point on a fresh server, or None (noted in ``failures``) when it could not be measured."""
    try:
        proc, endpoint = start_peer(peer, args.model, native_known, tmp)
    except (RuntimeError, TimeoutError) as err:
        # One server that does not start (a path being rebuilt meanwhile) costs its
        # point, not the run: noted, with its log's tail, and the run goes on.
        failures.append(f"{label}: {err}; {_log_tail(tmp, peer)}")
        print(f"  {label}: did not start ({err}); log tail: {_log_tail(tmp, peer)}", flush=True)
        return None
    if peer == "native" and not native_loaded(proc.pid):
        # A server whose code does not use the module yet would run the Python path
        # under the native label: only a mapped extension counts.
        stop(proc)
        dropped.add(peer)
        failures.append("native: the server runs without inferential_native loaded (not wired into this code "
                        "yet?): the native path is left out of this run")
        print(f"  {failures[-1]}", flush=True)
        return None
    try:
        p = run_point(endpoint, proc.pid, n, image, peer == PUBLISHED, args, f"s{label.split()[0]}-{peer}-{n}")
        exited = proc.poll()
    finally:
        stop(proc)
    if exited is not None:
        failures.append(f"{label}: the server exited during the point (code {exited}); {_log_tail(tmp, peer)}")
        print(f"  {failures[-1]}", flush=True)
        return None
    return p


# --- main ----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="robots 1, 50, 200, 2 s per point (a smoke run)")
    ap.add_argument("--robots", help="comma list (default 1,10,50,100,200; quick 1,50,200)")
    ap.add_argument("--sizes", default="small,150kb", help="comma list of small, 150kb")
    ap.add_argument("--paths", help="our transport paths, comma list of python, native "
                    "(default: python, plus native when `import inferential_native` works)")
    ap.add_argument("--no-published", action="store_true", help="skip the published 1.4.0 server")
    ap.add_argument("--seconds", type=float, help="measured seconds per point (default 8, quick 2)")
    ap.add_argument("--warmup", type=float, help="unmeasured seconds first (default 1, quick 0.5)")
    ap.add_argument("--grace", type=float, default=2.0, help="wait for late replies after the window")
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--budget-ms", type=float, default=20.0)
    ap.add_argument("--max-inflight", type=int, default=10, help="unanswered observations a robot allows")
    ap.add_argument("--retries", type=int, default=None,
                    help="(default 1, quick 0) run a point again, keeping the better-paced run, when the generator sent late "
                    f"(p99 send lag > {LAG_LIMIT_MS:g} ms) while other processes took > {OTHERS_LIMIT:g} cores")
    ap.add_argument("--max-retries", type=int, default=6, help="repeated points in the whole run, at most")
    ap.add_argument("--model", choices=("noop", "sleep1"), default="noop")
    ap.add_argument("--source", default="worktree",
                    help="the server code to run: worktree (default: the checkout as it is, uncommitted edits "
                    "included) or a git revision (e.g. HEAD), exported with git archive and put first on the "
                    "servers' PYTHONPATH; the native module is whichever is installed in the venv")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="default bench/results/scale.json (quick: scale-quick.json, so a smoke run "
                    "never overwrites the full run's results)")
    args = ap.parse_args()
    q = args.quick
    robots = [int(x) for x in (args.robots or ("1,50,200" if q else "1,10,50,100,200")).split(",")]
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        if s not in IMAGES:
            ap.error(f"unknown size {s!r} (small, 150kb)")
    args.seconds = args.seconds or (2.0 if q else 8.0)
    args.retries = args.retries if args.retries is not None else (0 if q else 1)
    args.out = args.out or str(RESULTS / ("scale-quick.json" if q else "scale.json"))
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    native_known = native_available()
    if args.paths:
        paths = [p for p in args.paths.split(",") if p]
        if "native" in paths and not native_known:
            print("note: `import inferential_native` fails here (not built?): the native path is skipped")
            paths.remove("native")
    else:
        paths = ["python"] + (["native"] if native_known else [])
        if not native_known:
            print("note: `import inferential_native` fails here (not built?): only the python path is measured")
    peers = list(paths)
    if not args.no_published:
        if PUBLISHED_PY.exists():
            peers.append(PUBLISHED)
        else:
            print(f"note: {PUBLISHED_PY} missing (make setup creates it): the 1.4.0 rows are skipped")
    cores = os.cpu_count() or 1
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {cores} cores, load average before the run "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cores": cores, "mode": "quick" if q else "full", "robots": robots, "sizes": sizes, "peers": peers,
        "hz": args.hz, "budget_ms": args.budget_ms, "model": args.model, "seconds": args.seconds,
        "warmup": args.warmup, "max_inflight": args.max_inflight, "python": platform.python_version(),
    }
    print(f"Machine: {meta['machine']}. Mode: {meta['mode']}. Servers: {', '.join(peers)}; model {args.model}; "
          f"{args.seconds:g} s per point after {args.warmup:g} s warm-up.", flush=True)
    started = time.perf_counter()
    points: list[dict] = []
    failures: list[str] = []
    dropped: set[str] = set()  # servers found unable to run (native not wired in): not tried again
    retries_left = args.max_retries
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmpdir:
        tmp = Path(tmpdir)
        meta["source"] = select_source(args.source, tmp)
        print(f"Server code: {meta['source']}", flush=True)
        for size in sizes:
            image = IMAGES[size]
            for n in robots:
                for peer in [x for x in peers if x not in dropped]:
                    label = f"{size} x {n} robots, {peer}"
                    best: dict | None = None
                    for attempt in range(1 + args.retries):
                        p = measure(peer, n, image, args, native_known, tmp, label, failures, dropped)
                        if p is None:
                            break
                        p.update(size=size, peer=peer, load_average=os.getloadavg()[0], attempt=attempt + 1)
                        if best is None or p["send_lag_p99_ms"] < best["send_lag_p99_ms"]:
                            best = p
                        if not disturbed(p) or attempt == args.retries or retries_left <= 0:
                            break
                        # The run-wide cap keeps a busy machine from stretching the run past ~10 minutes.
                        retries_left -= 1
                        print(f"    disturbed by other processes, run once more: {_line(p)}", flush=True)
                    if best is None:
                        continue
                    points.append(best)
                    kept = f" (run {best['attempt']} kept)" if best["attempt"] > 1 or disturbed(best) else ""
                    print(f"  {_line(best)}{kept}", flush=True)
    meta["wall_time_s"] = round(time.perf_counter() - started, 1)
    meta["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = {"meta": meta, "points": points, "failures": failures}
    md = table(points, cores)
    print("\n" + md)
    threads_md = thread_table(points)
    print("\nServer CPU per reply by thread (µs):\n" + threads_md)
    print("\nshed = explicit non-OK replies; skipped = sends a robot skipped with its in-flight window full; "
          "others = the rest of the machine's busy CPU (cores); saturated: server = its process >= 90 % of a "
          f"core, machine = >= 90 % of all {cores} cores busy, gen late = p99 send lag > {LAG_LIMIT_MS:g} ms")
    for f in failures:
        print(f"missing point: {f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(
        f"# make bench-scale ({meta['mode']}, {meta['date']})\n\n{meta['machine']}; servers {', '.join(peers)}; "
        f"model {args.model}; {args.hz:g} Hz, budget {args.budget_ms:g} ms; {args.seconds:g} s per point.\n\n{md}\n"
        + f"\nServer CPU per reply by thread (µs; the event loop is the main thread):\n\n{threads_md}\n"
        + "".join(f"\nmissing point: {f}\n" for f in failures))
    plot(report, out.with_suffix(".png"))
    print(f"\nwrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')} (wall time {meta['wall_time_s']:.0f} s; "
          f"load average after {meta['load_average_after']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
