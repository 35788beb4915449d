"""The fleet of `make bench-scheduling`: its definition, its load scaling, and a load generator.

One definition serves both halves of the benchmark: the virtual-clock simulation
(bench/scheduling_sim.py) builds its robots from :func:`fleet`, and
:func:`run_fleet` drives the same robots against a real server on loopback.

Load generator. One process, one thread, one DEALER socket per robot and a
``zmq.Poller`` loop that sleeps until the next robot's send time or a reply:
no thread per robot contending for the GIL, no asyncio task per message, so
the robots keep their rates while the server is loaded (the send lag is
measured and reported). Robots are open loop: each sends on its own period
whatever the replies. Observations are encoded with the client SDK's codec
(``inferential._envelope``), so the bytes on the wire are the SDK's, but the
sockets are read directly: the benchmark must see *every* reply, including
the ones a robot calling ``get_result()`` would discard as older than its
newest, to account for each request.

Each request ends in one of: answered OK within its budget; OK but late (and,
among those, after the robot's next observation: stale); an explicit status
(EXPIRED, QUEUE_FULL, ...); or no reply at all by the end plus a grace period,
a *silent loss*. Replies are matched by request id (v2 servers) or by a
``seq`` metadata string the model echoes (the 1.4.0 runner, whose protocol has
no request id).
"""

from __future__ import annotations

import functools
import gc
import heapq
import random
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import zmq

from inferential._envelope import encode_observation, parse_reply
from inferential._proto import inferential_pb2 as pb
from inferential.wire import DEFAULT_LIMITS

MODEL = "policy"
# Service time of the model at offered load 1.0 is k * (BASE_FIXED_MS + BASE_PER_ITEM_MS * batch).
BASE_FIXED_MS = 3.0
BASE_PER_ITEM_MS = 0.4
MAX_BATCH = 8
FAST = "50Hz/20ms"
SLOW = "20Hz/50ms"

# Small observations: this benchmark is about scheduling, not payload.
JOINTS = np.linspace(-1, 1, 7, dtype=np.float32)
IMAGE = np.random.default_rng(0).integers(0, 255, size=(32, 32, 3), dtype=np.uint8)


@dataclass(frozen=True)
class RobotSpec:
    name: str
    rate_hz: float
    budget_ms: float
    priority: int  # 0 = highest
    klass: str
    critical: bool
    phase_ns: int  # first send, after the fleet starts

    @property
    def period_ns(self) -> float:
        return 1e9 / self.rate_hz


def fleet(rng: random.Random, critical_class: str = "50Hz") -> list[RobotSpec]:
    """12 robots at 50 Hz with a 20 ms budget, 8 at 20 Hz with a 50 ms budget.

    Two robots are critical (priority 0; the others 1): the first two of
    ``critical_class`` ("50Hz" or "20Hz"). Phases are random within a period.
    """
    robots = []
    for i in range(12):
        critical = critical_class == "50Hz" and i < 2
        robots.append(RobotSpec(f"fast-{i:02d}", 50.0, 20.0, 0 if critical else 1, FAST, critical, rng.randrange(20_000_000)))
    for i in range(8):
        critical = critical_class == "20Hz" and i < 2
        robots.append(RobotSpec(f"slow-{i:02d}", 20.0, 50.0, 0 if critical else 1, SLOW, critical, rng.randrange(50_000_000)))
    return robots


def offered_per_s(robots: list[RobotSpec]) -> float:
    return sum(r.rate_hz for r in robots)


def service_scale(load: float, robots: list[RobotSpec]) -> float:
    """The factor k on the model's service time that makes the fleet's offered
    rate ``load`` times the model's capacity. Capacity is the throughput at the
    largest batch, MAX_BATCH / service(MAX_BATCH): the robots' rates and budgets
    (the SLOs) stay as specified and the model gets slower."""
    base_capacity = MAX_BATCH / ((BASE_FIXED_MS + BASE_PER_ITEM_MS * MAX_BATCH) / 1e3)
    return load * base_capacity / offered_per_s(robots)


