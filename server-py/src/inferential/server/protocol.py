"""Bytes <-> messages on the server side. Pure: no sockets, no clocks, no state.

``decode_request`` turns the frames a ROUTER received into a validated
observation or raises ``Rejection`` carrying the status and a precise reason;
``encode_reply`` builds the frames of a ModelResponse.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential.wire import (
    PROTOCOL_VERSION,
    RETRYABLE,
    Limits,
    WireError,
    check_metadata,
    decode_tensors,
    join_payload,
    pack_tensors,
    status_name,
)


class Rejection(Exception):
    """An observation answered with an error status instead of being scheduled."""

    def __init__(self, status: int, message: str, obs: Optional[pb.Observation] = None) -> None:
        super().__init__(f"{status_name(status)}: {message}")
        self.status = status
        self.message = message
        self.obs = obs


@dataclass
class Decoded:
    obs: pb.Observation
    inputs: dict[str, Any]  # tensors (numpy views over the frames) and metadata strings
    payload_bytes: int


def _buffer(frame: Any) -> memoryview | bytes:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _nbytes(buf: Any) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def decode_request(frames: Sequence[Any], limits: Limits) -> tuple[bytes, Decoded]:
    """(identity, decoded observation) from ``[identity, b"", envelope, *payload]``.

    Raises Rejection(INVALID_REQUEST, ...) for anything malformed. When the
    envelope parsed, the rejection carries it so the reply can echo its ids.
    """
    if len(frames) < 1:
        raise Rejection(pb.INVALID_REQUEST, "empty message")
    buffers = [_buffer(f) for f in frames]
    identity = bytes(buffers[0])
    if len(buffers) < 3:
        raise Rejection(pb.INVALID_REQUEST, f"expected [b'', envelope, payload...], got {len(frames) - 1} frames")
    if _nbytes(buffers[1]) != 0:
        raise Rejection(pb.INVALID_REQUEST, "the first frame must be the empty delimiter")
    segments = buffers[3:]
    payload_bytes = sum(_nbytes(b) for b in segments)
    total = payload_bytes + _nbytes(buffers[2])
    if total > limits.max_message_bytes:
        raise Rejection(pb.INVALID_REQUEST, f"message of {total} bytes exceeds the {limits.max_message_bytes}-byte limit")
    obs = pb.Observation()
    try:
        obs.ParseFromString(buffers[2])
    except Exception as err:  # DecodeError and friends
        raise Rejection(pb.INVALID_REQUEST, f"envelope is not a valid Observation: {err}") from None
    return identity, decode_observation(obs, segments, limits, payload_bytes)


_HINTS = ("urgency", "latency_budget_ms", "control_rate_hz")


def decode_observation(
    obs: pb.Observation, segments: Sequence[memoryview | bytes], limits: Limits, payload_bytes: Optional[int] = None
) -> Decoded:
    if not obs.client.id:
        raise Rejection(pb.INVALID_REQUEST, "client.id is empty", obs)
    if not obs.model_id:
        raise Rejection(pb.INVALID_REQUEST, "model_id is empty", obs)
    # One comparison per hint in the common case; NaN fails 0 <= x < inf as it should.
    if not (0.0 <= obs.urgency < math.inf and 0.0 <= obs.latency_budget_ms < math.inf and 0.0 <= obs.control_rate_hz < math.inf):
        for name in _HINTS:
            value = getattr(obs, name)
            if not math.isfinite(value):
                raise Rejection(pb.INVALID_REQUEST, f"{name} is {value}", obs)
            if value < 0:
                raise Rejection(pb.INVALID_REQUEST, f"{name} is negative ({value})", obs)
    metadata = obs.metadata
    try:
        if metadata:
            check_metadata(metadata, limits)
        tensors = decode_tensors(obs.tensors, segments, limits)
    except WireError as err:
        raise Rejection(pb.INVALID_REQUEST, str(err), obs) from None
    if metadata:
        inputs: dict[str, Any] = dict(metadata)
        for key in tensors:
            if key in inputs:
                raise Rejection(pb.INVALID_REQUEST, f"'{key}' is both a tensor and a metadata key", obs)
        inputs.update(tensors)
    else:
        inputs = tensors
    if payload_bytes is None:
        payload_bytes = sum(_nbytes(s) for s in segments)
    return Decoded(obs=obs, inputs=inputs, payload_bytes=payload_bytes)


_boot = os.urandom(4).hex()
_reply_counter = itertools.count(1)


@dataclass
class ReplyTiming:
    queue_wait_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    batch_size: int = 0


def encode_reply(
    *,
    identity: bytes,
    client_id: str,
    model_id: str,
    request_id: int,
    protocol_version: int,
    status: int,
    error: str = "",
    outputs: Optional[Mapping[str, Any]] = None,
    timing: Optional[ReplyTiming] = None,
    observation_timestamp_ns: int = 0,
    now_ns: int = 0,
) -> list[Any]:
    """The frames ``[identity, b"", envelope, *payload]`` of one reply.

    1.x peers (protocol_version 0) get exactly one payload frame, and the status
    and error mirrored in metadata, since they cannot read the new fields.
    """
    resp = pb.ModelResponse()
    resp.client.id = client_id
    resp.response_id = f"{_boot}-{next(_reply_counter):x}"
    resp.timestamp_ns = now_ns
    resp.model_id = model_id
    resp.request_id = request_id
    resp.status = status
    resp.retryable = status in RETRYABLE
    resp.protocol_version = PROTOCOL_VERSION
    resp.observation_timestamp_ns = observation_timestamp_ns
    if error:
        resp.error = error
    if timing is not None:
        resp.inference_latency_ms = timing.inference_ms
        t = resp.timing
        t.queue_wait_ms = timing.queue_wait_ms
        t.inference_ms = timing.inference_ms
        t.total_ms = timing.total_ms
        t.batch_size = timing.batch_size
    arrays: list[tuple[str, Any]] = []
    for key, value in (outputs or {}).items():
        if isinstance(value, str):
            resp.metadata[key] = value
        else:
            arrays.append((key, value))
    payload = pack_tensors(arrays, resp.tensors.add) if arrays else []
    if protocol_version < 2:
        if status != pb.OK:
            resp.metadata["status"] = status_name(status)
            resp.metadata["error"] = error
        payload = [join_payload(payload)] if payload else [b""]
    return [identity, b"", resp.SerializeToString(), *payload]


def outputs_are_sendable(outputs: Mapping[str, Any]) -> Optional[str]:
    """None when every output can go on the wire, else the reason it cannot."""
    for key, value in outputs.items():
        if isinstance(value, str):
            continue
        if not isinstance(value, np.ndarray):
            return f"output '{key}' is a {type(value).__name__}, not an array or a string"
        if value.dtype.hasobject:
            return f"output '{key}' has dtype object"
    return None
