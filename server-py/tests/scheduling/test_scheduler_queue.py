"""Queue mechanics shared by every built-in: TTL, overflow, fair share, coalescing,
admission, retries, wakeups, hand-over, sanitising, service-time estimate."""

from __future__ import annotations

import pytest
from sched_fakes import MS

from inferential.config.schema import SchedulingConfig
from inferential.scheduler import ServiceTimeModel, create_scheduler, derive_deadline_ns
from inferential.wire import Status

STRATEGIES = ["fifo", "deadline_aware", "batch_optimized", "priority_tiered", "round_robin", "edf"]


def statuses(scheduler):
    # Status(...) refuses anything but the wire's status numbers.
    return [(r.client_id, Status(status).name) for r, status, _ in scheduler.sheds]


def linear_service(scheduler, model="m", fixed=2.0, per_item=1.0, sizes=range(1, 9)):
    for size in sizes:
        scheduler.record_service_time(model, size, fixed + per_item * size)


# --- TTL -------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tick_sheds_expired_requests_and_they_are_never_dispatched(build, make, clock, strategy):
    s = build(strategy, request_ttl_ms=100, max_wait_ms=0)
    s.submit(make("stale"))
    clock.advance_ms(60)
    s.submit(make("fresh"))
    clock.advance_ms(40)  # "stale" is exactly TTL old
    assert s.tick() == 1
    assert statuses(s) == [("stale", "EXPIRED")]
    assert [r.client_id for r in s.next_batch()] == ["fresh"]
    assert s.status()["shed"]["EXPIRED"] == 1


def test_next_batch_sheds_expired_requests_even_without_tick(build, make, clock):
    s = build("fifo", request_ttl_ms=100)
    s.submit(make("stale"))
    clock.advance_ms(150)
    assert s.next_batch() == []
    assert statuses(s) == [("stale", "EXPIRED")]


def test_a_request_older_than_the_ttl_is_shed_at_submit(build, make, clock):
    s = build("fifo", request_ttl_ms=100)
    r = make("late", arrival_ns=clock.now - 200 * MS)
    assert s.submit(r) is False
    assert statuses(s) == [("late", "EXPIRED")] and s.queue_len() == 0


# --- next_wakeup_ns -------------------------------------------------------------


def test_next_wakeup_is_the_exact_next_expiry(build, make, clock):
    s = build("fifo", request_ttl_ms=100)
    assert s.next_wakeup_ns() is None
    first = make("a")
    s.submit(first)
    clock.advance_ms(30)
    s.submit(make("b"))
    assert s.next_wakeup_ns() == first.arrival_ns + 100 * MS
    clock.now = s.next_wakeup_ns() - 1
    assert s.tick() == 0
    clock.now += 1
    assert s.tick() == 1
    assert s.next_wakeup_ns() == first.arrival_ns + 130 * MS


def test_next_wakeup_forgets_requests_that_left_the_queue(build, make, clock):
    s = build("fifo", request_ttl_ms=100)
    s.submit(make("a"))
    clock.advance_ms(10)
    second = make("b")
    s.submit(second)
    s.next_batch()  # takes both
    assert s.next_wakeup_ns() is None
    s.submit(make("c"))
    assert s.next_wakeup_ns() == clock.now + 100 * MS


def test_next_wakeup_includes_the_batch_flush_time(build, make, clock):
    s = build("batch_optimized", max_batch_size=4, max_wait_ms=10, request_ttl_ms=1000)
    r = make("a")
    s.submit(r)
    assert s.next_wakeup_ns() == r.arrival_ns + 10 * MS
    clock.now = s.next_wakeup_ns()
    assert s.next_batch() == [r]
    assert s.next_wakeup_ns() is None


def test_a_due_flush_for_a_busy_model_does_not_make_the_server_spin(build, make, clock):
    s = build("batch_optimized", max_batch_size=4, max_wait_ms=10, request_ttl_ms=1000)
    r = make("a")
    s.submit(r)
    clock.advance_ms(15)
    assert s.next_batch(set()) == []  # its executor is busy
    # Only the TTL is left to wake for; the flush is already due and waits for the executor.
    assert s.next_wakeup_ns() == r.arrival_ns + 1000 * MS


