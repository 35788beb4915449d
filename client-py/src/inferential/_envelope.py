"""The client's codec: one observation -> frames, frames -> one reply. Pure: no sockets,
no clock (the caller passes the timestamp and the round trip it measured).

Shared by the sync and the asyncio client; the conformance testee's ``encode``/``decode``
commands call it directly.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential.errors import WireError
from inferential.options import ObservationHints
from inferential.result import ChunkInfo, Result, Timing
from inferential.wire import DESCRIBE_KEY, PROTOCOL_VERSION, RETRYABLE, BFloat16, Limits, Status, wire_dtype
from inferential.wire.limits import check_metadata, check_text, nbytes, split_frames
from inferential.wire.tensors import decode_tensors, join_payload, pack_tensors

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1

# Defaults a second client must copy (docs/protocol.md): a model handle's budget and priority.
DEFAULT_LATENCY_BUDGET_MS = 50.0
DEFAULT_PRIORITY = 1

# --- observation -> frames ----------------------------------------------------


def _uint(name: str, value: Any, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be in [0, {maximum}], got {value}")
    return value


def _nonneg_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def split_inputs(
    inputs: Mapping[str, Any], limits: Limits
) -> tuple[list[tuple[str, Union[np.ndarray, BFloat16]]], dict[str, str]]:
    """Tensors (numpy arrays, BFloat16) and metadata (str) from observe()'s keywords.

    Anything else raises TypeError naming the keyword: nothing is dropped silently.
    """
    tensors: list[tuple[str, Union[np.ndarray, BFloat16]]] = []
    metadata: dict[str, str] = {}
    for key, value in inputs.items():
        if isinstance(value, np.ndarray):
            try:
                wire_dtype(value)
            except TypeError as err:
                raise TypeError(f"observe(): tensor {key!r}: {err}") from None
            if value.ndim > limits.max_dims:
                raise WireError(f"tensor '{key}'", f"{value.ndim} dimensions, limit is {limits.max_dims}")
            # numpy keeps whatever byte a bool array was built from (np.frombuffer, views);
            # the wire allows only 0 and 1.
            if value.dtype.kind == "b" and value.size and value.view(np.uint8).max() > 1:
                raise WireError(f"tensor '{key}'", "BOOL bytes must be 0 or 1")
            tensors.append((key, value))
        elif isinstance(value, BFloat16):
            tensors.append((key, value))
        elif isinstance(value, str):
            metadata[key] = value
        else:
            hint = ""
            if isinstance(value, (int, float, bool, np.generic, list, tuple)):
                hint = f"; wrap numbers in an array, e.g. {key}=np.asarray(...)"
            raise TypeError(
                f"observe(): {key!r} is a {type(value).__name__}: pass a numpy array "
                f"(sent as a tensor) or a str (sent as metadata){hint}"
            )
    for key, _ in tensors:
        if not key:
            raise WireError("tensors", "empty key")
        if len(key.encode()) > limits.max_key_bytes:
            raise WireError(f"tensor '{key[:40]}'", f"key longer than {limits.max_key_bytes} bytes")
    if len(tensors) > limits.max_tensors:
        raise WireError("tensors", f"{len(tensors)} tensors, limit is {limits.max_tensors}")
    check_metadata(metadata, limits)
    return tensors, metadata


def encode_observation(
    *,
    client_id: str,
    client_type: str,
    model_id: str,
    request_id: int,
    inputs: Mapping[str, Any],
    hints: Optional[ObservationHints] = None,
    default_priority: int = DEFAULT_PRIORITY,
    latency_budget_ms: float = 0.0,
    auth_token: Optional[str] = None,
    timestamp_ns: int = 0,
    limits: Limits,
    single_payload_frame: bool = False,
    **hint_fields: Any,
) -> list[Any]:
    """The frames ``[b"", envelope, *payload]`` a DEALER sends for one observation.

    The scheduling hints come as ``hints`` or as their keyword names (``urgency=...``);
    a ``priority`` of None means ``default_priority`` (the model handle's).
    """
    h = hints if hints is not None else ObservationHints(**hint_fields)
    check_text("client.id", client_id, limits.max_id_bytes, required=True)
    check_text("client.type", client_type, limits.max_id_bytes)
    check_text("model_id", model_id, limits.max_id_bytes, required=True)
    obs = pb.Observation()
    obs.client.id = client_id
    if client_type:
        obs.client.type = client_type
    obs.model_id = model_id
    obs.request_id = request_id
    obs.protocol_version = PROTOCOL_VERSION
    obs.timestamp_ns = timestamp_ns
    obs.urgency = _nonneg_float("urgency", h.urgency)
    obs.priority = _uint("priority", default_priority if h.priority is None else h.priority, _UINT32_MAX)
    obs.latency_budget_ms = _nonneg_float("latency_budget_ms", latency_budget_ms)
    if h.steps_remaining is not None:
        obs.steps_remaining = _uint("steps_remaining", h.steps_remaining, _UINT32_MAX)
    if h.deadline_ns is not None:
        obs.deadline_ns = _uint("deadline_ns", h.deadline_ns, _UINT64_MAX)
    if h.actions_remaining is not None:
        obs.actions_remaining = _uint("actions_remaining", h.actions_remaining, _UINT32_MAX)
    if h.control_rate_hz is not None:
        obs.control_rate_hz = _nonneg_float("control_rate_hz", h.control_rate_hz)
    if h.control_step is not None:
        obs.control_step = _uint("control_step", h.control_step, _UINT64_MAX)
    if auth_token:
        check_text("auth_token", auth_token, limits.max_auth_token_bytes)
        obs.auth_token = auth_token

    tensors, metadata = split_inputs(inputs, limits)
    if metadata:
        obs.metadata.update(metadata)
    payload = pack_tensors(tensors, obs.tensors.add, timestamp_ns, limits.max_payload_frames) if tensors else []
    envelope = obs.SerializeToString()

    size = len(envelope) + sum(nbytes(f) for f in payload)
    if size > limits.max_message_bytes:
        raise WireError("observation", f"{size} bytes, limit is {limits.max_message_bytes} (ClientOptions.limits)")
    if single_payload_frame and len(payload) != 1:
        payload = [join_payload(payload)] if payload else [b""]
    return [b"", envelope, *payload]


def encode_describe(
    *, client_id: str, client_type: str, request_id: int, timestamp_ns: int, auth_token: Optional[str] = None
) -> list[Any]:
    """The frames of a describe request (docs/protocol.md §12): no model, no tensors, the
    DESCRIBE_KEY metadata entry."""
    obs = pb.Observation()
    obs.client.id = client_id
    if client_type:
        obs.client.type = client_type
    obs.request_id = request_id
    obs.protocol_version = PROTOCOL_VERSION
    obs.timestamp_ns = timestamp_ns
    obs.metadata[DESCRIBE_KEY] = "1"
    if auth_token:
        obs.auth_token = auth_token
    return [b"", obs.SerializeToString()]


# --- frames -> reply ----------------------------------------------------------


def parse_reply(frames: Sequence[Any], limits: Limits) -> tuple[pb.ModelResponse, list[Any]]:
    """The envelope and payload segments of ``[b"", envelope, *payload]`` as a DEALER receives it.

    Raises WireError when the framing breaks the rules or the envelope does not parse.
    """
    envelope, segments = split_frames(frames, limits)
    resp = pb.ModelResponse()
    try:
        resp.ParseFromString(envelope)
    except Exception as err:  # DecodeError (bad bytes, invalid UTF-8 in a string field)
        raise WireError("envelope", f"not a valid ModelResponse: {err}") from None
    return resp, segments


def check_reply_envelope(resp: pb.ModelResponse, limits: Limits) -> None:
    """The limits on a reply's strings: ids (may be empty: the server answers an unparseable
    observation with empty ids) and metadata."""
    check_text("client.id", resp.client.id, limits.max_id_bytes)
    check_text("model_id", resp.model_id, limits.max_id_bytes)
    if resp.metadata:
        check_metadata(resp.metadata, limits)


def build_result(
    resp: pb.ModelResponse,
    segments: Sequence[Any],
    limits: Limits,
    round_trip_ms: Optional[float] = None,
) -> Result:
    """A Result with numpy views over ``segments``; WireError when a descriptor is bad."""
    tensors = decode_tensors(resp.tensors, segments, limits)
    raw = resp.status
    status: Union[Status, int]
    if raw == pb.STATUS_UNSPECIFIED:
        status = Status(pb.OK)  # 1.x servers send no status
    else:
        try:
            status = Status(raw)
        except ValueError:
            status = raw
    retryable = resp.retryable if resp.protocol_version >= 2 else raw in RETRYABLE
    timing = None
    if resp.HasField("timing"):
        t = resp.timing
        timing = Timing(t.queue_wait_ms, t.inference_ms, t.total_ms, t.batch_size)
    return Result(
        model_id=resp.model_id,
        request_id=resp.request_id,
        status=status,
        tensors=tensors,
        wire_dtypes={t.key: t.dtype for t in resp.tensors},
        metadata=resp.metadata,
        error=resp.error,
        retryable=retryable,
        retry_after_ms=resp.retry_after_ms,
        timing=timing,
        inference_latency_ms=resp.inference_latency_ms,
        response_id=resp.response_id,
        timestamp_ns=resp.timestamp_ns,
        observation_timestamp_ns=resp.observation_timestamp_ns,
        protocol_version=resp.protocol_version,
        round_trip_ms=round_trip_ms,
        chunk=_chunk_info(resp),
    )


def _chunk_info(resp: pb.ModelResponse) -> Optional[ChunkInfo]:
    """The action-chunk fields, None when the reply has none (not a chunked robot's)."""
    has_step = resp.HasField("first_action_step")
    if not (has_step or resp.action_period_ms or resp.valid_until_ns):
        return None
    return ChunkInfo(
        first_action_step=resp.first_action_step if has_step else None,
        action_period_ms=resp.action_period_ms,
        predicted_delay_steps=resp.predicted_delay_steps,
        actual_delay_steps=resp.actual_delay_steps,
        valid_until_ns=resp.valid_until_ns or None,
    )


def decode_reply(frames: Sequence[Any], limits: Limits) -> Result:
    """Every rule a reply must follow, at once (no matching): the Result, or WireError.

    A version-2 reply with request id 0 answers an observation the server could not read:
    it is malformed (the matcher also fails the waiting request()s with its reason).
    """
    resp, segments = parse_reply(frames, limits)
    if resp.request_id == 0 and resp.protocol_version >= 2:
        why = f"0 in a version-2 reply (the server could not read an observation): {resp.error}"
        raise WireError("request_id", why)
    check_reply_envelope(resp, limits)
    return build_result(resp, segments, limits)
