"""The reply statuses: the proto's Status enum as a Python IntEnum, and which are retryable."""

from __future__ import annotations

import enum

from inferential._proto import inferential_pb2 as pb
from inferential._proto.tables import RETRYABLE as RETRYABLE_BY_STATUS
from inferential._proto.tables import STATUS_NAME

STATUS_NAMES: dict[int, str] = dict(STATUS_NAME)

# Derived from the proto enum, never pasted: a new status needs no edit here.
Status = enum.IntEnum("Status", {name: number for number, name in STATUS_NAME.items()}, module=__name__)  # type: ignore[misc]

# Whether sending again (a fresh observation) can succeed with nothing else changed,
# generated from the proto. v2 servers also send it in ModelResponse.retryable, so the
# client reads this table only for 1.x replies. A status missing from it (one this
# client does not know) is not retryable.
RETRYABLE: frozenset[int] = frozenset(number for number, retry in RETRYABLE_BY_STATUS.items() if retry)


def status_name(status: int) -> str:
    """The proto name of a status, ``Status(N)`` for a value this client does not know."""
    return STATUS_NAMES.get(status, f"Status({status})")


def is_error(status: int) -> bool:
    """Every status but OK and STATUS_UNSPECIFIED (which 1.x servers send for OK) is a failure,
    including values this client does not know."""
    return status not in (pb.OK, pb.STATUS_UNSPECIFIED)