# --- overflow and fair share ----------------------------------------------------


def test_drop_oldest_evicts_the_oldest_and_reports_queue_full(build, make, clock):
    s = build("fifo", max_queue_size=2, overflow_policy="drop_oldest")
    for client in ("a", "b", "c"):
        s.submit(make(client))
        clock.advance_ms(1)
    assert statuses(s) == [("a", "QUEUE_FULL")]
    assert [r.client_id for r in s.next_batch()] == ["b", "c"]


def test_reject_newest_refuses_the_incoming_and_reports_queue_full(build, make, clock):
    s = build("fifo", max_queue_size=2, overflow_policy="reject_newest")
    results = []
    for client in ("a", "b", "c"):
        results.append(s.submit(make(client)))
        clock.advance_ms(1)
    assert results == [True, True, False]
    assert statuses(s) == [("c", "QUEUE_FULL")]
    assert [r.client_id for r in s.next_batch()] == ["a", "b"]


def test_the_work_ahead_of_a_new_request_is_the_executor_booking_plus_the_queued_full_batches(build, make, clock):
    """What the native transport refuses by (Engine.shed_costs): ahead_ms, the plan's work
    queued before a request taken now, and what each further request adds."""
    s = build("fifo", max_queue_size=100)
    s.set_model_limits("m", max_batch_size=2)
    assert s.ahead_ms("m", clock()) == (0.0, 0.0)  # nothing measured yet
    for size, ms in ((1, 6.0), (2, 10.0), (1, 6.0), (2, 10.0)):
        s.record_service_time("m", size, ms)  # a full batch of 2 takes 10 ms
    s.set_server_costs(0.0, 0.5)  # the loop answers each reply in 0.5 ms
    assert s.ahead_ms("m", clock()) == (0.0, 5.5)  # idle; each request adds (10 + 2 x 0.5) / 2
    for client in ("a", "b", "c", "d", "e"):
        s.submit(make(client))
    # Five queued: two full batches ahead (the fifth shares the next one), 11 ms each.
    assert s.ahead_ms("m", clock()) == (22.0, 5.5)
    assert len(s.next_batch()) == 2  # running, expected to end in 10 ms; three queued
    clock.advance_ms(4)
    ahead, _ = s.ahead_ms("m", clock())
    assert ahead == pytest.approx(6.0 + 11.0)


def test_queue_full_carries_the_time_the_backlog_needs_once_the_model_is_measured(build, make, clock):
    s = build("fifo", max_queue_size=4, overflow_policy="reject_newest")
    s.set_model_limits("m", max_batch_size=2)
    for client in ("a", "b", "c", "d", "e"):
        s.submit(make(client))
    assert statuses(s) == [("e", "QUEUE_FULL")] and s.sheds[0][0].retry_after_ms == 0  # nothing measured yet
    for size, ms in ((1, 6.0), (2, 10.0), (1, 6.0), (2, 10.0)):
        s.record_service_time("m", size, ms)  # 2 ms + 4 ms per item: a full batch of 2 takes 10 ms
    late = make("f")
    s.submit(late)
    # Four queued = two full batches of 10 ms on one executor, nothing running: 20 ms.
    assert s.sheds[-1][0] is late and late.retry_after_ms == 20
    assert len(s.next_batch()) == 2  # one batch running (expected to take 10 ms), two queued
    clock.advance_ms(4)
    s.submit(make("g"))
    s.submit(make("h"))
    later = make("i")
    s.submit(later)
    # 6 ms left of the running batch, then four queued: two more batches, 26 ms.
    assert s.sheds[-1][0] is later and later.retry_after_ms == 26


