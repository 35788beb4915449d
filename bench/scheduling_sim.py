"""Discrete-event simulation of the scheduler alone: a robot fleet, one executor, a virtual clock.

No sockets, no threads, no sleeping: the real scheduler classes run on an
injected clock that jumps from event to event, so a run is deterministic and
takes seconds of CPU for many seconds of fleet time. ``make bench-scheduling``
(bench/scheduling.py) runs it next to the same fleet against the real server;
it also runs on its own:

    python bench/scheduling_sim.py [--seconds 20] [--seed 1] [--critical-class 20Hz|50Hz|both] [--quick]

Fleet (bench/_fleet.py, shared with the real-server run): 12 robots at 50 Hz
with a 20 ms budget, 8 at 20 Hz with a 50 ms budget; two robots are critical
(priority 0, the others priority 1): two of the 20 Hz robots (the issue's
literal reading), or two of the 50 Hz ones (stricter). Each robot sends on its
own period (random phase, +-5% jitter), with a deadline of arrival + budget, its
cadence EMA (as the server computes it) and a trajectory step counter. The
arrivals are the same for every strategy.

Executor: one model, one batch at a time, service time k * (3 ms + 0.4 ms x batch)
(+-5% jitter). Capacity is the throughput at the largest batch,
max_batch_size / service(max_batch_size); the offered load (760 obs/s) is set to
50%, 90% and 120% of it by scaling the service time (k), which keeps the robots'
rates and budgets, i.e. the SLOs, as specified.

Rows (CONFIGS): fifo with admission off (a plain FIFO queue: the baseline),
every strategy with the default configuration (admission "reject"), and fifo,
deadline_aware and edf with the other admission mode ("+deprioritize");
max_batch_size 8 throughout, max_wait_ms 2 for batch_optimized. SLO attainment counts every
observation sent: shed ones count as misses.

The driver does what the server does: submit on arrival; pull next_batch() when
the executor is free; record_service_time() on completion; sleep until
next_wakeup_ns() (then tick()) when it has nothing else to do; on_shed answers
the robot. Every request must end answered, shed or still queued at the end
(drained): "silent" counts the rest and must be 0.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fleet import BASE_FIXED_MS, BASE_PER_ITEM_MS, FAST, MAX_BATCH, MODEL, SLOW, RobotSpec, fleet as fleet_specs  # noqa: E402

from inferential.config.schema import SchedulingConfig  # noqa: E402
from inferential.scheduler import InferenceRequest, create_scheduler, derive_deadline_ns  # noqa: E402
from inferential.wire import Status  # noqa: E402

LOADS = (0.5, 0.9, 1.2)
CADENCE_ALPHA = 0.3

# The rows without a suffix use the default admission; three rows show the other mode.
DEFAULT_ADMISSION = SchedulingConfig().admission
OTHER_ADMISSION = "deprioritize" if DEFAULT_ADMISSION == "reject" else "reject"

# (name, extra SchedulingConfig fields), shared with the real-server run. The first row is the baseline.
CONFIGS: list[tuple[str, dict]] = [
    ("fifo, admission off", {"strategy": "fifo", "admission": "off"}),
    ("fifo", {"strategy": "fifo"}),
    ("round_robin", {"strategy": "round_robin"}),
    ("priority_tiered", {"strategy": "priority_tiered"}),
    ("batch_optimized", {"strategy": "batch_optimized", "max_wait_ms": 2.0}),
    ("deadline_aware", {"strategy": "deadline_aware"}),
    ("edf", {"strategy": "edf"}),
] + [
    (f"{strategy} +{OTHER_ADMISSION}", {"strategy": strategy, "admission": OTHER_ADMISSION})
    for strategy in ("fifo", "deadline_aware", "edf")
]
QUICK_CONFIGS = [c for c in CONFIGS if c[0] in ("fifo, admission off", "deadline_aware", "edf", f"edf +{OTHER_ADMISSION}")]


@dataclass
class Robot:
    """A robot of the fleet and its state during one simulation."""

    spec: RobotSpec
    last_arrival_ns: Optional[int] = None
    ema_ms: Optional[float] = None
    steps: int = 0
    sent: int = 0

    name = property(lambda self: self.spec.name)
    rate_hz = property(lambda self: self.spec.rate_hz)
    budget_ms = property(lambda self: self.spec.budget_ms)
    priority = property(lambda self: self.spec.priority)
    klass = property(lambda self: self.spec.klass)
    critical = property(lambda self: self.spec.critical)
    phase_ns = property(lambda self: self.spec.phase_ns)


def fleet(rng: random.Random, critical_class: str) -> list[Robot]:
    return [Robot(spec) for spec in fleet_specs(rng, critical_class)]


@dataclass
class Outcome:
    robot: Robot
    request: InferenceRequest
    latency_ms: Optional[float] = None
    status: str = "QUEUED"


@dataclass
class Run:
    name: str
    load: float
    outcomes: list[Outcome] = field(default_factory=list)
    sheds: Counter = field(default_factory=Counter)
    batches: list[int] = field(default_factory=list)
    scale: float = 1.0
    wakeups: int = 0
    drained: int = 0
    in_flight: int = 0


def simulate(
    name: str, extra: dict, load: float, seconds: float, seed: int, critical_class: str = "20Hz",
    per_item: bool = False, overhead_ms: float = 0.0, v1_robots: bool = False,
) -> Run:
    """One config at one load. ``per_item``: the model's cost is all per item (no fixed
    part, the overload section's model), so capacity is 1 / per-item time whatever the
    batch. ``overhead_ms``: the server's own time per batch on top of the model's (its
    hand-off and answering; 0 = the scheduler alone). ``v1_robots``: robots state no
    budget; the server's default (50 ms) applies and the scheduler may tighten it."""
    rng = random.Random(seed)  # arrivals: identical for every strategy
    service_rng = random.Random(seed + 1)
    robots = fleet(rng, critical_class)
    offered = sum(r.rate_hz for r in robots)
    if per_item:
        fixed_ms, item_ms = 0.0, 1.0
        scale = load * 1e3 / offered
    else:
        fixed_ms, item_ms = BASE_FIXED_MS, BASE_PER_ITEM_MS
        base_capacity = MAX_BATCH / ((BASE_FIXED_MS + BASE_PER_ITEM_MS * MAX_BATCH) / 1e3)
        scale = load * base_capacity / offered
    default_budget_ms = 50.0

    now = 0

    def clock() -> int:
        return now

    config = SchedulingConfig(max_batch_size=MAX_BATCH, **extra)
    scheduler = create_scheduler(config, clock=clock)
    run = Run(name, load, scale=scale)
    by_seq: dict[int, Outcome] = {}

    def on_shed(request: InferenceRequest, status: Status, reason: str) -> None:
        outcome = by_seq[request.seq]
        assert outcome.status == "QUEUED", f"request shed twice or after an answer: {outcome.status}"
        outcome.status = status.name
        run.sheds[status.name] += 1

    scheduler.on_shed = on_shed

    events: list[tuple[int, int, str, object]] = []
    serial = 0

    def push(t: int, kind: str, payload: object = None) -> None:
        nonlocal serial
        serial += 1
        heapq.heappush(events, (t, serial, kind, payload))

    for robot in robots:
        push(robot.phase_ns, "arrive", robot)
    end_ns = int(seconds * 1e9)
    busy: Optional[list[InferenceRequest]] = None
    wake_at: Optional[int] = None

    def pull() -> None:
        nonlocal busy
        if busy is not None:
            return
        batch = scheduler.next_batch({MODEL})
        if not batch:
            return
        busy = batch
        service_ms = scale * (fixed_ms + item_ms * len(batch)) * service_rng.uniform(0.95, 1.05) + overhead_ms
        run.batches.append(len(batch))
        push(now + int(service_ms * 1e6), "done", (batch, service_ms))

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            robot = payload  # type: ignore[assignment]
            if now >= end_ns:
                continue
            since = None if robot.last_arrival_ns is None else (now - robot.last_arrival_ns) / 1e6
            request = InferenceRequest(
                client_id=robot.name,
                model_id=MODEL,
                request_id=robot.sent,
                urgency=0.5,
                priority=robot.priority,
                steps_remaining=robot.steps,
                arrival_ns=now,
                deadline_ns=derive_deadline_ns(now, latency_budget_ms=default_budget_ms if v1_robots else robot.budget_ms),
                latency_budget_ms=default_budget_ms if v1_robots else robot.budget_ms,
                budget_stated=not v1_robots,
                expected_interval_ms=robot.ema_ms,
                since_previous_ms=since,
            )
            if since is not None:  # the server's cadence EMA, updated after building the request
                previous = since if robot.ema_ms is None else robot.ema_ms
                robot.ema_ms = CADENCE_ALPHA * since + (1 - CADENCE_ALPHA) * previous
            robot.last_arrival_ns = now
            robot.sent += 1
            robot.steps = (robot.steps - 1) % 200
            outcome = Outcome(robot, request)
            run.outcomes.append(outcome)
            by_seq[request.seq] = outcome
            scheduler.submit(request)
            period_ns = 1e9 / robot.rate_hz
            push(now + int(period_ns * rng.uniform(0.95, 1.05)), "arrive", robot)
        elif kind == "done":
            batch, service_ms = payload  # type: ignore[misc]
            scheduler.record_service_time(MODEL, len(batch), service_ms)
            for request in batch:
                outcome = by_seq[request.seq]
                assert outcome.status == "QUEUED", f"answered after being shed: {outcome.status}"
                outcome.status = "ANSWERED"
                outcome.latency_ms = (now - request.arrival_ns) / 1e6
            busy = None
        elif kind == "wake":
            if payload != wake_at:
                continue  # superseded by an earlier wakeup
            wake_at = None
            run.wakeups += 1
            scheduler.tick()
        pull()
        # Sleep until the scheduler's next timer; never poll.
        wakeup = scheduler.next_wakeup_ns()
        if wakeup is not None and (wake_at is None or wakeup < wake_at):
            wake_at = max(wakeup, now)
            push(wake_at, "wake", wake_at)
        if now >= end_ns and busy is None and not any(k != "wake" for _, _, k, _ in events):
            break

    run.in_flight = 0 if busy is None else len(busy)
    for request in scheduler.drain():
        by_seq[request.seq].status = "DRAINED"
        run.drained += 1
    return run


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarize(run: Run, seconds: float) -> dict:
    def attainment(outcomes: list[Outcome]) -> float:
        if not outcomes:
            return float("nan")
        ok = sum(1 for o in outcomes if o.latency_ms is not None and o.latency_ms <= o.robot.budget_ms)
        return ok / len(outcomes)

    outcomes = run.outcomes
    latencies = sorted(o.latency_ms for o in outcomes if o.latency_ms is not None)
    answered = len(latencies)
    accounted = answered + sum(run.sheds.values()) + run.drained + run.in_flight
    within = sum(1 for o in outcomes if o.latency_ms is not None and o.latency_ms <= o.robot.budget_ms)
    return {
        "strategy": run.name,
        "load": run.load,
        "submitted": len(outcomes),
        "answered": answered,
        "slo_overall": attainment(outcomes),
        "slo_critical": attainment([o for o in outcomes if o.robot.critical]),
        "slo_50hz": attainment([o for o in outcomes if o.robot.klass == FAST]),
        "slo_20hz": attainment([o for o in outcomes if o.robot.klass == SLOW]),
        "goodput_per_s": within / seconds,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "mean_batch": sum(run.batches) / len(run.batches) if run.batches else 0.0,
        "sheds": dict(run.sheds),
        "drained_at_end": run.drained,
        "silent_losses": len(outcomes) - accounted,
        "wakeups": run.wakeups,
        "service_scale": run.scale,
    }


