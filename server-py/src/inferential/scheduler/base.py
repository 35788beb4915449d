"""The scheduler interface, the strategy and scoring-policy registries, and the factory.

A scheduler receives requests (``submit``) and hands out batches (``next_batch``).
The built-in strategies share their queue mechanics through
:class:`inferential.scheduler.queued.QueuedScheduler`; a custom scheduler only needs
the five methods of :class:`Scheduler` (see the README's "Custom Scheduler")::

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

import inspect
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple, Optional, TypeVar

from inferential.scheduler.request import InferenceRequest

if TYPE_CHECKING:
    from inferential.config.schema import SchedulingConfig

Clock = Callable[[], int]
"""A monotonic clock in nanoseconds (``time.monotonic_ns`` or a test's fake)."""

Policy = Callable[[InferenceRequest], float]
"""A scoring policy: higher scores are served first."""

# Shed status names; the server maps them onto the wire's Status enum.
QUEUE_FULL = "QUEUE_FULL"
EXPIRED = "EXPIRED"
SUPERSEDED = "SUPERSEDED"
DEADLINE_UNMEETABLE = "DEADLINE_UNMEETABLE"
SHED_STATUSES = (QUEUE_FULL, EXPIRED, SUPERSEDED, DEADLINE_UNMEETABLE)


class SchedulerError(Exception):
    """Root of the scheduler's exceptions."""


class QueueFullError(SchedulerError):
    """A scheduler refused a request for lack of room.

    The built-in schedulers never raise it: they report every refusal through
    ``on_shed`` (status ``QUEUE_FULL``) and ``submit`` returns False. A custom
    scheduler may raise it from ``submit``; the server then answers QUEUE_FULL.
    """

    def __init__(self, request: InferenceRequest, reason: str = "queue full") -> None:
        super().__init__(f"{reason}: request {request.request_id} from client {request.client_id!r}")
        self.request = request
        self.reason = reason


class ShedRecord(NamedTuple):
    """What the default ``on_shed`` remembers (the request itself is not kept,
    so a standalone scheduler never pins large observation arrays)."""

    client_id: str
    model_id: str
    request_id: int
    seq: int
    status: str
    reason: str


class Scheduler(ABC):
    """The interface the server drives.

    Only the five abstract methods are required. The other methods have
    defaults a custom scheduler may keep: no time-driven wakeups, no retries,
    ``drain`` by pulling batches, ``adopt`` by submitting. The built-ins
    (:class:`~inferential.scheduler.queued.QueuedScheduler`) override them all.
    """

    #: Bound of the default ``shed_log``.
    shed_log_size: int = 1000

    @abstractmethod
    def submit(self, request: InferenceRequest) -> None:
        """Queue a request."""

    @abstractmethod
    def next_batch(self) -> list[InferenceRequest]:
        """The next batch to run; an empty list when nothing is ready."""

    @abstractmethod
    def tick(self) -> None:
        """Apply time-driven changes (expiry, flush timers)."""

    @abstractmethod
    def status(self) -> dict:
        """A JSON-able snapshot for metrics and /healthz."""

    @abstractmethod
    def queue_len(self) -> int:
        """Requests currently queued."""

    # --- optional, with defaults -------------------------------------------------

    def on_shed(self, request: InferenceRequest, status: str, reason: str) -> None:
        """Called for every request the scheduler drops without running it.

        The server replaces this attribute with a function that answers the robot;
        by default the shed is remembered in the bounded ``shed_log``.
        """
        log = self.__dict__.get("shed_log")
        if log is None:
            log = self.__dict__["shed_log"] = deque(maxlen=self.shed_log_size)
        log.append(
            ShedRecord(request.client_id, request.model_id, request.request_id, request.seq, status, reason)
        )

    def next_wakeup_ns(self) -> Optional[int]:
        """Earliest clock time at which ``tick``/``next_batch`` can produce something
        new without a new submit; None when nothing is time-driven."""
        return None

    def requeue(self, request: InferenceRequest) -> bool:
        """Put back a request whose dispatch failed. False: not retried, the caller
        answers it (MODEL_ERROR)."""
        return False

    def record_service_time(self, model_id: str, batch_size: int, ms: float) -> None:
        """Feedback: a batch of ``batch_size`` for ``model_id`` took ``ms``."""

    def set_model_limits(
        self, model_id: str, max_batch_size: Optional[int] = None, concurrency: Optional[int] = None
    ) -> None:
        """Per-model limits (largest batch, batches that can run at once)."""

    def drain(self) -> list[InferenceRequest]:
        """Remove and return everything queued (shutdown, strategy swap)."""
        out: list[InferenceRequest] = []
        while self.queue_len() > 0:
            batch = self.next_batch()
            if not batch:
                break
            out.extend(batch)
        return out

    def adopt(self, requests: Iterable[InferenceRequest]) -> None:
        """Take over requests drained from another scheduler."""
        for request in requests:
            self.submit(request)

    def cancel_client(self, client_id: str) -> list[InferenceRequest]:
        """Remove and return a robot's queued requests (it disconnected)."""
        return []


def next_batch_for(scheduler: Scheduler, ready_models: Optional[set[str]] = None) -> list[InferenceRequest]:
    """Ask any scheduler for its next batch, passing ``ready_models`` when it takes them.

    The built-ins take the set of models whose executor is free and return one
    model's batch. A custom scheduler written to the README's ``next_batch(self)``
    is called without it; its batch may then mix models or name a busy one.
    """
    if _takes_ready_models(type(scheduler)):
        return scheduler.next_batch(ready_models)  # type: ignore[call-arg]
    return scheduler.next_batch()


_TAKES_READY: dict[type, bool] = {}


def _takes_ready_models(cls: type) -> bool:
    known = _TAKES_READY.get(cls)
    if known is None:
        params = list(inspect.signature(cls.next_batch).parameters.values())[1:]
        known = _TAKES_READY[cls] = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
        )
    return known


# --- registries -------------------------------------------------------------------

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


def create_scheduler(config: Optional["SchedulingConfig"] = None, clock: Optional[Clock] = None) -> Scheduler:
    """Build the scheduler ``config.strategy`` names.

    Built-in strategies get ``clock`` (default ``time.monotonic_ns``); a custom
    scheduler is constructed with ``config`` alone, as in the README.
    """
    from inferential.config.schema import SchedulingConfig
    from inferential.scheduler.queued import QueuedScheduler

    config = config if config is not None else SchedulingConfig()
    cls = _SCHEDULERS.get(config.strategy)
    if cls is None:
        raise ValueError(
            f"unknown scheduler strategy {config.strategy!r}; available: {available_schedulers()}"
        )
    if issubclass(cls, QueuedScheduler):
        return cls(config, clock=clock or time.monotonic_ns)
    return cls(config)  # type: ignore[call-arg]