def test_drop_oldest_evicts_deprioritized_requests_first(build, make, clock):
    s = build("fifo", max_queue_size=2, admission="deprioritize")
    linear_service(s)
    s.submit(make("hopeless", deadline_ms=1))  # cannot finish in 1 ms: deprioritized
    clock.advance_ms(1)
    s.submit(make("b"))
    clock.advance_ms(1)
    s.submit(make("c"))
    assert statuses(s) == [("hopeless", "QUEUE_FULL")]


def test_per_robot_cap_sheds_that_robots_own_oldest(build, make, clock):
    s = build("fifo", per_client_queue_cap=2, overflow_policy="drop_oldest")
    for client in ("greedy", "greedy", "other", "greedy"):
        s.submit(make(client))
        clock.advance_ms(1)
    assert [(r.request_id, status) for r, status, _ in s.sheds] == [(1, Status.QUEUE_FULL)]
    assert "per_client_queue_cap" in s.sheds[0][2]
    assert sorted(r.request_id for r in s.next_batch()) == [2, 3, 4]


def test_per_robot_cap_with_reject_newest_refuses_the_robots_new_request(build, make, clock):
    s = build("fifo", per_client_queue_cap=1, overflow_policy="reject_newest")
    assert s.submit(make("greedy")) is True
    assert s.submit(make("greedy")) is False
    assert s.submit(make("other")) is True
    assert statuses(s) == [("greedy", "QUEUE_FULL")]


# --- coalescing -----------------------------------------------------------------


def test_edf_coalesces_by_default_and_reports_superseded(build, make, clock):
    s = build("edf")
    old = make("r1")
    s.submit(old)
    clock.advance_ms(5)
    s.submit(make("r1", "other-model"))  # another stream of the same robot is kept
    new = make("r1")
    s.submit(new)
    assert [(r.request_id, status) for r, status, _ in s.sheds] == [(old.request_id, Status.SUPERSEDED)]
    assert s.queue_len() == 2


@pytest.mark.parametrize("strategy", ["fifo", "deadline_aware", "round_robin"])
def test_other_strategies_keep_every_observation_unless_configured(build, make, strategy):
    s = build(strategy)
    s.submit(make("r1"))
    s.submit(make("r1"))
    assert s.queue_len() == 2 and s.sheds == []
    coalescing = build(strategy, coalesce=True)
    coalescing.submit(make("r1"))
    coalescing.submit(make("r1"))
    assert coalescing.queue_len() == 1 and statuses(coalescing) == [("r1", "SUPERSEDED")]


def test_coalescing_keys_on_the_connection_not_only_the_client_id(build, make, clock):
    """Two connections sharing a client id each get the reply to their own newest
    observation: one never supersedes the other's (the reply would go to the other)."""
    s = build("edf")
    first = make("r1", identity=b"conn-1")
    s.submit(first)
    clock.advance_ms(1)
    s.submit(make("r1", identity=b"conn-2"))
    assert s.sheds == [] and s.queue_len() == 2
    clock.advance_ms(1)
    s.submit(make("r1", identity=b"conn-1"))
    assert [(r.request_id, status) for r, status, _ in s.sheds] == [(first.request_id, Status.SUPERSEDED)]
    assert s.queue_len() == 2


def test_coalescing_can_be_turned_off_for_edf(build, make):
    s = build("edf", coalesce=False)
    s.submit(make("r1"))
    s.submit(make("r1"))
    assert s.queue_len() == 2


def test_a_retried_request_does_not_supersede_a_newer_one(build, make, clock):
    s = build("edf", max_retries=1)
    old = make("r1")
    s.submit(old)
    assert s.next_batch() == [old]
    clock.advance_ms(1)
    new = make("r1")
    s.submit(new)
    assert s.requeue(old) is True  # handled: shed, not MODEL_ERROR
    assert [(r.request_id, status) for r, status, _ in s.sheds] == [(old.request_id, Status.SUPERSEDED)]
    assert s.next_batch() == [new]


# --- admission control ----------------------------------------------------------


