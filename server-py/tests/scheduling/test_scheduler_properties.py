"""Properties over random arrival sequences, on a fake clock driven the way the server drives
the scheduler: submit on arrival, pull when an executor is free, sleep until next_wakeup_ns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sched_fakes import MS, FakeClock

from inferential.config.schema import SchedulingConfig
from inferential.scheduler import InferenceRequest, create_scheduler, effective_deadline_ns
from inferential.wire import Status

STRATEGIES = ["fifo", "deadline_aware", "batch_optimized", "priority_tiered", "round_robin", "edf"]
MODELS = ["m0", "m1"]

arrival = st.tuples(
    st.floats(0, 15),  # gap since the previous arrival, ms
    st.integers(0, 4),  # robot
    st.integers(0, 1),  # model
    st.integers(0, 12),  # priority (clamped to max_priority 10)
    st.one_of(st.floats(-1, 2), st.just(math.nan)),  # urgency, sanitised
    st.one_of(st.none(), st.floats(1, 60)),  # deadline after arrival, ms
    st.one_of(st.none(), st.integers(0, 50)),  # steps remaining
)

configs = st.fixed_dictionaries(
    {
        "strategy": st.sampled_from(STRATEGIES),
        "max_queue_size": st.integers(1, 12),
        "overflow_policy": st.sampled_from(["drop_oldest", "reject_newest"]),
        "per_client_queue_cap": st.one_of(st.none(), st.integers(1, 4)),
        "coalesce": st.one_of(st.none(), st.booleans()),
        "admission": st.sampled_from(["off", "reject", "deprioritize"]),
        "max_retries": st.integers(0, 2),
        "request_ttl_ms": st.floats(5, 200),
        "max_batch_size": st.integers(1, 4),
        "max_wait_ms": st.floats(0, 10),
    }
)


@dataclass
class Trace:
    state: dict[int, str] = field(default_factory=dict)  # seq -> queued/running/done/shed/model_error
    requests: dict[int, InferenceRequest] = field(default_factory=dict)
    first_out_ns: dict[int, int] = field(default_factory=dict)  # first dispatch or shed
    shed_status: dict[int, str] = field(default_factory=dict)
    batches: list[tuple[int, list[InferenceRequest], list[InferenceRequest]]] = field(default_factory=list)


def run(config: dict, arrivals: list, service_ms: float, failures: list[bool], track_queue=False) -> tuple[Trace, dict]:
    """Drive a scheduler through ``arrivals`` with one executor per model until everything
    is resolved. Checks the invariants that must hold at every step on the way."""
    clock = FakeClock()
    # Ordering properties are about the strategy alone: admission control only where a test asks.
    scheduler = create_scheduler(SchedulingConfig(**{"admission": "off", **config}), clock=clock)
    trace = Trace()
    ttl_ns = int(config.get("request_ttl_ms", 5000) * MS)

    def on_shed(request, status, reason):
        assert trace.state[request.seq] == "queued", f"shed while {trace.state[request.seq]}"
        trace.state[request.seq] = "shed"
        trace.shed_status[request.seq] = status
        trace.first_out_ns.setdefault(request.seq, clock.now)

    scheduler.on_shed = on_shed
    times, t = [], clock.now
    for gap, *_ in arrivals:
        t += int(gap * MS)
        times.append(t)
    next_arrival = 0
    running: dict[str, tuple[int, list[InferenceRequest]]] = {}  # model -> (done at, batch)
    fail_index = 0
    for _ in range(10_000):
        # Whatever is due now: completions, arrivals, timers.
        for model, (done_ns, batch) in list(running.items()):
            if done_ns <= clock.now:
                del running[model]
                scheduler.record_service_time(model, len(batch), service_ms)
                for request in batch:
                    failed = failures[fail_index % len(failures)] if failures else False
                    fail_index += 1
                    if not failed:
                        trace.state[request.seq] = "done"
                        continue
                    trace.state[request.seq] = "queued"
                    if not scheduler.requeue(request):
                        assert trace.state[request.seq] == "queued"
                        trace.state[request.seq] = "model_error"
        while next_arrival < len(arrivals) and times[next_arrival] <= clock.now:
            _, robot, model, priority, urgency, deadline_ms, steps = arrivals[next_arrival]
            request = InferenceRequest(
                client_id=f"r{robot}",
                model_id=MODELS[model],
                request_id=next_arrival,
                priority=priority,
                urgency=urgency,
                steps_remaining=steps,
                arrival_ns=clock.now,
                deadline_ns=None if deadline_ms is None else clock.now + int(deadline_ms * MS),
                latency_budget_ms=deadline_ms or 50.0,
            )
            trace.state[request.seq] = "queued"
            trace.requests[request.seq] = request
            scheduler.submit(request)
            next_arrival += 1
        scheduler.tick()
        while ready := {m for m in MODELS if m not in running}:
            queued_before = []
            if track_queue:
                queued_before = [r for r in trace.requests.values() if trace.state[r.seq] == "queued"]
            batch = scheduler.next_batch(ready)
            if not batch:
                break
            model = batch[0].model_id
            assert model in ready and all(r.model_id == model for r in batch)
            assert len(batch) <= config.get("max_batch_size", 8)
            for request in batch:
                assert trace.state[request.seq] == "queued", "dispatched twice or after a shed"
                assert clock.now - request.arrival_ns < ttl_ns, "dispatched after its TTL"
                trace.state[request.seq] = "running"
                trace.first_out_ns.setdefault(request.seq, clock.now)
            trace.batches.append((clock.now, batch, queued_before))
            running[model] = (clock.now + int(service_ms * MS), batch)
        queued = sum(1 for s in trace.state.values() if s == "queued")
        assert scheduler.queue_len() == queued
        wakeup = scheduler.next_wakeup_ns()
        assert wakeup is None or wakeup > clock.now, "asked to wake at once again: the server would spin"
        candidates = [d for d, _ in running.values()]
        if next_arrival < len(arrivals):
            candidates.append(times[next_arrival])
        if wakeup is not None:
            candidates.append(wakeup)
        if not candidates:
            break
        clock.now = max(clock.now, min(candidates))
    else:
        raise AssertionError("the driver did not finish")
    return trace, scheduler.status()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=configs,
    arrivals=st.lists(arrival, min_size=1, max_size=40),
    service_ms=st.floats(0.5, 20),
    failures=st.lists(st.booleans(), max_size=5),
)
def test_every_request_ends_exactly_once_and_never_after_its_ttl(config, arrivals, service_ms, failures):
    trace, status = run(config, arrivals, service_ms, failures)
    # Conservation: each request ended in exactly one terminal state; nothing is left queued.
    assert len(trace.state) == len(arrivals)
    assert set(trace.state.values()) <= {"done", "shed", "model_error"}
    assert status["queue_len"] == 0
    shed_counts = {s: list(trace.shed_status.values()).count(Status[s]) for s in status["shed"]}
    assert shed_counts == status["shed"]
    # No starvation beyond the TTL: each request was dispatched or explicitly shed by then.
    ttl_ns = int(config["request_ttl_ms"] * MS)
    for seq, request in trace.requests.items():
        assert trace.first_out_ns[seq] - request.arrival_ns <= ttl_ns
    # MODEL_ERROR only once the retries are used up.
    for seq, state in trace.state.items():
        if state == "model_error":
            assert trace.requests[seq].retries == config["max_retries"] + 1
    if not any(failures):
        assert "model_error" not in trace.state.values()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=st.lists(arrival, min_size=1, max_size=40),
    service_ms=st.floats(0.5, 20),
    batch=st.integers(1, 3),
)
def test_round_robin_serves_every_robot_within_one_rotation(arrivals, service_ms, batch):
    config = {"strategy": "round_robin", "max_batch_size": batch, "request_ttl_ms": 1e9}
    single_model = [(gap, robot, 0, *rest) for gap, robot, _, *rest in arrivals]
    trace, _ = run(config, single_model, service_ms, [], track_queue=True)
    robots = len({a[1] for a in single_model})
    # From the moment a request heads its robot's queue, it waits at most one batch per other robot.
    head_since: dict[int, int] = {}
    for index, (_, out, queued_before) in enumerate(trace.batches):
        heads = {}
        for r in sorted(queued_before, key=lambda r: (r.arrival_ns, r.seq)):
            heads.setdefault(r.client_id, r)
        for r in heads.values():
            head_since.setdefault(r.seq, index)
        for r in out:
            if r.seq in head_since:
                assert index - head_since[r.seq] <= robots - 1
    assert set(trace.state.values()) == {"done"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arrivals=st.lists(arrival, min_size=1, max_size=40),
    service_ms=st.floats(0.5, 20),
    batch=st.integers(1, 3),
)
def test_edf_heads_every_batch_with_the_earliest_deadline(arrivals, service_ms, batch):
    # One model, so the service-time estimate shifts every request's latest start alike.
    config = {"strategy": "edf", "max_batch_size": batch, "request_ttl_ms": 1e9, "coalesce": False}
    single_model = [(gap, robot, 0, *rest) for gap, robot, _, *rest in arrivals]
    trace, _ = run(config, single_model, service_ms, [], track_queue=True)
    for _, out, queued_before in trace.batches:
        head = (effective_deadline_ns(out[0]), out[0].seq)
        # Batches may be filled by priority, but each is led by the earliest deadline queued: a
        # request waits for at most one batch per earlier deadline, so it cannot starve.
        assert all(head <= (effective_deadline_ns(r), r.seq) for r in queued_before)
    assert set(trace.state.values()) == {"done"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrivals=st.lists(arrival, min_size=1, max_size=40), service_ms=st.floats(0.5, 20))
def test_deadline_aware_serves_everything_when_nothing_expires(arrivals, service_ms):
    config = {"strategy": "deadline_aware", "max_batch_size": 2, "request_ttl_ms": 1e9}
    trace, _ = run(config, arrivals, service_ms, [])
    assert set(trace.state.values()) == {"done"}
