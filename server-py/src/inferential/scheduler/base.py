"""The published 1.x import path of the scheduler's public names.

``from inferential.scheduler.base import Scheduler, register_scheduler, create_scheduler``
keeps working; the names live in :mod:`.interface` (the contract) and
:mod:`.registry` (registries and the factory).
"""

from inferential.scheduler.interface import (
    DEADLINE_UNMEETABLE,
    EXPIRED,
    QUEUE_FULL,
    SHED_STATUSES,
    SUPERSEDED,
    Clock,
    Policy,
    QueueFullError,
    Scheduler,
    SchedulerError,
    ShedRecord,
)
from inferential.scheduler.registry import (
    available_policies,
    available_schedulers,
    create_scheduler,
    get_policy,
    register_policy,
    register_scheduler,
)

__all__ = [
    "DEADLINE_UNMEETABLE",
    "EXPIRED",
    "QUEUE_FULL",
    "SHED_STATUSES",
    "SUPERSEDED",
    "Clock",
    "Policy",
    "QueueFullError",
    "Scheduler",
    "SchedulerError",
    "ShedRecord",
    "available_policies",
    "available_schedulers",
    "create_scheduler",
    "get_policy",
    "register_policy",
    "register_scheduler",
]