def test_admission_admits_everything_before_any_service_time_is_known(build, make):
    s = build("edf", admission="reject")
    assert s.submit(make("r1", deadline_ms=0.001)) is True


def test_admission_reject_sheds_what_cannot_meet_its_deadline(build, make):
    s = build("fifo", admission="reject", max_batch_size=2)
    linear_service(s)  # a batch of 2 takes 4 ms
    assert s.submit(make("a", deadline_ms=4.5)) is True
    assert s.submit(make("b", deadline_ms=4.5)) is True  # a and b: one batch, done at 4 ms
    assert s.submit(make("c", deadline_ms=5)) is False  # needs a second batch: 4 + 3 ms
    assert statuses(s) == [("c", "DEADLINE_UNMEETABLE")]
    assert s.sheds[0][0].retry_after_ms == 4  # a fresh observation has a chance once a and b are done
    assert s.submit(make("d", deadline_ms=7)) is True


def test_admission_counts_the_batch_already_running(build, make):
    s = build("fifo", admission="reject", max_batch_size=1)
    linear_service(s)
    s.submit(make("a", deadline_ms=100))
    assert len(s.next_batch()) == 1  # runs for about 3 ms from now
    assert s.submit(make("b", deadline_ms=5)) is False  # 3 ms of a, then 3 ms of b
    s.record_service_time("m", 1, 3.0)  # a finished: the executor is free
    assert s.submit(make("c", deadline_ms=5)) is True


def test_admission_under_overload_displaces_lower_priority_work(build, make):
    s = build("edf", admission="reject", max_batch_size=1)
    linear_service(s)  # 3 ms per request
    s.submit(make("low-1", priority=5, deadline_ms=6))
    s.submit(make("low-2", priority=5, deadline_ms=7))
    assert s.submit(make("critical", priority=0, deadline_ms=6.5)) is True
    assert statuses(s) == [("low-2", "DEADLINE_UNMEETABLE")]
    assert [s.next_batch()[0].client_id for _ in range(2)] == ["low-1", "critical"]


def test_admission_deprioritize_serves_unmeetable_requests_after_all_others(build, make, clock):
    s = build("fifo", admission="deprioritize", max_batch_size=1)
    linear_service(s)
    hopeless = make("hopeless", deadline_ms=1)
    assert s.submit(hopeless) is True and hopeless.deprioritized
    clock.advance_ms(1)
    s.submit(make("normal-1", deadline_ms=100))
    clock.advance_ms(1)
    s.submit(make("normal-2", deadline_ms=100))
    assert s.sheds == []
    assert [s.next_batch()[0].client_id for _ in range(3)] == ["normal-1", "normal-2", "hopeless"]
    assert s.status()["deprioritized"] == 0


def test_dispatch_time_admission_sheds_what_became_unmeetable_while_queued(build, make, clock):
    s = build("fifo", admission="reject", max_batch_size=1)
    linear_service(s)
    s.submit(make("a", deadline_ms=10))
    s.submit(make("b", deadline_ms=100))
    clock.advance_ms(8)  # a now has 2 ms left and needs 3
    assert s.next_batch()[0].client_id == "b"
    assert statuses(s) == [("a", "DEADLINE_UNMEETABLE")]


def test_requests_without_deadline_are_never_judged(build, make):
    s = build("fifo", admission="reject")
    linear_service(s, fixed=1000.0)
    assert s.submit(make("a", deadline_ms=None)) is True


# --- retries --------------------------------------------------------------------


def test_requeue_retries_up_to_max_retries_then_hands_back(build, make):
    s = build("fifo", max_retries=2)
    r = make("a")
    s.submit(r)
    outcomes = []
    for _ in range(3):
        assert s.next_batch() == [r]
        outcomes.append(s.requeue(r))
    assert outcomes == [True, True, False]
    assert r.retries == 3 and s.queue_len() == 0


def test_requeue_without_retries_configured_hands_back_at_once(build, make):
    s = build("fifo")
    r = make("a")
    s.submit(r)
    s.next_batch()
    assert s.requeue(r) is False


