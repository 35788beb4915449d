"""Fixtures for the scheduler tests: a fake clock, a request factory, a scheduler factory."""

from __future__ import annotations

import itertools

import pytest
from sched_fakes import MS, FakeClock

from inferential.config.schema import SchedulingConfig
from inferential.scheduler import InferenceRequest, create_scheduler


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock: FakeClock):
    """``make(client, model="m", **fields)``: a request arriving now, with a 50 ms budget deadline
    unless ``deadline_ms`` (relative to now, None for no deadline) is given."""
    ids = itertools.count(1)

    def factory(
        client: str = "r1", model: str = "m", *, deadline_ms: float | None = 50.0, **fields
    ) -> InferenceRequest:
        fields.setdefault("arrival_ns", clock.now)
        fields.setdefault("request_id", next(ids))
        if "deadline_ns" not in fields:
            fields["deadline_ns"] = None if deadline_ms is None else clock.now + int(deadline_ms * MS)
        return InferenceRequest(client_id=client, model_id=model, **fields)

    return factory


@pytest.fixture
def build(clock: FakeClock):
    """``build(strategy, **config)``: a built-in scheduler on the fake clock whose sheds are
    collected in ``scheduler.sheds`` as (request, status, reason)."""

    def factory(strategy: str = "fifo", **config):
        # Admission control is off unless a test turns it on: strategy tests check ordering alone.
        config.setdefault("admission", "off")
        scheduler = create_scheduler(SchedulingConfig(strategy=strategy, **config), clock=clock)
        scheduler.sheds = []
        scheduler.on_shed = lambda request, status, reason: scheduler.sheds.append((request, status, reason))
        return scheduler

    return factory