def service_ms(load: float, robots: list[RobotSpec]) -> tuple[float, float]:
    """(a, b) of the model's service time a + b * batch, in ms, at ``load``."""
    k = service_scale(load, robots)
    return k * BASE_FIXED_MS, k * BASE_PER_ITEM_MS


# --- the load generator -----------------------------------------------------------


@dataclass
class Sent:
    """One observation and what became of it (monotonic ns)."""

    robot: int
    planned_ns: int
    sent_ns: int
    next_sent_ns: Optional[int] = None
    reply_ns: Optional[int] = None
    status: Optional[str] = None  # "OK" or the status name
    batch_size: int = 0
    queue_ms: float = 0.0  # the server's timing (v2 servers): arrival to dispatch
    infer_ms: float = 0.0  # ... and the batch's run time
    duplicates: int = 0
    total_ms: float = 0.0  # ... and arrival to the reply handed to the socket
    error: str = ""  # the reply's error text when not OK


@dataclass
class FleetRun:
    robots: list[RobotSpec]
    seconds: float
    warmup_s: float
    start_ns: int
    records: list[list[Sent]] = field(default_factory=list)  # per robot, by request id - 1
    unknown_replies: int = 0
    send_failures: int = 0
    loadgen_cpu_s: float = 0.0

    def measured(self) -> list[Sent]:
        """Requests sent after the warm-up."""
        cut = self.start_ns + int(self.warmup_s * 1e9)
        return [s for per_robot in self.records for s in per_robot if s.planned_ns >= cut]

    def all_requests(self) -> list[Sent]:
        return [s for per_robot in self.records for s in per_robot]


_F = TypeVar("_F", bound=Callable[..., Any])


