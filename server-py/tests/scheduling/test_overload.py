"""Overload without collapse (issue 16), on a fake clock: no OK reply after its deadline,
deadlines for robots that state none, admission that counts the server's own time, and
action chunks that are never refused for lateness."""

from __future__ import annotations

from typing import Any, Optional

from sched_fakes import MS, FakeClock

from inferential._proto import inferential_pb2 as pb
from inferential.config.schema import InferentialConfig
from inferential.dispatch.local import LocalBackend
from inferential.metrics.store import MetricsStore
from inferential.scheduler import InferenceRequest
from inferential.server.engine import Engine, LoopLoad
from inferential.server.ledger import Ledger
from inferential.server.registry import ClientRegistry
from inferential.wire import Status


class Transport:
    """Stands in for the ROUTER socket: keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[list[Any]] = []

    def send(self, frames: list[Any]) -> Optional[str]:
        self.sent.append(frames)
        return None

    def drain(self) -> None:
        pass

    def replies(self) -> list[pb.ModelResponse]:
        return [pb.ModelResponse.FromString(frames[2]) for frames in self.sent]


def wired(clock: FakeClock, **scheduling: Any) -> tuple[Engine, Ledger, Transport, MetricsStore]:
    config = InferentialConfig.model_validate({"scheduling": scheduling})
    registry = ClientRegistry(config.clients, config.auth, 0.3, 5.0)
    metrics = MetricsStore()
    ledger = Ledger(metrics, registry, clock)
    transport = Transport()
    ledger.transport = transport  # type: ignore[assignment]
    engine = Engine(config, LocalBackend(config.models, {}), ledger, registry, metrics, clock)
    return engine, ledger, transport, metrics


def pending(ledger: Ledger, clock: FakeClock, budget_ms: float = 20.0, **fields: Any) -> InferenceRequest:
    fields.setdefault("deadline_ns", clock.now + int(budget_ms * MS))
    req = InferenceRequest(
        client_id="r1", model_id="m", arrival_ns=clock.now, latency_budget_ms=budget_ms, protocol_version=2, **fields
    )
    ledger.pending[req.seq] = req
    return req


# --- no OK after the deadline ------------------------------------------------------------


def test_a_result_ready_after_its_deadline_is_withheld_as_deadline_unmeetable_and_counted(clock):
    _, ledger, transport, metrics = wired(clock)
    on_time, late = pending(ledger, clock), pending(ledger, clock)
    clock.advance_ms(20)  # exactly at the deadline: still on time
    ledger.answer(on_time, int(Status.OK), outputs={"a": "x"})
    clock.advance_ms(0.5)
    ledger.answer(late, int(Status.OK), outputs={"a": "x"})
    first, second = transport.replies()
    assert first.status == pb.OK and first.metadata["a"] == "x"
    assert second.status == pb.DEADLINE_UNMEETABLE and "withheld" in second.error and not second.metadata
    assert ledger.withheld == 1 and metrics.counter("late_results_withheld") == 1
    assert ledger.status_counts == {"OK": 1, "DEADLINE_UNMEETABLE": 1}
    assert not ledger.pending  # answered exactly once either way


def test_chunks_and_budget_mismatches_are_sent_late(clock):
    _, ledger, transport, _ = wired(clock)
    chunk = pending(ledger, clock, control_rate_hz=50.0, actions_remaining=1)
    mismatch = pending(ledger, clock)
    mismatch.late_ok = True
    clock.advance_ms(40)
    ledger.answer(chunk, int(Status.OK))
    ledger.answer(mismatch, int(Status.OK))
    assert [r.status for r in transport.replies()] == [pb.OK, pb.OK] and ledger.withheld == 0


def test_late_results_are_sent_when_configured_or_when_admission_does_not_enforce_deadlines(clock):
    for scheduling in ({"late_results": "send"}, {"admission": "off"}, {"admission": "deprioritize"}):
        _, ledger, transport, _ = wired(clock, **scheduling)
        req = pending(ledger, clock)
        clock.advance_ms(30)
        ledger.answer(req, int(Status.OK))
        assert [r.status for r in transport.replies()] == [pb.OK], scheduling


def test_the_engine_marks_requests_whose_budget_is_shorter_than_the_model_alone(clock):
    engine, ledger, transport, _ = wired(clock)
    engine.scheduler.record_service_time("m", 1, 5.0)
    short = pending(ledger, clock, budget_ms=2.0)  # the model alone takes 5 ms: a mismatch, sent late
    normal = pending(ledger, clock, budget_ms=8.0)  # could have made it alone: withheld
    clock.advance_ms(10)
    engine._mark_mismatches("m", [short, normal], infer_ms=10.0)
    assert short.late_ok and not normal.late_ok
    for req in (short, normal):
        ledger.answer(req, int(Status.OK))
    assert [r.status for r in transport.replies()] == [pb.OK, pb.DEADLINE_UNMEETABLE]


# --- 1.x robots: a deadline from their cadence --------------------------------------------


def v1_request(clock: FakeClock, interval_ms: Optional[float], **fields: Any) -> InferenceRequest:
    """A request of a robot that stated no budget: the default (50 ms) deadline, less the margin."""
    return InferenceRequest(
        client_id="v1", model_id="m", arrival_ns=clock.now, deadline_ns=clock.now + 49 * MS,
        latency_budget_ms=50.0, budget_stated=False, expected_interval_ms=interval_ms, **fields,
    )  # fmt: skip


def test_a_robot_without_a_budget_sending_on_its_own_clock_gets_its_cadence_as_deadline(build, clock):
    sched = build("edf", admission="reject")
    first = v1_request(clock, None)
    sched.submit(first)
    clock.advance_ms(20)
    second = v1_request(clock, 20.0)  # sent while the first is still waiting: open loop
    sched.submit(second)
    # Its next observation, planned a tenth of an interval early (jitter), less the 1 ms margin.
    assert second.deadline_ns == second.arrival_ns + 17 * MS
    assert second.latency_budget_ms == 20.0
    clock.advance_ms(20)
    third = v1_request(clock, 20.0)
    sched.submit(third)  # once seen, it stays open loop
    assert third.deadline_ns == third.arrival_ns + 17 * MS


def test_the_running_observation_that_shows_a_robot_open_loop_gets_its_cadence_deadline_too(build, clock):
    """A robot without a budget is seen sending on its own clock when an observation arrives
    before its previous one is answered. If that previous one is running, its reply will be
    stale too: it gets the cadence deadline (and is withheld if ready after it), where it
    kept the default 50 ms and went out late, once per such robot."""
    sched = build("edf", admission="reject")
    clock.advance_ms(100)
    first = v1_request(clock, 20.0)
    sched.submit(first)
    assert first.deadline_ns == first.arrival_ns + 49 * MS  # not yet seen open loop
    assert sched.next_batch() == [first]
    first.running = True
    clock.advance_ms(20)
    second = v1_request(clock, 20.0)
    sched.submit(second)
    assert second.deadline_ns == second.arrival_ns + 17 * MS
    assert first.deadline_ns == first.arrival_ns + 17 * MS
    assert first.latency_budget_ms == 20.0


def test_a_queued_observation_that_shows_a_robot_open_loop_keeps_its_place(build, clock):
    """Only a running one is re-dated: a queued one's deadline orders the queue."""
    sched = build("fifo", admission="reject")
    first = v1_request(clock, 20.0)
    sched.submit(first)
    clock.advance_ms(20)
    sched.submit(v1_request(clock, 20.0))
    assert first.deadline_ns == first.arrival_ns + 49 * MS


