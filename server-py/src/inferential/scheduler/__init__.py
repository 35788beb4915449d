"""Scheduling: which queued observations run next, on which model, in what batch.

Pure policy over an injected clock; no sockets, no threads. See
:mod:`inferential.scheduler.queued` for the queue rules every built-in shares.
"""

from inferential.scheduler.deadlines import derive_deadline_ns, effective_deadline_ns
from inferential.scheduler.interface import (
    DEADLINE_UNMEETABLE,
    EXPIRED,
    QUEUE_FULL,
    SHED_STATUSES,
    SUPERSEDED,
    QueueFullError,
    Scheduler,
    SchedulerError,
    ShedRecord,
)
from inferential.scheduler.queued import QueuedScheduler
from inferential.scheduler.registry import (
    available_policies,
    available_schedulers,
    create_scheduler,
    get_policy,
    register_policy,
    register_scheduler,
)
from inferential.scheduler.request import InferenceRequest
from inferential.scheduler.service_time import ServiceTimeModel
from inferential.scheduler.strategies import (
    BatchOptimizedScheduler,
    DeadlineAwareScheduler,
    EdfScheduler,
    FifoScheduler,
    PriorityTieredScheduler,
    RoundRobinScheduler,
    score_factors,
)

__all__ = [
    "DEADLINE_UNMEETABLE",
    "EXPIRED",
    "QUEUE_FULL",
    "SHED_STATUSES",
    "SUPERSEDED",
    "BatchOptimizedScheduler",
    "DeadlineAwareScheduler",
    "EdfScheduler",
    "FifoScheduler",
    "InferenceRequest",
    "PriorityTieredScheduler",
    "QueueFullError",
    "QueuedScheduler",
    "RoundRobinScheduler",
    "Scheduler",
    "SchedulerError",
    "ServiceTimeModel",
    "ShedRecord",
    "available_policies",
    "available_schedulers",
    "create_scheduler",
    "derive_deadline_ns",
    "effective_deadline_ns",
    "get_policy",
    "register_policy",
    "register_scheduler",
    "score_factors",
]
