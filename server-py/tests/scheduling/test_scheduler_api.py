"""The public surface: README examples, the registries, the factory, exports."""

from __future__ import annotations

import pytest

from inferential.config.schema import SchedulingConfig
from inferential.scheduler import (
    BatchOptimizedScheduler,
    DeadlineAwareScheduler,
    EdfScheduler,
    FifoScheduler,
    InferenceRequest,
    PriorityTieredScheduler,
    QueuedScheduler,
    QueueFullError,
    RoundRobinScheduler,
    Scheduler,
    available_schedulers,
    create_scheduler,
)
from inferential.scheduler.interface import takes_ready_models
from inferential.wire import Status


def test_readme_custom_scheduler_runs_verbatim_through_the_factory(readme_custom_scheduler):
    assert "my_scheduler" in available_schedulers()

    scheduler = create_scheduler(SchedulingConfig(strategy="my_scheduler", max_retries=1))
    assert type(scheduler) is readme_custom_scheduler
    requests = [InferenceRequest(client_id=f"r{i}", model_id="m") for i in range(10)]
    for r in requests:
        scheduler.submit(r)
    assert scheduler.queue_len() == 10
    assert not takes_ready_models(type(scheduler))  # the server calls it without ready_models
    assert scheduler.next_batch() == requests[:8]
    assert scheduler.status() == {"queue_len": 2}
    # The interface defaults give it the rest of what the server calls.
    assert scheduler.next_wakeup_ns() is None
    scheduler.max_retries = 1  # as the server sets it from scheduling.max_retries
    assert scheduler.requeue(requests[0]) is True and requests[0].retries == 1
    assert scheduler.requeue(requests[0]) is False  # retries used up: the caller answers it
    assert scheduler.drain() == requests[8:] + requests[:1]
    scheduler.adopt(requests[:3])
    assert scheduler.queue_len() == 3
    scheduler.on_shed(requests[0], Status.QUEUE_FULL, "custom shed")
    assert scheduler.shed_log[-1].status == Status.QUEUE_FULL


def test_readme_standalone_usage_with_the_default_clock():
    from inferential.config.schema import SchedulingConfig as Config
    from inferential.scheduler.base import create_scheduler as factory

    scheduler = factory(Config(strategy="batch_optimized", max_batch_size=2))
    first, second = InferenceRequest("a", "m"), InferenceRequest("b", "m")
    assert scheduler.submit(first) is True
    assert scheduler.next_batch() == []  # one request: waits for company or max_wait_ms
    scheduler.submit(second)
    assert scheduler.next_batch() == [first, second]


def test_readme_custom_policy_via_top_level_import(clock, make):
    from inferential import InferenceRequest as TopRequest
    from inferential import register_policy

    assert TopRequest is InferenceRequest

    @register_policy("safety_first")
    def score(req: InferenceRequest) -> float:
        if req.urgency > 0.9:
            return 1000.0
        return req.priority * 10.0

    scheduler = create_scheduler(
        SchedulingConfig(strategy="deadline_aware", policy="safety_first", max_batch_size=1), clock=clock
    )
    calm_low, calm_high, alarm = make("a", priority=5), make("b", priority=1), make("c", urgency=0.95, priority=9)
    for r in (calm_low, calm_high, alarm):
        scheduler.submit(r)
    assert [scheduler.next_batch()[0] for _ in range(3)] == [alarm, calm_low, calm_high]


def test_builtin_strategies_are_registered_and_built_on_the_injected_clock(clock):
    expected = {
        "fifo": FifoScheduler,
        "deadline_aware": DeadlineAwareScheduler,
        "batch_optimized": BatchOptimizedScheduler,
        "priority_tiered": PriorityTieredScheduler,
        "round_robin": RoundRobinScheduler,
        "edf": EdfScheduler,
    }
    assert set(expected) <= set(available_schedulers())
    for name, cls in expected.items():
        scheduler = create_scheduler(SchedulingConfig(strategy=name), clock=clock)
        assert type(scheduler) is cls and isinstance(scheduler, QueuedScheduler)
        assert takes_ready_models(cls)
        assert scheduler.clock is clock
        assert scheduler.status()["strategy"] == name


def test_default_strategy_is_edf():
    # edf since issue 16 (measured best under overload); deadline_aware before.
    assert isinstance(create_scheduler(), EdfScheduler)


def test_unknown_strategy_and_policy_are_rejected_by_name():
    with pytest.raises(ValueError, match="no_such_strategy"):
        create_scheduler(SchedulingConfig(strategy="no_such_strategy"))
    with pytest.raises(ValueError, match="no_such_policy"):
        create_scheduler(SchedulingConfig(strategy="deadline_aware", policy="no_such_policy"))


def test_register_scheduler_refuses_non_schedulers():
    from inferential.scheduler import register_scheduler

    with pytest.raises(TypeError):
        register_scheduler("bad")(object)


def test_package_exports_the_documented_names():
    import inferential
    import inferential.scheduler as pkg

    for name in (
        "Scheduler",
        "QueuedScheduler",
        "register_scheduler",
        "create_scheduler",
        "available_schedulers",
        "register_policy",
        "InferenceRequest",
        "QueueFullError",
        "derive_deadline_ns",
    ):
        assert hasattr(pkg, name), name
    assert inferential.Scheduler is Scheduler
    assert inferential.create_scheduler is create_scheduler
    error = QueueFullError(InferenceRequest("r1", "m", request_id=7))
    assert error.request.request_id == 7 and "r1" in str(error)