def test_a_retried_request_keeps_its_age_and_ttl(build, make, clock):
    s = build("fifo", max_retries=5, request_ttl_ms=100)
    r = make("a")
    s.submit(r)
    s.next_batch()
    clock.advance_ms(100)
    assert s.requeue(r) is True
    assert statuses(s) == [("a", "EXPIRED")]


# --- hand-over ------------------------------------------------------------------


def test_drain_and_adopt_swap_strategies_without_losing_work(build, make, clock):
    old = build("fifo")
    submitted = []
    for client in ("a", "b", "c", "a"):
        r = make(client, priority=0 if client == "c" else 3)
        submitted.append(r)
        old.submit(r)
        clock.advance_ms(1)
    drained = old.drain()
    assert drained == submitted and old.queue_len() == 0 and old.next_wakeup_ns() is None
    new = build("priority_tiered", max_batch_size=1)
    assert new.adopt(drained) == 4
    out = [new.next_batch()[0] for _ in range(4)]
    assert out[0].client_id == "c" and sorted(map(id, out)) == sorted(map(id, submitted))
    assert new.sheds == [] and old.sheds == []


def test_adopt_applies_the_new_schedulers_rules_and_reports_them(build, make):
    old = build("fifo")
    for client in ("a", "a", "b"):
        old.submit(make(client))
    new = build("edf")  # coalesces
    assert new.adopt(old.drain()) == 2
    assert statuses(new) == [("a", "SUPERSEDED")]


def test_cancel_client_removes_only_that_robots_requests(build, make):
    s = build("fifo")
    for client in ("gone", "stays", "gone"):
        s.submit(make(client))
    cancelled = s.cancel_client("gone")
    assert [r.client_id for r in cancelled] == ["gone", "gone"]
    assert [r.client_id for r in s.next_batch()] == ["stays"]
    assert s.sheds == []


# --- shed reporting and status --------------------------------------------------


def test_default_on_shed_keeps_a_bounded_log(clock):
    config = SchedulingConfig(strategy="fifo", max_queue_size=1, overflow_policy="reject_newest")
    s = create_scheduler(config, clock=clock)
    from inferential.scheduler import InferenceRequest

    s.submit(InferenceRequest("a", "m", request_id=1))
    for i in range(s.shed_log_size + 5):
        s.submit(InferenceRequest("b", "m", request_id=100 + i))
    assert len(s.shed_log) == s.shed_log_size
    last = s.shed_log[-1]
    assert (last.client_id, last.status, last.request_id) == ("b", Status.QUEUE_FULL, 100 + s.shed_log_size + 4)


def test_status_reports_depths_and_shed_counts(build, make):
    s = build("fifo", max_queue_size=3, overflow_policy="reject_newest")
    for client, model in [("a", "m1"), ("b", "m1"), ("c", "m2"), ("d", "m2")]:
        s.submit(make(client, model))
    status = s.status()
    assert status["queue_len"] == 3 == s.queue_len()
    assert status["models"] == {"m1": 2, "m2": 1}
    assert status["shed"] == {"QUEUE_FULL": 1, "EXPIRED": 0, "SUPERSEDED": 0, "DEADLINE_UNMEETABLE": 0}
    assert status["strategy"] == "fifo" and status["clients"] == 3


def test_arrival_zero_means_now(build, clock):
    from inferential.scheduler import InferenceRequest

    s = build("fifo")
    r = InferenceRequest("a", "m")
    s.submit(r)
    assert r.arrival_ns == clock.now


# --- service-time estimate ------------------------------------------------------


def test_service_time_model_fits_fixed_plus_per_item_cost():
    model = ServiceTimeModel()
    assert model.estimate(4) is None
    for size in (1, 2, 4, 8, 1, 8):
        model.record(size, 3.0 + 0.4 * size)
    # Exact points on a line: the fit is that line (3 ms fixed + 0.4 ms per item).
    assert model.estimate(1, margin=False) == pytest.approx(3.4)
    assert model.estimate(5, margin=False) == pytest.approx(5.0)
    assert model.estimate(5) == pytest.approx(5.0)  # no noise: no margin


