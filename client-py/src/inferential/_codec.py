"""The client's sans-I/O core: observations to frames, frames to results, and reply matching.

Nothing here touches a socket or a clock it was not given, so the sync and the
async client share it and tests drive it with plain byte frames.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential.result import Result, Timing
from inferential.wire import (
    PROTOCOL_VERSION,
    RETRYABLE,
    BFloat16,
    Limits,
    Status,
    WireError,
    check_metadata,
    decode_tensors,
    join_payload,
    pack_tensors,
    wire_dtype,
)

log = logging.getLogger("inferential.client")

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1

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
            where = f"tensor '{key}'"
            if value.ndim > limits.max_dims:
                raise WireError(where, f"{value.ndim} dimensions, limit is {limits.max_dims}")
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
    urgency: float = 0.0,
    steps_remaining: Optional[int] = None,
    priority: int = 1,
    latency_budget_ms: float = 0.0,
    deadline_ns: Optional[int] = None,
    actions_remaining: Optional[int] = None,
    control_rate_hz: Optional[float] = None,
    auth_token: Optional[str] = None,
    timestamp_ns: int = 0,
    limits: Limits,
    single_payload_frame: bool = False,
) -> list[Any]:
    """The frames ``[b"", envelope, *payload]`` a DEALER sends for one observation."""
    obs = pb.Observation()
    obs.client.id = client_id
    if client_type:
        obs.client.type = client_type
    obs.model_id = model_id
    obs.request_id = request_id
    obs.protocol_version = PROTOCOL_VERSION
    obs.timestamp_ns = timestamp_ns
    obs.urgency = _nonneg_float("urgency", urgency)
    obs.priority = _uint("priority", priority, _UINT32_MAX)
    obs.latency_budget_ms = _nonneg_float("latency_budget_ms", latency_budget_ms)
    if steps_remaining is not None:
        obs.steps_remaining = _uint("steps_remaining", steps_remaining, _UINT32_MAX)
    if deadline_ns is not None:
        obs.deadline_ns = _uint("deadline_ns", deadline_ns, _UINT64_MAX)
    if actions_remaining is not None:
        obs.actions_remaining = _uint("actions_remaining", actions_remaining, _UINT32_MAX)
    if control_rate_hz is not None:
        obs.control_rate_hz = _nonneg_float("control_rate_hz", control_rate_hz)
    if auth_token:
        obs.auth_token = auth_token

    tensors, metadata = split_inputs(inputs, limits)
    if metadata:
        obs.metadata.update(metadata)
    payload = pack_tensors(tensors, obs.tensors.add, timestamp_ns) if tensors else []
    envelope = obs.SerializeToString()

    size = len(envelope) + sum(_nbytes(f) for f in payload)
    if size > limits.max_message_bytes:
        raise WireError(
            "observation", f"{size} bytes, limit is {limits.max_message_bytes} (ClientOptions.limits)"
        )
    if single_payload_frame and len(payload) != 1:
        payload = [join_payload(payload)] if payload else [b""]
    return [b"", envelope, *payload]


# --- frames -> result ---------------------------------------------------------


def _buffer(frame: Any) -> Union[memoryview, bytes]:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _nbytes(buf: Any) -> int:
    if hasattr(buf, "buffer"):
        buf = buf.buffer
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def parse_reply(
    frames: Sequence[Any], limits: Limits
) -> tuple[pb.ModelResponse, list[Union[memoryview, bytes]]]:
    """The envelope and payload segments of ``[b"", envelope, *payload]`` as a DEALER receives it."""
    if len(frames) < 2:
        raise WireError("frames", f"expected [b'', envelope, payload...], got {len(frames)} frame(s)")
    if _nbytes(frames[0]) != 0:
        raise WireError("frames[0]", "the first frame must be the empty delimiter")
    total = sum(_nbytes(f) for f in frames[1:])
    if total > limits.max_message_bytes:
        raise WireError("message", f"{total} bytes, limit is {limits.max_message_bytes}")
    resp = pb.ModelResponse()
    try:
        resp.ParseFromString(bytes(_buffer(frames[1])))
    except Exception as err:  # google.protobuf.message.DecodeError, or a RuntimeWarning-ish upb error
        raise WireError("envelope", f"not a valid ModelResponse: {err}") from None
    return resp, [_buffer(f) for f in frames[2:]]


def build_result(
    resp: pb.ModelResponse,
    segments: Sequence[Union[memoryview, bytes]],
    limits: Limits,
    round_trip_ms: Optional[float] = None,
) -> Result:
    """A Result with numpy views over ``segments``; WireError when a descriptor is bad."""
    tensors = decode_tensors(resp.tensors, segments, limits)
    raw = resp.status
    status: Union[Status, int]
    if raw == pb.STATUS_UNSPECIFIED:
        status = Status.OK  # 1.x servers send no status
    else:
        try:
            status = Status(raw)
        except ValueError:
            status = raw
    if resp.protocol_version >= 2:
        retryable = resp.retryable
    else:
        retryable = raw in RETRYABLE
    timing = None
    if resp.HasField("timing"):
        t = resp.timing
        timing = Timing(t.queue_wait_ms, t.inference_ms, t.total_ms, t.batch_size)
    return Result(
        model_id=resp.model_id,
        request_id=resp.request_id,
        status=status,
        tensors=tensors,
        metadata=resp.metadata,
        error=resp.error,
        retryable=retryable,
        timing=timing,
        inference_latency_ms=resp.inference_latency_ms,
        response_id=resp.response_id,
        timestamp_ns=resp.timestamp_ns,
        observation_timestamp_ns=resp.observation_timestamp_ns,
        protocol_version=resp.protocol_version,
        round_trip_ms=round_trip_ms,
    )


def decode_reply(frames: Sequence[Any], limits: Limits) -> Result:
    resp, segments = parse_reply(frames, limits)
    return build_result(resp, segments, limits)


# --- matching replies to requests -----------------------------------------------


@dataclass
class ConnectionStats:
    """Counters of one connection (docs/protocol.md, "Matching replies").

    sent: observations handed to the socket. send_failed: observe() calls that
    raised ServerUnavailable. received: reply messages read from the socket.
    stale_dropped: replies dropped because a newer reply for the same model was
    delivered first, or superseded an unread one, or their request() gave up.
    unknown_dropped: replies to no outstanding request of this connection
    (unknown or duplicate request id, or a model_id that does not match).
    malformed_dropped: replies that break the protocol. by_status: replies matched
    to a request, by status name.
    """

    sent: int = 0
    send_failed: int = 0
    received: int = 0
    stale_dropped: int = 0
    unknown_dropped: int = 0
    malformed_dropped: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_LATEST, _AWAITED, _ABANDONED = 0, 1, 2


class _Pending:
    __slots__ = ("model_id", "sent_ns", "mode")

    def __init__(self, model_id: str, sent_ns: int, mode: int) -> None:
        self.model_id = model_id
        self.sent_ns = sent_ns
        self.mode = mode


Routed = tuple[str, int, bool]  # (model_id, request_id, for a request() waiter)


class ReplyRouter:
    """Request ids, the outstanding-request table and per-model delivery.

    Not thread-safe: a connection uses it from one thread (or one event loop).
    """

    # Outstanding requests kept; older ones are forgotten (their late replies count as unknown).
    MAX_PENDING = 4096

    def __init__(self, limits: Limits) -> None:
        self.stats = ConnectionStats()
        self._limits = limits
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}  # insertion order == request id order
        self._newest: dict[str, int] = {}  # model -> highest request id delivered
        self._latest: dict[str, Result] = {}  # model -> newest reply not yet returned
        self._awaited: dict[int, Union[Result, WireError]] = {}

    def next_request_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def track(self, request_id: int, model_id: str, awaited: bool) -> None:
        """Record an outstanding request; call before sending so no reply can outrun it."""
        if len(self._pending) >= self.MAX_PENDING:
            del self._pending[next(iter(self._pending))]
        self._pending[request_id] = _Pending(
            model_id, time.perf_counter_ns(), _AWAITED if awaited else _LATEST
        )

    def sent(self) -> None:
        self.stats.sent += 1

    def untrack(self, request_id: int) -> None:
        """The send failed: forget the request."""
        self._pending.pop(request_id, None)
        self.stats.send_failed += 1

    def abandon(self, request_id: int) -> None:
        """Its request() gave up: a late reply is dropped as stale."""
        self._awaited.pop(request_id, None)
        p = self._pending.get(request_id)
        if p is not None:
            p.mode = _ABANDONED

    def take_latest(self, model_id: str) -> Optional[Result]:
        return self._latest.pop(model_id, None)

    def take_awaited(self, request_id: int) -> Optional[Union[Result, WireError]]:
        return self._awaited.pop(request_id, None)

    def outstanding(self) -> int:
        return len(self._pending)

    def on_reply(self, frames: Sequence[Any]) -> Optional[Routed]:
        """Route one reply; returns where it went, or None when it was dropped (and counted)."""
        stats = self.stats
        stats.received += 1
        try:
            resp, segments = parse_reply(frames, self._limits)
        except WireError as err:
            stats.malformed_dropped += 1
            log.debug("dropped a malformed reply: %s", err)
            return None
        model_id, rid = resp.model_id, resp.request_id
        if rid == 0 and resp.protocol_version < 2:
            rid = self._oldest_pending(model_id)  # 1.x servers echo no id: assume FIFO
        p = self._pending.get(rid) if rid else None
        if p is None or p.model_id != model_id:
            stats.unknown_dropped += 1
            log.debug("dropped a reply to unknown request %d of model %r", rid, model_id)
            return None
        del self._pending[rid]

        rtt_ms = (time.perf_counter_ns() - p.sent_ns) / 1e6
        try:
            result = build_result(resp, segments, self._limits, rtt_ms)
        except WireError as err:
            stats.malformed_dropped += 1
            log.debug("dropped a malformed reply to request %d: %s", rid, err)
            if p.mode == _AWAITED:
                self._awaited[rid] = err
                return model_id, rid, True
            return None
        result.request_id = rid
        name = result.status_name
        stats.by_status[name] = stats.by_status.get(name, 0) + 1
        superseded = result.status == Status.SUPERSEDED

        if p.mode == _AWAITED:
            self._awaited[rid] = result
            if not superseded:
                self._advance(model_id, rid)
            return model_id, rid, True
        if p.mode == _ABANDONED:
            stats.stale_dropped += 1
            return None
        if superseded:
            # A newer observation for this model is on its way; its reply is the one to return.
            return None
        if rid < self._newest.get(model_id, 0):
            stats.stale_dropped += 1
            log.debug("dropped stale reply %d of model %r", rid, model_id)
            return None
        self._advance(model_id, rid)
        self._latest[model_id] = result
        return model_id, rid, False

    def _advance(self, model_id: str, rid: int) -> None:
        if rid > self._newest.get(model_id, 0):
            self._newest[model_id] = rid
        unread = self._latest.get(model_id)
        if unread is not None and unread.request_id < rid:
            del self._latest[model_id]
            self.stats.stale_dropped += 1

    def _oldest_pending(self, model_id: str) -> int:
        for rid, p in self._pending.items():
            if p.model_id == model_id and p.mode != _ABANDONED:
                return rid
        return 0
