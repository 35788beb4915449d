"""Every reply checked against the protocol's limits before it is sent.

A receiver drops a message over its limits (docs/protocol.md §7); for a message
over ``max_message_bytes`` libzmq itself ends the connection (ZMQ_MAXMSGSIZE) and a
client may never get it back. So a model output the robot could not accept is
answered MODEL_ERROR, naming the rule, instead of being sent. The rules are the
client's own (``inferential.wire``), applied to the frames as encoded.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from inferential.wire import Limits, check_metadata, split_frames
from inferential.wire.limits import utf8_len


def reply_violation(frames: Sequence[Any], outputs: Optional[Mapping[str, Any]], limits: Limits) -> Optional[str]:
    """None when a client with ``limits`` accepts the reply ``frames`` (``[identity, b"",
    envelope, *payload]``, built from ``outputs``), else the rule it breaks."""
    try:
        split_frames(frames[1:], limits)  # frame count and total size
        if outputs:
            metadata = {}
            tensors = 0
            for key, value in outputs.items():
                if isinstance(value, str):
                    metadata[key] = value
                    continue
                tensors += 1
                if utf8_len(key) > limits.max_key_bytes:
                    return f"output key '{key[:40]}' is longer than {limits.max_key_bytes} bytes"
                ndim = getattr(value, "ndim", 0)
                if ndim > limits.max_dims:
                    return f"output '{key}' has {ndim} dimensions, limit is {limits.max_dims}"
            if tensors > limits.max_tensors:
                return f"{tensors} output tensors, limit is {limits.max_tensors}"
            if metadata:
                check_metadata(metadata, limits)
    except ValueError as err:  # WireError
        return str(err)
    return None