def test_service_time_model_adds_a_margin_for_noise():
    model = ServiceTimeModel()
    for ms in (9.0, 11.0, 9.0, 11.0):
        model.record(4, ms)
    assert model.estimate(4) == pytest.approx(10.0 + 2.0)  # mean + 2 x RMS residual


def test_service_time_model_ignores_nonsense():
    model = ServiceTimeModel()
    model.record(0, 5.0)
    model.record(2, float("nan"))
    model.record(2, -1.0)
    assert len(model) == 0


def test_scheduler_estimate_is_per_model(build):
    s = build("fifo")
    s.record_service_time("fast", 1, 1.0)
    s.record_service_time("slow", 1, 50.0)
    assert s.estimate_service_ms("fast", 1) == pytest.approx(1.0)
    assert s.estimate_service_ms("slow", 1) == pytest.approx(50.0)
    assert s.estimate_service_ms("unknown", 1) is None


# --- deadlines ------------------------------------------------------------------


def test_derive_deadline_from_budget():
    assert derive_deadline_ns(1_000, latency_budget_ms=20) == 1_000 + 20 * MS
    assert derive_deadline_ns(1_000) is None


def test_derive_deadline_from_the_robots_wall_clock_deadline():
    # The robot wants it 30 ms after the server's wall clock at arrival; that wins over the budget.
    wall = 1_700_000_000 * MS
    got = derive_deadline_ns(5 * MS, latency_budget_ms=100, deadline_wall_ns=wall + 30 * MS, wall_now_ns=wall)
    assert got == 35 * MS


def test_derive_deadline_from_the_action_queue_running_dry():
    assert derive_deadline_ns(0, latency_budget_ms=100, actions_remaining=5, control_rate_hz=50) == 100 * MS
    # Already dry: one control period, not a deadline in the past.
    assert derive_deadline_ns(0, actions_remaining=0, control_rate_hz=50) == 20 * MS
    # Both given: the earlier wins.
    both = derive_deadline_ns(0, deadline_wall_ns=10 * MS, wall_now_ns=0, actions_remaining=5, control_rate_hz=50)
    assert both == 10 * MS
    # No rate: the action count says nothing.
    assert derive_deadline_ns(0, latency_budget_ms=30, actions_remaining=5) == 30 * MS


def test_reject_admission_sheds_what_load_makes_late_but_runs_a_budget_shorter_than_the_model(build, make, clock):
    s = build("fifo", admission="reject", max_batch_size=1)
    s.record_service_time("m", 1, 10.0)  # 10 ms per request
    for i in range(5):
        assert s.submit(make(f"r{i}", deadline_ms=45 if i < 4 else 100))  # 50 ms of work queued, all on time
    late = make("late", deadline_ms=45)  # meetable on an idle server, not as the fifth of 45 ms deadlines
    assert not s.submit(late)
    assert [(r.client_id, status) for r, status, _ in s.sheds] == [("late", Status.DEADLINE_UNMEETABLE)]
    mismatch = make("slow-model", deadline_ms=5)  # budget shorter than the model's 10 ms alone
    assert s.submit(mismatch) and mismatch.deprioritized
    order = []
    while s.queue_len():
        order += [r.client_id for r in s.next_batch()]
    assert order == ["r0", "r1", "r2", "r3", "r4", "slow-model"]  # after the work that can be on time
    assert len(s.sheds) == 1


def test_dispatch_time_admission_keeps_a_mismatched_request_admitted_before_any_measurement(build, make, clock):
    s = build("fifo", admission="reject", max_batch_size=1)
    early = make("early", deadline_ms=5)  # admitted while nothing is known about the model
    assert s.submit(early)
    s.record_service_time("m", 1, 10.0)
    assert s.next_batch() == [early] or early.deprioritized
    assert not s.sheds
