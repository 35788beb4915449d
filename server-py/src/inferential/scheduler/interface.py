"""The scheduler interface the server drives, and the statuses a scheduler sheds with.

A scheduler receives requests (``submit``) and hands out batches (``next_batch``).
The built-in strategies share their queue mechanics through
:class:`inferential.scheduler.queued.QueuedScheduler`; a custom scheduler only needs
the five abstract methods of :class:`Scheduler` (see the README's "Custom
Scheduler"). Every other method has a default here, so the server calls them all
unconditionally. Registering and building schedulers: :mod:`.registry`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections import deque
from typing import Callable, Iterable, NamedTuple, Optional

from inferential.scheduler.request import InferenceRequest
from inferential.wire import Status

Clock = Callable[[], int]
"""A monotonic clock in nanoseconds (``time.monotonic_ns`` or a test's fake)."""

Policy = Callable[[InferenceRequest], float]
"""A scoring policy: higher scores are served first."""

# A scheduler speaks the wire's vocabulary: what it sheds is answered with that status.
QUEUE_FULL = Status.QUEUE_FULL
EXPIRED = Status.EXPIRED
SUPERSEDED = Status.SUPERSEDED
DEADLINE_UNMEETABLE = Status.DEADLINE_UNMEETABLE
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
    status: Status
    reason: str


class Scheduler(ABC):
    """The interface the server drives.

    Only the five abstract methods are required. The other methods have
    defaults a custom scheduler may keep: no time-driven wakeups, retries by
    submitting again (up to ``max_retries``), ``drain`` by pulling batches,
    ``adopt`` by submitting. The built-ins
    (:class:`~inferential.scheduler.queued.QueuedScheduler`) override them all.
    """

    #: Bound of the default ``shed_log``.
    shed_log_size: int = 1000
    #: How many times a request whose batch failed is run again. The server sets it
    #: from ``scheduling.max_retries`` on every scheduler it builds.
    max_retries: int = 0

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

    def on_shed(self, request: InferenceRequest, status: Status, reason: str) -> None:
        """Called for every request the scheduler drops without running it; the
        robot is answered with ``status`` (a :class:`~inferential.wire.Status`).

        The server replaces this attribute with a function that answers the robot;
        by default the shed is remembered in the bounded ``shed_log``.
        """
        log = self.__dict__.get("shed_log")
        if log is None:
            log = self.__dict__["shed_log"] = deque(maxlen=self.shed_log_size)
        log.append(ShedRecord(request.client_id, request.model_id, request.request_id, request.seq, status, reason))

    def next_wakeup_ns(self) -> Optional[int]:
        """Earliest clock time at which ``tick``/``next_batch`` can produce something
        new without a new submit; None when nothing is time-driven."""
        return None

    def requeue(self, request: InferenceRequest) -> bool:
        """Put back a request whose dispatch failed, counting a retry. False when it
        has used up ``max_retries``: the caller answers it (MODEL_ERROR)."""
        request.retries += 1
        if request.retries > self.max_retries:
            return False
        self.submit(request)
        return True

    def record_service_time(self, model_id: str, batch_size: int, ms: float) -> None:  # noqa: B027 (optional hook)
        """Feedback: a batch of ``batch_size`` for ``model_id`` took ``ms``."""

    def set_model_limits(  # noqa: B027 (optional hook)
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


_TAKES_READY: dict[type[Scheduler], bool] = {}


def takes_ready_models(cls: type[Scheduler]) -> bool:
    """Whether ``cls.next_batch`` takes an argument (the set of ready models): the
    one rule for every caller (README-style schedulers take none)."""
    known = _TAKES_READY.get(cls)
    if known is None:
        params = list(inspect.signature(cls.next_batch).parameters.values())[1:]
        known = _TAKES_READY[cls] = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params
        )
    return known
