"""deadline_aware: every factor of the score is live when the batch is chosen."""

from __future__ import annotations

import math

import pytest

from inferential.config.schema import SchedulingConfig
from inferential.scheduler import DeadlineAwareScheduler, score_factors


def test_a_requests_score_rises_as_it_waits(build, make, clock):
    s = build("deadline_aware")
    r = make("a", deadline_ms=40)
    s.submit(r)
    scores = []
    for _ in range(3):
        r.refresh(clock.now)
        scores.append(s.policy(r))
        clock.advance_ms(10)
    assert scores[0] < scores[1] < scores[2]
    assert scores[1] - scores[0] == pytest.approx(15.0 * 10 / 40)  # age_weight x 10 ms of a 40 ms allowance


def test_an_old_request_overtakes_a_newer_more_urgent_one(build, make, clock):
    s = build("deadline_aware", max_batch_size=1)
    s.submit(make("old", urgency=0.2, deadline_ms=20))
    clock.advance_ms(20)  # age factor saturates: +15
    s.submit(make("new", urgency=0.6, deadline_ms=20))  # +10 from urgency, not enough
    assert s.next_batch()[0].client_id == "old"


def test_the_age_is_scored_when_picked_not_when_submitted(build, make, clock):
    s = build("deadline_aware", max_batch_size=1)
    tight = make("tight", urgency=0.5, deadline_ms=20)
    loose = make("loose", urgency=0.6, deadline_ms=100)
    s.submit(tight)
    s.submit(loose)
    # Scored at submit, "loose" wins on urgency (+2.5). Ten ms later "tight" has used
    # half of its allowance (+7.5) and "loose" a tenth (+1.5).
    clock.advance_ms(10)
    assert s.next_batch()[0] is tight
    assert tight.age_ms == pytest.approx(10.0)


def test_cadence_term_is_nonzero_for_a_robot_overdue_against_its_ema(make, clock):
    on_time = make("steady", expected_interval_ms=20.0, since_previous_ms=20.0)
    overdue = make("overdue", expected_interval_ms=20.0, since_previous_ms=30.0)
    on_time.refresh(clock.now)
    overdue.refresh(clock.now)
    assert score_factors(on_time, 10, 5000)[0] == 0.0
    assert score_factors(overdue, 10, 5000)[0] == pytest.approx(0.5)
    clock.advance_ms(5)  # waiting in the queue makes it later still
    overdue.refresh(clock.now)
    assert score_factors(overdue, 10, 5000)[0] == pytest.approx(0.75)


def test_an_overdue_robot_is_served_before_an_on_time_one(build, make):
    s = build("deadline_aware", max_batch_size=1)
    s.submit(make("steady", expected_interval_ms=20.0, since_previous_ms=20.0))
    s.submit(make("overdue", expected_interval_ms=20.0, since_previous_ms=35.0))
    assert s.next_batch()[0].client_id == "overdue"


def test_steps_factor_grows_as_the_trajectory_ends(make):
    factors = [score_factors(make(steps_remaining=n), 10, 5000)[3] for n in (100, 10, 2, 0)]
    assert factors == sorted(factors) and factors[-1] == 1.0
    assert score_factors(make(steps_remaining=None), 10, 5000)[3] == 0.0


def test_priority_factor_is_one_at_priority_zero_and_zero_at_max(make):
    assert score_factors(make(priority=0), 10, 5000)[4] == 1.0
    assert score_factors(make(priority=10), 10, 5000)[4] == 0.0
    assert score_factors(make(priority=5), 10, 5000)[4] == pytest.approx(0.5)


def test_every_factor_stays_in_unit_range(make, clock):
    r = make(urgency=1.0, priority=0, steps_remaining=0, expected_interval_ms=1.0, since_previous_ms=100.0)
    clock.advance_ms(10_000)
    r.refresh(clock.now)
    assert all(0.0 <= f <= 1.0 for f in score_factors(r, 10, 5000))


def test_age_allowance_falls_back_to_budget_then_ttl(make, clock):
    with_budget = make(deadline_ms=None, latency_budget_ms=20.0)
    no_budget = make(deadline_ms=None, latency_budget_ms=0.0)
    clock.advance_ms(10)
    for r in (with_budget, no_budget):
        r.refresh(clock.now)
    assert score_factors(with_budget, 10, 100)[2] == pytest.approx(0.5)
    assert score_factors(no_budget, 10, 100)[2] == pytest.approx(0.1)


def test_weights_come_from_the_config(clock, make):
    urgency_only = SchedulingConfig(
        strategy="deadline_aware", cadence_weight=0, urgency_weight=1, age_weight=0, steps_weight=0, priority_weight=0
    )
    s = DeadlineAwareScheduler(urgency_only, clock=clock)
    r = make(urgency=0.7, priority=0, steps_remaining=0)
    r.refresh(clock.now)
    assert s.policy(r) == pytest.approx(0.7)


def test_urgency_is_clamped_and_nan_counts_as_zero(build, make):
    s = build("deadline_aware", max_batch_size=1)
    nan, big, honest = make("nan", urgency=math.nan), make("big", urgency=7.0), make("honest", urgency=0.5)
    for r in (nan, big, honest):
        s.submit(r)
    assert (nan.urgency, big.urgency) == (0.0, 1.0)
    assert [s.next_batch()[0].client_id for _ in range(3)] == ["big", "honest", "nan"]


def test_priority_is_clamped_into_range(build, make):
    s = build("fifo", max_priority=5)
    low, negative = make(priority=99), make(priority=-3)
    s.submit(low)
    s.submit(negative)
    assert (low.priority, negative.priority) == (5, 0)


def test_a_policy_returning_nan_ranks_that_request_last(clock, make):
    from inferential import register_policy

    @register_policy("nan_for_a")
    def score(req):
        return math.nan if req.client_id == "a" else req.urgency

    s = DeadlineAwareScheduler(SchedulingConfig(policy="nan_for_a", max_batch_size=1), clock=clock)
    for client, urgency in (("a", 1.0), ("b", 0.1), ("c", 0.2)):
        s.submit(make(client, urgency=urgency))
    assert [s.next_batch()[0].client_id for _ in range(3)] == ["c", "b", "a"]