def test_a_closed_loop_robot_without_a_budget_keeps_the_default(build, clock):
    sched = build("edf", admission="reject")
    for _ in range(3):
        req = v1_request(clock, 2.0)  # its "cadence" is only the server's latency
        sched.submit(req)
        assert req.deadline_ns == req.arrival_ns + 49 * MS
        assert sched.next_batch() == [req]
        req.settled = True  # answered before the robot sends again
        clock.advance_ms(2)


def test_a_robot_that_stated_its_budget_is_left_alone(build, clock, make):
    sched = build("fifo", admission="reject")
    sched.submit(make("r", deadline_ms=40.0, expected_interval_ms=10.0))
    clock.advance_ms(10)
    second = make("r", deadline_ms=40.0, expected_interval_ms=10.0)
    sched.submit(second)
    assert second.deadline_ns == clock.now + 40 * MS


# --- admission that counts the server's own time --------------------------------------------


def test_admission_sheds_what_only_the_server_would_make_late(build, clock, make):
    sched = build("edf", admission="reject")
    sched.record_service_time("m", 1, 5.0)
    ok = make("a", deadline_ms=6.0)
    assert sched.submit(ok) and not sched.sheds  # 5 ms of model time fits in 6
    assert sched.next_batch() == [ok]
    clock.advance_ms(5.0)  # its run is over: the executor is free again
    sched.set_server_costs(lag_ms=1.5, reply_ms=0.1)  # a loaded event loop: 1.6 ms more
    late = make("b", deadline_ms=6.0)
    assert not sched.submit(late)
    [(shed, status, _)] = sched.sheds
    assert shed is late and status == Status.DEADLINE_UNMEETABLE
    assert sched.status()["server_lag_ms"] == 1.5