def without_gc_pauses(run: _F) -> _F:
    """Run a load generator with Python's cyclic garbage collector collected before and
    off during the run. Its full collections with a run's records in memory paused the
    fleet for 20-25 ms (measured: every robot's reply read that much late at once, about
    0.1 % of replies), which the fleet counted as the server's latency: most of the late
    replies of a 20-robot fleet. Reference counting still frees what the run lets go of."""

    @functools.wraps(run)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            return run(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapped  # type: ignore[return-value]


@without_gc_pauses
def run_fleet(
    endpoint: str,
    robots: list[RobotSpec],
    seconds: float,
    *,
    warmup_s: float = 1.0,
    grace_s: float = 6.0,
    seed: int = 1,
    v1_server: bool = False,
    budget_margin_ms: float = 0.0,
    model: str = MODEL,
    image: Optional[np.ndarray] = None,
    echo_peer: bool = False,
    v1_robots: bool = False,
) -> FleetRun:
    """Drive ``robots`` against the server at ``endpoint`` for ``warmup_s + seconds``,
    then wait up to ``grace_s`` for outstanding replies (stopping early when none is left).

    ``v1_server``: speak to a 1.x server as its own client does (routing id =
    client id, one payload frame); replies are matched by the echoed ``seq``.
    ``budget_margin_ms``: robots declare their budget less this margin (to cover
    the way to the server and back); they are still judged on their full budget.
    ``model``: the model id the observations name. ``image``: the observation's
    image tensor (default: a 32x32x3 ``IMAGE``; 224x224x3 for a 150 KB observation).
    ``echo_peer``: the peer is a raw ZMQ echo that sends back the observation's own
    envelope (payload frames optional): replies are matched by its request id.
    ``v1_robots``: the robots speak as 1.x clients do to a v2 server (protocol_version 0,
    one payload frame, no latency budget: the server has to find each deadline itself).
    They keep a request id, which no 1.x client sends, only so that every reply can be
    matched; the server's scheduling does not read it.
    """
    image = IMAGE if image is None else image
    rng = random.Random(seed + 7)
    ctx = zmq.Context(io_threads=1)
    sockets: list[zmq.Socket] = []
    poller = zmq.Poller()
    for robot in robots:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Deep queues: a full queue on the robot's side would be a loss the server never saw.
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        if v1_server:
            sock.setsockopt(zmq.ROUTING_ID, robot.name.encode())
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        sockets.append(sock)
    socket_index = {sock: i for i, sock in enumerate(sockets)}
    time.sleep(0.3)  # let every connection complete before the clock starts

    run = FleetRun(robots, seconds, warmup_s, start_ns=time.monotonic_ns() + 50_000_000)
    run.records = [[] for _ in robots]
    steps = [0] * len(robots)
    end_ns = run.start_ns + int((warmup_s + seconds) * 1e9)
    heap = [(run.start_ns + r.phase_ns, i) for i, r in enumerate(robots)]
    heapq.heapify(heap)
    outstanding = 0
    cpu0 = _cpu_seconds()

    def send(i: int, planned: int) -> None:
        nonlocal outstanding
        robot = robots[i]
        rid = len(run.records[i]) + 1
        frames = encode_observation(
            client_id=robot.name,
            client_type="bench-robot",
            model_id=model,
            request_id=rid,
            inputs={"joints": JOINTS, "image": image, "seq": str(rid)},
            urgency=0.5,
            steps_remaining=steps[i],
            priority=robot.priority,
            latency_budget_ms=0.0 if v1_robots else max(0.0, robot.budget_ms - budget_margin_ms),
            timestamp_ns=time.time_ns(),
            limits=DEFAULT_LIMITS,
            single_payload_frame=v1_server or v1_robots,
        )
        if v1_robots:
            obs = pb.Observation.FromString(frames[1])
            obs.protocol_version = 0
            frames[1] = obs.SerializeToString()
        steps[i] = (steps[i] - 1) % 200
        now = time.monotonic_ns()
        try:
            sockets[i].send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            run.send_failures += 1
            return
        if run.records[i]:
            run.records[i][-1].next_sent_ns = now
        run.records[i].append(Sent(i, planned, now))
        outstanding += 1

    def receive(sock: zmq.Socket) -> None:
        nonlocal outstanding
        records = run.records[socket_index[sock]]
        while True:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            now = time.monotonic_ns()
            if echo_peer:
                echoed = pb.Observation.FromString(frames[1].bytes)
                resp = pb.ModelResponse(request_id=echoed.request_id, status=pb.OK)
            else:
                resp, _ = parse_reply(frames, DEFAULT_LIMITS)
            rid = resp.request_id or int(resp.metadata.get("seq", "0") or 0)
            if not 1 <= rid <= len(records):
                run.unknown_replies += 1
                continue
            sent = records[rid - 1]
            if sent.status is not None:
                sent.duplicates += 1
                continue
            sent.reply_ns = now
            sent.status = "OK" if resp.status in (pb.OK, pb.STATUS_UNSPECIFIED) else pb.Status.Name(resp.status)
            sent.error = resp.error
            if resp.HasField("timing"):
                sent.batch_size = resp.timing.batch_size
                sent.queue_ms = resp.timing.queue_wait_ms
                sent.infer_ms = resp.timing.inference_ms
                sent.total_ms = resp.timing.total_ms
            else:
                sent.batch_size = 1
            outstanding -= 1

    deadline_ns = end_ns + int(grace_s * 1e9)
    while True:
        now = time.monotonic_ns()
        while heap and heap[0][0] <= now:
            planned, i = heapq.heappop(heap)
            send(i, planned)
            following = planned + int(robots[i].period_ns * rng.uniform(0.95, 1.05))
            if following < end_ns:
                heapq.heappush(heap, (following, i))
            now = time.monotonic_ns()
        if not heap and (outstanding == 0 or now >= deadline_ns):
            break
        wait_ms = ((heap[0][0] if heap else deadline_ns) - now) / 1e6
        if wait_ms >= 1.0:
            events = poller.poll(int(wait_ms))  # whole milliseconds: never past the next send
        else:
            events = poller.poll(0)
            if not events and wait_ms > 0:
                time.sleep(min(wait_ms, 0.2) / 1e3)
        for sock, _ in events:
            receive(sock)
    run.loadgen_cpu_s = _cpu_seconds() - cpu0
    for sock in sockets:
        sock.close(linger=0)
    ctx.term()
    return run


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- summary --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q * 100)) if values else float("nan")


