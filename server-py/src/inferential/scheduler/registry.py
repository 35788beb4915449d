"""The strategy and scoring-policy registries, and the factory that builds a scheduler.

A custom scheduler registers itself by name (the README's "Custom Scheduler")::

    @register_scheduler("my_scheduler")
    class MyScheduler(Scheduler):
        def __init__(self, config): ...
        def submit(self, request): ...
        def next_batch(self): ...
        def tick(self): ...
        def status(self): ...
        def queue_len(self): ...
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

from inferential.config.schema import SchedulingConfig
from inferential.scheduler.interface import Clock, Policy, Scheduler
from inferential.scheduler.queued import QueuedScheduler

_SCHEDULERS: dict[str, type[Scheduler]] = {}
_POLICIES: dict[str, Policy] = {}

S = TypeVar("S", bound=type)
P = TypeVar("P", bound=Callable)


def register_scheduler(name: str) -> Callable[[S], S]:
    """Class decorator: make a Scheduler subclass selectable as ``strategy=name``."""

    def decorator(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
            raise TypeError(f"@register_scheduler({name!r}) needs a Scheduler subclass, got {cls!r}")
        _SCHEDULERS[name] = cls
        if "strategy_name" not in cls.__dict__:
            cls.strategy_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def register_policy(name: str) -> Callable[[P], P]:
    """Function decorator: a scoring policy ``score(req) -> float`` for the
    deadline-aware scheduler, selected with ``policy=name``. Higher is served first."""

    def decorator(fn: P) -> P:
        if not callable(fn):
            raise TypeError(f"@register_policy({name!r}) needs a callable")
        _POLICIES[name] = fn
        return fn

    return decorator


def get_policy(name: str) -> Policy:
    try:
        return _POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown scoring policy {name!r}; registered: {sorted(_POLICIES)}") from None


def available_schedulers() -> list[str]:
    return sorted(_SCHEDULERS)


def available_policies() -> list[str]:
    return sorted(_POLICIES)


def create_scheduler(config: Optional[SchedulingConfig] = None, clock: Optional[Clock] = None) -> Scheduler:
    """Build the scheduler ``config.strategy`` names.

    Built-in strategies get ``clock`` (default ``time.monotonic_ns``); a custom
    scheduler is constructed with ``config`` alone, as in the README.
    """
    config = config if config is not None else SchedulingConfig()
    cls = _SCHEDULERS.get(config.strategy)
    if cls is None:
        raise ValueError(f"unknown scheduler strategy {config.strategy!r}; available: {available_schedulers()}")
    if issubclass(cls, QueuedScheduler):
        return cls(config, clock=clock or time.monotonic_ns)
    return cls(config)  # type: ignore[call-arg]