def test_replies_of_a_batch_are_planned_one_after_another(build, clock, make):
    sched = build("fifo", admission="reject", max_batch_size=8)
    sched.record_service_time("m", 1, 4.0)
    sched.set_server_costs(lag_ms=0.0, reply_ms=0.5)
    # Four requests due at 5.5 ms: a batch of four ends at 4 ms (flat estimate), and the
    # replies leave at 4.5, 5.0, 5.5 and 6.0 ms: the fourth would be late.
    reqs = [make(f"r{i}", deadline_ms=5.5) for i in range(4)]
    kept = [sched.submit(r) for r in reqs]
    assert kept == [True, True, True, False]
    assert [s[0] for s in sched.sheds] == [reqs[3]]


def test_loop_load_turns_the_loop_threads_demand_into_an_expected_wait():
    clock = FakeClock()
    demand = [0]
    load = LoopLoad(clock, window_ns=50 * MS, demand=lambda: demand[0])
    clock.advance_ms(60)
    demand[0] = 60 * MS  # start-up work: the first window is only a baseline
    assert not load.sample(events=1) and load.busy == 0.0
    clock.advance_ms(10)
    assert not load.sample(events=100)  # the window is not over yet
    # 100 ms in which the loop thread wanted a CPU 90 ms, for 300 observations (0.3 ms each).
    clock.advance_ms(90)
    demand[0] += 90 * MS
    assert load.sample(events=301)
    busy = LoopLoad.ALPHA * 0.9
    assert abs(load.busy - busy) < 1e-9 and abs(load.obs_ms - 0.3) < 1e-9
    assert abs(load.lag_ms - busy / (1 - busy) * 0.3) < 1e-9
    events = 301
    for _ in range(30):  # sustained: the estimate converges on 0.9 busy, a 2.7 ms wait
        clock.advance_ms(100)
        demand[0] += 90 * MS
        events += 300
        load.sample(events=events)
    assert abs(load.busy - 0.9) < 1e-3 and abs(load.lag_ms - 2.7) < 0.05
    load.replied(8, 8 * 90_000)
    assert abs(load.reply_ms - 0.09) < 1e-9
    for _ in range(30):  # and down again once the loop idles (everything shed, few arrivals)
        clock.advance_ms(100)
        demand[0] += 1 * MS
        events += 2
        load.sample(events=events)
    assert load.busy < 0.02 and load.lag_ms < 0.01  # 1 ms of 100: the idle loop


def test_the_load_estimate_follows_arrivals_when_no_batch_runs(clock):
    engine, ledger, _, _ = wired(clock)
    demand = [0]
    engine.loop_load = LoopLoad(clock, window_ns=50 * MS, demand=lambda: demand[0])
    engine.scheduler.set_server_costs(lag_ms=30.0, reply_ms=0.1)  # a stale, high estimate
    engine._launching = True  # no batch can start in this test: only arrivals close windows
    engine.arm_timer = lambda: None  # type: ignore[method-assign]
    for _ in range(20):
        clock.advance_ms(60)
        demand[0] += 1 * MS
        ledger.status_counts["DEADLINE_UNMEETABLE"] += 20
        engine.after_change()  # a burst of arrivals handled
    assert engine.scheduler.status()["server_lag_ms"] < 0.5


