"""The wire protocol's data rules (docs/protocol.md), shared by the client and the server.

A message on the wire is a list of ZMQ frames::

    robot -> server (DEALER):   [b"", envelope, payload_0, payload_1, ...]
    server -> robot (ROUTER):   [identity, b"", envelope, payload_0, ...]

``dtypes``: the dtype table; ``tensors``: tensors <-> payload frames; ``limits``: the
bounds and the frame and string checks; ``status``: the status enum and retry table.
Nothing here touches a socket or a clock.
"""

from __future__ import annotations

from inferential.errors import WireError
from inferential.wire.dtypes import DTYPE_TO_NUMPY, ITEM_SIZE, BFloat16, dtype_name, itemsize, wire_dtype
from inferential.wire.limits import (
    DEFAULT_LIMITS,
    UINT64_MAX,
    Limits,
    check_metadata,
    check_text,
    split_frames,
)
from inferential.wire.status import RETRYABLE, STATUS_NAMES, Status, is_error, status_name
from inferential.wire.tensors import SMALL_TENSOR_BYTES, decode_tensors, join_payload, pack_tensors

PROTOCOL_VERSION = 2

# Discovery (docs/protocol.md §12): an observation with an empty model_id and this metadata
# key asks the server for its protocol version and limits.
DESCRIBE_KEY = "inferential.describe"

__all__ = [
    "DEFAULT_LIMITS",
    "DESCRIBE_KEY",
    "DTYPE_TO_NUMPY",
    "ITEM_SIZE",
    "PROTOCOL_VERSION",
    "RETRYABLE",
    "SMALL_TENSOR_BYTES",
    "STATUS_NAMES",
    "UINT64_MAX",
    "BFloat16",
    "Limits",
    "Status",
    "WireError",
    "check_metadata",
    "check_text",
    "decode_tensors",
    "dtype_name",
    "is_error",
    "itemsize",
    "join_payload",
    "pack_tensors",
    "split_frames",
    "status_name",
    "wire_dtype",
]