SHORT = {"QUEUE_FULL": "full", "EXPIRED": "exp", "SUPERSEDED": "sup", "DEADLINE_UNMEETABLE": "unmeet"}


def print_table(rows: list[dict]) -> None:
    """SLO columns: share of observations answered within their budget (all robots, the
    critical ones, each class). "x fifo": goodput relative to the first row."""
    header = (
        f"{'strategy':<26} {'SLO all':>8} {'crit':>7} {'50Hz':>7} {'20Hz':>7} {'goodput/s':>9} {'x fifo':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'batch':>5} {'silent':>6}  sheds"
    )
    print(header)
    print("-" * len(header))
    base = rows[0]["goodput_per_s"] or float("nan")
    for r in rows:
        sheds = " ".join(f"{SHORT[k]}={v}" for k, v in sorted(r["sheds"].items())) or "-"
        print(
            f"{r['strategy']:<26} {r['slo_overall']:>8.2%} {r['slo_critical']:>7.2%} {r['slo_50hz']:>7.2%} "
            f"{r['slo_20hz']:>7.2%} {r['goodput_per_s']:>9.1f} {r['goodput_per_s'] / base:>7.2f} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['mean_batch']:>5.1f} {r['silent_losses']:>6}  {sheds}"
        )


def run_all(
    configs: list[tuple[str, dict]], loads: tuple[float, ...], seconds: float, seed: int, critical_class: str,
    echo: bool = True,
) -> list[dict]:
    """Every config at every load, for one choice of critical robots; prints a table per load."""
    results = []
    for load in loads:
        rows = [summarize(simulate(name, extra, load, seconds, seed, critical_class), seconds) for name, extra in configs]
        for row in rows:
            row["critical_class"] = critical_class
        if echo:
            scale = rows[0]["service_scale"]
            print(
                f"\nload {load:.0%} of capacity ({seconds:g} s simulated; service time "
                f"{scale * BASE_FIXED_MS:.2f} ms + {scale * BASE_PER_ITEM_MS:.2f} ms x batch, i.e. x{scale:.2f}):"
            )
            print_table(rows)
        results.extend(rows)
    return results


