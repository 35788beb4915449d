"""Bytes <-> messages on the server side. No sockets and no clock; the one state is the
counter that makes reply ids unique.

``decode_request`` turns the frames a ROUTER received into a validated
observation or raises ``Rejection`` carrying the status and a precise reason;
``encode_reply`` builds the frames of a ModelResponse. The framing, tensor and limit
rules are the client's own (``inferential.wire``), so both sides word them alike.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, cast

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential.result import Timing
from inferential.server.chunking import ChunkReply
from inferential.wire import (
    DESCRIBE_KEY,
    DTYPE_TO_NUMPY,
    PROTOCOL_VERSION,
    RETRYABLE,
    Limits,
    WireError,
    check_metadata,
    check_text,
    decode_tensors,
    join_payload,
    pack_tensors,
    split_frames,
    status_name,
)
from inferential.wire.limits import buffer, nbytes


class Rejection(Exception):
    """An observation answered with an error status instead of being scheduled."""

    def __init__(self, status: int, message: str, obs: Optional[pb.Observation] = None) -> None:
        super().__init__(f"{status_name(status)}: {message}")
        self.status = status
        self.message = message
        self.obs = obs


class Describe(Exception):
    """A describe request (docs/protocol.md §12), answered at once by :func:`describe_reply`."""

    def __init__(self, obs: pb.Observation) -> None:
        super().__init__("describe")
        self.obs = obs


@dataclass
class Decoded:
    obs: pb.Observation
    inputs: dict[str, Any]  # tensors (numpy views over the frames) and metadata strings
    payload_bytes: int


def decode_request(frames: Sequence[Any], limits: Limits) -> tuple[bytes, Decoded]:
    """(identity, decoded observation) from ``[identity, b"", envelope, *payload]``.

    Raises Rejection(INVALID_REQUEST, ...) for anything malformed. When the
    envelope parsed, the rejection carries it so the reply can echo its ids.
    """
    if len(frames) < 1:
        raise Rejection(pb.INVALID_REQUEST, "empty message")
    identity = bytes(buffer(frames[0]))
    try:
        envelope, segments = split_frames(frames[1:], limits)
    except WireError as err:
        raise Rejection(pb.INVALID_REQUEST, str(err), _ids_of(frames)) from None
    obs = pb.Observation()
    try:
        obs.ParseFromString(envelope)
    except Exception as err:  # DecodeError and friends
        salvaged, why = _salvage(envelope)
        raise Rejection(pb.INVALID_REQUEST, why or f"envelope is not a valid Observation: {err}", salvaged) from None
    return identity, decode_observation(obs, segments, limits)


def _ids_of(frames: Sequence[Any]) -> Optional[pb.Observation]:
    """The ids of a message refused for its framing or size, when its envelope (the
    third frame, itself small) can be read: the reply then names the request."""
    if len(frames) < 3 or nbytes(frames[2]) > 65536:  # an envelope is small; never walk a huge frame
        return None
    raw = buffer(frames[2])
    obs, _ = _salvage(raw)
    if obs is not None and obs.client.id and len(obs.client.id) <= 256:
        return obs
    return None


_HINTS = ("urgency", "latency_budget_ms", "control_rate_hz")


def _newer_version(version: int) -> str:
    return (
        f"protocol_version {version} is newer than this server speaks: "
        f"it accepts {PROTOCOL_VERSION}, and 0 (absent) or 1 for 1.x clients"
    )


def decode_observation(
    obs: pb.Observation, segments: Sequence[Any], limits: Limits, payload_bytes: Optional[int] = None
) -> Decoded:
    version = obs.protocol_version
    if version > PROTOCOL_VERSION and not (not obs.model_id and DESCRIBE_KEY in obs.metadata):
        # A newer peer's fields may mean what this server cannot know: refused first, by name.
        # A describe request is answered whatever its version, so a newer client can learn ours.
        raise Rejection(pb.INVALID_REQUEST, _newer_version(version), obs)
    try:
        check_text("client.id", obs.client.id, limits.max_id_bytes, required=True)
        if not obs.model_id and DESCRIBE_KEY in obs.metadata:
            raise Describe(obs)
        check_text("model_id", obs.model_id, limits.max_id_bytes, required=True)
        if obs.client.type:
            check_text("client.type", obs.client.type, limits.max_id_bytes)
        if obs.auth_token:
            check_text("auth_token", obs.auth_token, limits.max_auth_token_bytes)
    except WireError as err:
        raise Rejection(pb.INVALID_REQUEST, str(err), obs) from None
    # One comparison per hint in the common case; NaN fails 0 <= x < inf as it should.
    if not (
        0.0 <= obs.urgency < math.inf
        and 0.0 <= obs.latency_budget_ms < math.inf
        and 0.0 <= obs.control_rate_hz < math.inf
    ):
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
        payload_bytes = sum(nbytes(s) for s in segments)
    return Decoded(obs=obs, inputs=inputs, payload_bytes=payload_bytes)


# --- what can be read from an envelope protobuf refused -------------------------
# The usual cause is a string field that is not UTF-8, which makes the whole envelope
# unparseable. Reading the raw fields recovers the ids the reply must echo (so the
# client's request() fails at once, with the field named) and finds the bad field.

_VARINT_FIELDS = {2: ("timestamp_ns", 2**64 - 1), 9: ("request_id", 2**64 - 1), 10: ("protocol_version", 2**32 - 1)}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field; ValueError when the bytes are not protobuf."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire_type = key >> 3, key & 7
        value: Any
        if wire_type == 0:
            value, i = _varint(buf, i)
        elif wire_type == 2:
            length, i = _varint(buf, i)
            value, i = buf[i : i + length], i + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, i = buf[i : i + size], i + size
        else:
            raise ValueError(f"wire type {wire_type}")
        if i > n:
            raise ValueError("truncated field")
        yield number, wire_type, value


def _text(raw: bytes) -> Optional[str]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _salvage(envelope: Any) -> tuple[Optional[pb.Observation], str]:
    """The ids of an envelope that did not parse, and the first string field that is not UTF-8."""
    obs = pb.Observation()
    bad: list[str] = []
    try:
        tensor_index = 0
        for number, wire_type, value in _fields(bytes(envelope)):
            if wire_type == 0 and number in _VARINT_FIELDS:
                name, maximum = _VARINT_FIELDS[number]
                setattr(obs, name, value & maximum)
            elif wire_type != 2:
                continue
            elif number == 1:  # Client
                for sub, sub_type, raw in _fields(value):
                    if sub_type == 2 and sub in (1, 2):
                        text = _text(raw)
                        if text is None:
                            bad.append("client.id" if sub == 1 else "client.type")
                        elif sub == 1:
                            obs.client.id = text
            elif number == 5:
                text = _text(value)
                if text is None:
                    bad.append("model_id")
                else:
                    obs.model_id = text
            elif number == 15 and _text(value) is None:
                bad.append("auth_token")
            elif number == 7:  # a metadata entry: key = 1, value = 2
                for sub, sub_type, raw in _fields(value):
                    if sub_type == 2 and sub in (1, 2) and _text(raw) is None:
                        bad.append("metadata key" if sub == 1 else "metadata value")
            elif number == 4:
                for sub, sub_type, raw in _fields(value):
                    if sub == 1 and sub_type == 2 and _text(raw) is None:
                        bad.append(f"tensors[{tensor_index}].key")
                tensor_index += 1
    except ValueError:
        return None, ""
    if not bad:
        return obs, ""
    return obs, f"{bad[0]} is not valid UTF-8: the envelope is not a valid Observation"


_boot = os.urandom(4).hex()
_reply_counter = itertools.count(1)


def response_id_prefix(source: str) -> str:
    """The start of the response ids another part of this process gives its replies
    (``source`` tells them apart from :func:`encode_reply`'s): ids stay server-unique."""
    return f"{_boot}-{source}"


def next_response_id() -> str:
    """A server-unique response id for one reply (the ids :func:`encode_reply` gives)."""
    return f"{_boot}-{next(_reply_counter):x}"


# numpy dtype -> wire code of the arrays the native module encodes as they are: every wire
# type numpy has, in this machine's byte order; not BFLOAT16 (its raw bits look like uint16).
_NATIVE_CODES = {dt: code for code, dt in DTYPE_TO_NUMPY.items() if code != pb.BFLOAT16 and dt.isnative}


def native_outputs(
    outputs: Optional[Mapping[str, Any]],
) -> Optional[tuple[Optional[list[tuple[str, str]]], list[tuple]]]:
    """A model's outputs as the native module's ``Router.reply`` takes them: (string outputs
    or None, ``[(key, dtype code, shape, array)]``). None when one needs the Python encoder
    (``encode_reply``: a BFloat16, an array in another byte order or not C-contiguous,
    anything not an array or a string), which then also words why it cannot be sent."""
    tensors: list[tuple] = []
    if not outputs:
        return None, tensors
    metadata: Optional[list[tuple[str, str]]] = None
    codes = _NATIVE_CODES
    for key, value in outputs.items():
        if type(value) is np.ndarray:
            dt = value.dtype
            code = codes.get(dt) if dt.metadata is None else None
            if code is None or not value.flags.c_contiguous:
                return None
            tensors.append((key, code, value.shape, value))
        elif isinstance(value, str):
            if metadata is None:
                metadata = []
            metadata.append((key, value))
        else:
            return None
    return metadata, tensors


def native_timing(timing: Optional[Timing]) -> Optional[tuple[float, float, float, int]]:
    """``timing`` as ``Router.reply`` takes it."""
    if timing is None:
        return None
    return (timing.queue_wait_ms, timing.inference_ms, timing.total_ms, timing.batch_size)


def native_chunk(chunk: Optional[ChunkReply]) -> Optional[tuple[Optional[int], float, float, float, int]]:
    """``chunk`` as ``Router.reply`` takes it."""
    if chunk is None:
        return None
    return (
        chunk.first_action_step,
        chunk.action_period_ms,
        chunk.predicted_delay_steps,
        chunk.actual_delay_steps,
        chunk.valid_until_ns,
    )


# The 1.x-era name of the server's timing record: the proto's ServerTiming is one Python
# class, inferential.Timing, on both sides. Kept while the server's engine still uses it.
ReplyTiming = Timing


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
    timing: Optional[Timing] = None,
    observation_timestamp_ns: int = 0,
    now_ns: int = 0,
    retry_after_ms: int = 0,
    chunk: Optional[ChunkReply] = None,
) -> list[Any]:
    """The frames ``[identity, b"", envelope, *payload]`` of one reply.

    1.x peers (protocol_version 0) get exactly one payload frame, and the status
    and error mirrored in metadata, since they cannot read the new fields.
    ``retry_after_ms`` is a hint for QUEUE_FULL and DEADLINE_UNMEETABLE (0: none).
    ``chunk`` carries the action-chunk fields of an OK reply (server/chunking.py).
    """
    resp = pb.ModelResponse()
    resp.client.id = client_id
    resp.response_id = next_response_id()
    resp.timestamp_ns = now_ns
    resp.model_id = model_id
    resp.request_id = request_id
    resp.status = cast("pb.Status", status)  # the stubs want the enum class; the field takes any int
    resp.retryable = status in RETRYABLE
    resp.protocol_version = PROTOCOL_VERSION
    resp.observation_timestamp_ns = observation_timestamp_ns
    if retry_after_ms:
        resp.retry_after_ms = retry_after_ms
    if error:
        resp.error = error
    if chunk is not None:
        if chunk.first_action_step is not None:
            resp.first_action_step = chunk.first_action_step
        resp.action_period_ms = chunk.action_period_ms
        resp.predicted_delay_steps = chunk.predicted_delay_steps
        resp.actual_delay_steps = chunk.actual_delay_steps
        resp.valid_until_ns = chunk.valid_until_ns
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


def server_name() -> str:
    """``inferential-server/<version>``, as a describe reply names the server."""
    try:
        return f"inferential-server/{importlib.metadata.version('inferential-server')}"
    except importlib.metadata.PackageNotFoundError:
        return "inferential-server"


def describe_reply(identity: bytes, obs: pb.Observation, limits: Limits, server: str, now_ns: int) -> list[Any]:
    """The answer to a describe request: OK, its request id, the protocol version, the
    server's name and version, and every limit in force, as metadata strings."""
    info = {"protocol_version": str(PROTOCOL_VERSION), "server": server}
    info.update({name: str(value) for name, value in dataclasses.asdict(limits).items()})
    return encode_reply(
        identity=identity,
        client_id=obs.client.id,
        model_id="",
        request_id=obs.request_id,
        protocol_version=obs.protocol_version,
        status=pb.OK,
        outputs=info,
        observation_timestamp_ns=obs.timestamp_ns,
        now_ns=now_ns,
    )


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