def test_the_engine_hands_its_measured_costs_to_the_scheduler(clock):
    for margin_ms, planned in ((0.0, True), (1.0, False)):
        engine, ledger, _, _ = wired(clock, deadline_margin_ms=margin_ms)
        engine.loop_load = LoopLoad(clock, window_ns=1, demand=lambda: clock.now // 2)  # half busy
        clock.advance_ms(1)
        engine._measure_server(4, 4 * 100_000)  # the baseline window
        ledger.status_counts["OK"] = 10  # observations seen in the next one: 0.05 ms of CPU each
        clock.advance_ms(1)
        engine._measure_server(4, 4 * 100_000)
        status = engine.scheduler.status()
        assert status["server_reply_ms"] == 0.1
        # A wait of a few microseconds: planned on its own, within the default 1 ms margin
        # (which covers a reply's usual way out) it adds nothing.
        assert (status["server_lag_ms"] > 0) == planned


# --- action chunks --------------------------------------------------------------------------


def test_admission_never_rejects_a_chunk_for_lateness_nor_sheds_others_for_it(build, clock, make):
    sched = build("edf", admission="reject", max_batch_size=1)
    sched.record_service_time("m", 1, 10.0)
    first = make("cam-1", deadline_ms=12.0)
    assert sched.submit(first)
    dry = make("arm", deadline_ms=15.0, control_rate_hz=50.0, actions_remaining=0)  # late behind it, still wanted
    assert sched.submit(dry) and not sched.sheds  # and the on-time request ahead keeps its place
    plain = make("cam-2", deadline_ms=15.0)
    assert not sched.submit(plain)  # the same lateness without a chunk is refused
    assert [s[0] for s in sched.sheds] == [plain]
    assert sched.next_batch() == [first]
    clock.advance_ms(10)
    assert sched.next_batch() == [dry]  # past its deadline at dispatch, the chunk still runs


def test_an_idle_model_refusing_everything_lets_one_request_through_each_second(build, clock, make):
    """Refusals produce no samples: without runs, estimates that slow early batches made
    too high would refuse every request for good."""
    sched = build("edf", admission="reject")
    for ms in (18.0, 18.0):  # a slow start (warm-up, a stall): the mean says 18 ms
        sched.record_service_time("m", 1, ms)
    sched.set_server_costs(lag_ms=5.0, reply_ms=0.1)  # and the loop looked busy
    clock.advance_ms(2000)
    first = make("a", deadline_ms=20.0)
    assert sched.submit(first)  # idle, no batch for over a second: a probe
    assert sched.next_batch() == [first]
    clock.advance_ms(500)
    assert not sched.submit(make("b", deadline_ms=20.0))  # refused: 18 + 5 + 0.1 > 20
    clock.advance_ms(600)
    probe = make("c", deadline_ms=20.0)
    assert sched.submit(probe)  # over a second since the last batch, idle, nothing ahead: a probe
    assert not sched.submit(make("d", deadline_ms=20.0))  # one probe, not a flood
    assert [s[0].client_id for s in sched.sheds] == ["b", "d"]


def test_withheld_results_are_exported_to_prometheus_per_model():
    from prometheus_client.parser import text_string_to_metric_families

    from inferential.config import ModelConfig
    from inferential.metrics.prometheus import PrometheusExporter
    from inferential.server import Server

    server = Server(
        config=InferentialConfig(models=[ModelConfig(name="noop", target="inferential.models.testing:NoOp")])
    )
    exporter = PrometheusExporter(server)
    for _ in range(3):  # as the ledger counts them
        server.metrics.increment("late_results_withheld", {"model": "noop"})
    families = {f.name: f for f in text_string_to_metric_families(exporter.render().decode())}
    [sample] = [s for s in families["inferential_late_results_withheld"].samples if s.name.endswith("_total")]
    assert sample.labels == {"model": "noop"} and sample.value == 3


def _first_miss_reference(sched: Any, plan: list[InferenceRequest], model: str, start: int) -> Optional[int]:
    """The plan checked request by request from the first batch: what admission decides,
    written the plain way (the scheduler skips batches whose earliest deadline meets
    their last reply, and resumes after a removal)."""
    limit, before, first = sched.max_batch_size(model), 0.0, 0
    while first < len(plan):
        chunk = plan[first : first + limit]
        size, head = len(chunk), chunk[0]
        if any(r.priority > head.priority for r in chunk):
            while size > 1 and start + before + sched._cost_ns(model, size) + sched.server_ns(1) > head.deadline_ns:
                size -= 1
        cost = sched._cost_ns(model, size)
        done = start + before + cost + sched._lag_ns
        for offset in range(size):
            if plan[first + offset].deadline_ns < done + (offset + 1) * sched._reply_ns:
                return first + offset
        first += size
        before += cost / sched._concurrency.get(model, 1)
    return None


def test_admission_plans_exactly_as_checking_every_request_of_every_batch(build, clock, make):
    """Random queues (deadlines, priorities, chunks, server costs): the first miss is the one
    the plain check finds, from the first batch and resumed at the first batch whose window reached a removal,
    and admission sheds exactly the requests the plain plan-and-remove loop would."""
    import random

    rng = random.Random(7)
    for trial in range(300):
        sched = build("edf", admission="reject", max_batch_size=rng.choice([1, 4, 8]))
        sched.record_service_time("m", 1, rng.uniform(0.5, 3.0))
        sched.record_service_time("m", 8, rng.uniform(3.0, 12.0))
        sched.set_server_costs(lag_ms=rng.uniform(0, 2), reply_ms=rng.uniform(0, 0.3))
        plan = [
            make(
                f"r{i}",
                deadline_ms=rng.uniform(1, 60),
                priority=rng.choice([0, 1, 1, 2]),
                control_rate_hz=50.0 if rng.random() < 0.1 else 0.0,
            )
            for i in range(rng.randrange(1, 60))
        ]
        plan.sort(key=lambda r: (r.deadline_ns, r.seq))
        start = clock.now + int(rng.uniform(0, 5) * MS)
        marks: list[tuple[int, float]] = []
        expected = _first_miss_reference(sched, plan, "m", start)
        assert sched._first_miss(plan, "m", start, marks=marks) == expected, trial
        if expected is None or len(plan) < 2:
            continue
        gone = rng.randrange(expected + 1)  # admission removes a request at or before the miss
        rest = plan[:gone] + plan[gone + 1 :]
        # Resumed at the first batch whose window (the model's limit from its start) reached the removed one.
        resume = next(m for m in marks if m[0] + sched.max_batch_size("m") > gone)
        assert sched._first_miss(rest, "m", start, *resume) == _first_miss_reference(sched, rest, "m", start), trial

    # Whole admissions: a queue submitted one by one sheds what the plain loop would.
    for trial in range(100):
        sched = build("edf", admission="reject", max_batch_size=8)
        sched.record_service_time("m", 1, 1.0)
        sched.record_service_time("m", 8, 4.0)
        sched.set_server_costs(lag_ms=rng.uniform(0, 1), reply_ms=rng.uniform(0, 0.2))
        for i in range(40):
            req = make(f"r{i}", deadline_ms=rng.uniform(2, 40), priority=rng.choice([0, 1]))
            queued = [r for r in sched._normal.get("m", {}).values() if r.deadline_ns is not None]
            plan = sorted(queued + [req], key=lambda r: (r.deadline_ns, r.seq))
            expected_out = []
            while (miss := _first_miss_reference(sched, plan, "m", sched._free_at("m", clock.now))) is not None:
                victim = max(plan[: miss + 1], key=lambda r: (r.priority, r.seq))
                plan.remove(victim)
                expected_out.append(victim)
            if not queued and req in expected_out:
                expected_out.remove(req)  # nothing queued: it goes through as the probe (see _admission)
            before = len(sched.sheds)
            sched.submit(req)
            assert [s[0] for s in sched.sheds[before:]] == [v for v in expected_out if v is not req] + (
                [req] if req in expected_out else []
            ), (trial, i)