def summarize(run: FleetRun) -> dict:
    """SLO attainment, goodput, latency, sheds, silent losses and send lag of one run."""
    robots = run.robots
    measured = run.measured()

    def latency_ms(s: Sent) -> Optional[float]:
        return None if s.reply_ns is None else (s.reply_ns - s.sent_ns) / 1e6

    def within(s: Sent) -> bool:
        lat = latency_ms(s)
        return s.status == "OK" and lat is not None and lat <= robots[s.robot].budget_ms

    def attainment(subset: list[Sent]) -> float:
        return sum(1 for s in subset if within(s)) / len(subset) if subset else float("nan")

    ok = [s for s in measured if s.status == "OK"]
    latencies = [latency_ms(s) for s in ok]
    late = [s for s in ok if not within(s)]
    stale = [s for s in late if s.next_sent_ns is not None and s.reply_ns > s.next_sent_ns]  # type: ignore[operator]
    # Of those, the ones the server itself answered after the budget (its reply's timing:
    # arrival to the reply handed to the socket); the rest were late on the way or in the robot.
    late_in_server = [s for s in late if s.total_ms > robots[s.robot].budget_ms]
    sheds: dict[str, int] = {}
    for s in measured:
        if s.status not in (None, "OK"):
            sheds[s.status] = sheds.get(s.status, 0) + 1
    # What became of the critical robots' observations that missed their budget: refused
    # (by status), answered OK too late by the server itself, or late on the way back.
    critical_misses: dict[str, int] = {}
    critical_refusals: list[str] = []  # the first few refusals' texts and late OKs, to tell why
    for s in measured:
        if not robots[s.robot].critical or within(s):
            continue
        said: Optional[str] = None  # what the server said of it, for critical_refusals
        if s.status is None:
            kind = "lost"
        elif s.status != "OK":
            kind, said = s.status, s.error
        elif s.total_ms > robots[s.robot].budget_ms:
            kind, said = "late in server", f"OK {s.total_ms:.1f} ms after arrival"
        else:
            kind = "late on the way"
        critical_misses[kind] = critical_misses.get(kind, 0) + 1
        if said is not None and len(critical_refusals) < 5:
            critical_refusals.append(
                f"{said} [waited {s.queue_ms:.1f} ms, ran {s.infer_ms:.1f} ms in a batch of {s.batch_size}]"
            )
    everything = run.all_requests()
    lags = [(s.sent_ns - s.planned_ns) / 1e6 for s in everything]
    achieved = [len(per) / (run.warmup_s + run.seconds) / robots[i].rate_hz for i, per in enumerate(run.records)]
    return {
        "submitted": len(measured),
        "answered_ok": len(ok),
        "slo_overall": attainment(measured),
        "slo_critical": attainment([s for s in measured if robots[s.robot].critical]),
        "slo_50hz": attainment([s for s in measured if robots[s.robot].klass == FAST]),
        "slo_20hz": attainment([s for s in measured if robots[s.robot].klass == SLOW]),
        "goodput_per_s": sum(1 for s in measured if within(s)) / run.seconds,
        "p50_ms": percentile(latencies, 0.50),  # type: ignore[arg-type]
        "p99_ms": percentile(latencies, 0.99),  # type: ignore[arg-type]
        "mean_batch": (sum(s.batch_size for s in ok) / len(ok)) if ok else 0.0,
        "ok_late": len(late),
        "ok_stale": len(stale),
        "ok_late_in_server": len(late_in_server),
        "sheds": sheds,
        "critical_misses": critical_misses,
        "critical_refusals": critical_refusals,
        # Over every request, warm-up included: none may end without a reply.
        "silent_losses": sum(1 for s in everything if s.status is None),
        "duplicates": sum(s.duplicates for s in everything),
        "unknown_replies": run.unknown_replies,
        "send_failures": run.send_failures,
        "send_lag_p99_ms": percentile(lags, 0.99),
        "send_lag_max_ms": max(lags) if lags else float("nan"),
        "rate_achieved_min": min(achieved) if achieved else float("nan"),
        "loadgen_cpu_fraction": run.loadgen_cpu_s / (run.warmup_s + run.seconds),
    }