def run_overload(
    configs: list[tuple[str, dict]], loads: tuple[float, ...], seconds: float, seed: int, overhead_ms: float = 0.0,
) -> list[dict]:
    """The overload section's fleet on the virtual clock: per-item model cost, v2 robots
    (budgets stated) and 1.x robots (none), goodput as a share of the model's capacity."""
    rows = []
    for v1_robots in (False, True):
        for load in loads:
            for name, extra in configs:
                run = simulate(name, extra, load, seconds, seed, "50Hz", per_item=True, overhead_ms=overhead_ms,
                               v1_robots=v1_robots)  # fmt: skip
                row = summarize(run, seconds)
                capacity = 1e3 / run.scale  # per-item time run.scale ms
                row.update(robots_kind="1.x" if v1_robots else "v2", capacity_per_s=capacity,
                           goodput_of_capacity=row["goodput_per_s"] / capacity, overhead_ms=overhead_ms)  # fmt: skip
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="simulated fleet time per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--critical-class", choices=("20Hz", "50Hz", "both"), default="both",
        help="the class of the two critical robots: 20Hz (the brief's reading), 50Hz (stricter), or both",
    )
    parser.add_argument("--quick", action="store_true", help="only " + ", ".join(n for n, _ in QUICK_CONFIGS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scheduling_sim.json"))
    args = parser.parse_args()

    started = time.perf_counter()
    classes = ("20Hz", "50Hz") if args.critical_class == "both" else (args.critical_class,)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    results = []
    for critical_class in classes:
        print(f"\n=== critical robots: two of the {critical_class} robots (priority 0) ===")
        results.extend(run_all(configs, LOADS, args.seconds, args.seed, critical_class))
    lost = sum(r["silent_losses"] for r in results)
    print(f"\nsilent losses across all runs: {lost}; wall time {time.perf_counter() - started:.1f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": args.seconds, "seed": args.seed, "runs": results}, indent=2))
    print(f"wrote {out}")
    if lost:
        raise SystemExit("conservation violated: some requests were neither answered, shed nor drained")


if __name__ == "__main__":
    main()
