"""The reference peer's own protobuf reader and writer.

Written from proto/inferential.proto by hand and sharing nothing with any client's codec,
so a mistake made the same way in a client's encoder and decoder still shows up here.
Messages are plain dicts keyed by proto field names; 64-bit integers are Python ints.
Only what the protocol uses is supported: varints, 32-bit floats, length-delimited
strings/bytes/messages, packed repeated int64 and map<string, string>.
"""

from __future__ import annotations

import struct
from typing import Any

# field number -> (name, kind); kinds: u (unsigned varint), i (int64 varint), b (bool),
# e (enum), f (float32), s (string), m:<Message>, ri (repeated int64), rm:<Message>,
# map (map<string,string>), o:<kind> (proto3 optional: presence kept).
SCHEMA: dict[str, dict[int, tuple[str, str]]] = {
    "Client": {1: ("id", "s"), 2: ("type", "s")},
    "Tensor": {
        1: ("key", "s"),
        2: ("dtype", "e"),
        3: ("shape", "ri"),
        4: ("byte_offset", "u"),
        5: ("byte_length", "u"),
        6: ("timestamp_ns", "u"),
        7: ("encoding", "e"),
    },
    "Observation": {
        1: ("client", "m:Client"),
        2: ("timestamp_ns", "u"),
        3: ("urgency", "f"),
        4: ("tensors", "rm:Tensor"),
        5: ("model_id", "s"),
        6: ("steps_remaining", "o:u"),
        7: ("metadata", "map"),
        8: ("priority", "u"),
        9: ("request_id", "u"),
        10: ("protocol_version", "u"),
        11: ("latency_budget_ms", "f"),
        12: ("deadline_ns", "u"),
        13: ("actions_remaining", "o:u"),
        14: ("control_rate_hz", "f"),
        15: ("auth_token", "s"),
        16: ("control_step", "o:u"),
    },
    "ServerTiming": {1: ("queue_wait_ms", "f"), 2: ("inference_ms", "f"), 3: ("total_ms", "f"), 4: ("batch_size", "u")},
    "ModelResponse": {
        1: ("client", "m:Client"),
        2: ("response_id", "s"),
        3: ("timestamp_ns", "u"),
        4: ("tensors", "rm:Tensor"),
        5: ("inference_latency_ms", "f"),
        6: ("model_id", "s"),
        7: ("metadata", "map"),
        8: ("request_id", "u"),
        9: ("status", "e"),
        10: ("error", "s"),
        11: ("timing", "m:ServerTiming"),
        12: ("protocol_version", "u"),
        13: ("retryable", "b"),
        14: ("observation_timestamp_ns", "u"),
        15: ("retry_after_ms", "u"),
        16: ("first_action_step", "o:u"),
        17: ("action_period_ms", "f"),
        18: ("predicted_delay_steps", "f"),
        19: ("actual_delay_steps", "f"),
        20: ("valid_until_ns", "u"),
    },
}

DTYPES = {
    "FLOAT16": (1, 2), "FLOAT32": (2, 4), "FLOAT64": (3, 8), "BFLOAT16": (4, 2), "UINT8": (5, 1),
    "INT32": (6, 4), "INT64": (7, 8), "BOOL": (8, 1), "INT8": (9, 1), "INT16": (10, 2),
    "UINT16": (11, 2), "UINT32": (12, 4), "UINT64": (13, 8),
}  # fmt: skip
DTYPE_BY_VALUE = {v: k for k, (v, _) in DTYPES.items()}
STATUSES = [
    "STATUS_UNSPECIFIED", "OK", "INVALID_REQUEST", "UNKNOWN_MODEL", "MODEL_ERROR", "EXPIRED",
    "QUEUE_FULL", "DEADLINE_UNMEETABLE", "SUPERSEDED", "UNAUTHENTICATED", "SHUTTING_DOWN", "CANCELLED",
]  # fmt: skip
STATUS_VALUE = {name: i for i, name in enumerate(STATUSES)}
# The spec's retry table (docs/protocol.md §6), written here independently of the proto options.
RETRYABLE = {
    "INVALID_REQUEST": False, "UNKNOWN_MODEL": False, "MODEL_ERROR": True, "EXPIRED": True,
    "QUEUE_FULL": True, "DEADLINE_UNMEETABLE": True, "SUPERSEDED": False, "UNAUTHENTICATED": False,
    "SHUTTING_DOWN": True, "CANCELLED": True,
}  # fmt: skip


class DecodeError(ValueError):
    pass


def _varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def encode(message: str, fields: dict[str, Any]) -> bytes:
    """Serialize a dict as ``message``; proto3 defaults are omitted, map entries sorted by key."""
    by_name = {name: (num, kind) for num, (name, kind) in SCHEMA[message].items()}
    out = bytearray()
    for name in sorted(fields, key=lambda n: by_name[n][0]):
        value = fields[name]
        num, kind = by_name[name]
        optional = kind.startswith("o:")
        if optional:
            if value is None:
                continue
            kind = kind[2:]
        if kind in ("u", "i", "e", "b"):
            if kind == "e" and isinstance(value, str):
                value = STATUS_VALUE[value] if message == "ModelResponse" else DTYPES[value][0]
            value = int(value)
            if value or optional:
                out += _key(num, 0) + _varint(value)
        elif kind == "f":
            if value:
                out += _key(num, 5) + struct.pack("<f", value)
        elif kind == "s":
            data = value.encode() if isinstance(value, str) else bytes(value)
            if data:
                out += _key(num, 2) + _varint(len(data)) + data
        elif kind.startswith("m:"):
            if value is not None:
                body = encode(kind[2:], value)
                out += _key(num, 2) + _varint(len(body)) + body
        elif kind.startswith("rm:"):
            for item in value:
                body = encode(kind[3:], item)
                out += _key(num, 2) + _varint(len(body)) + body
        elif kind == "ri":
            if value:
                body = b"".join(_varint(int(v)) for v in value)
                out += _key(num, 2) + _varint(len(body)) + body
        elif kind == "map":
            for k in sorted(value):
                k_b = k.encode() if isinstance(k, str) else bytes(k)
                v_b = value[k].encode() if isinstance(value[k], str) else bytes(value[k])
                body = _key(1, 2) + _varint(len(k_b)) + k_b + _key(2, 2) + _varint(len(v_b)) + v_b
                out += _key(num, 2) + _varint(len(body)) + body
        else:  # pragma: no cover - schema typo
            raise AssertionError(kind)
    return bytes(out)


def _defaults(message: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, kind in SCHEMA[message].values():
        if kind.startswith("o:") or kind.startswith("m:"):
            result[name] = None
        elif kind in ("u", "i", "e"):
            result[name] = 0
        elif kind == "b":
            result[name] = False
        elif kind == "f":
            result[name] = 0.0
        elif kind == "s":
            result[name] = ""
        elif kind in ("ri",) or kind.startswith("rm:"):
            result[name] = []
        elif kind == "map":
            result[name] = {}
    return result


def decode(message: str, buf: bytes) -> dict[str, Any]:
    """Parse ``buf`` as ``message``; unknown fields are skipped, strings must be UTF-8."""
    schema = SCHEMA[message]
    result = _defaults(message)
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        num, wire_type = key >> 3, key & 7
        if num == 0:
            raise DecodeError("field number 0")
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
        elif wire_type == 1:
            if pos + 8 > len(buf):
                raise DecodeError("truncated fixed64")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire_type == 5:
            if pos + 4 > len(buf):
                raise DecodeError("truncated fixed32")
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise DecodeError("truncated length-delimited field")
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if num not in schema:
            continue
        name, kind = schema[num]
        if kind.startswith("o:"):
            kind = kind[2:]
        try:
            if kind in ("u", "e"):
                result[name] = value if wire_type == 0 else _bad(name)
            elif kind == "i":
                result[name] = value - (1 << 64) if value >= 1 << 63 else value
            elif kind == "b":
                result[name] = bool(value)
            elif kind == "f":
                result[name] = struct.unpack("<f", value)[0] if wire_type == 5 else _bad(name)
            elif kind == "s":
                result[name] = bytes(value).decode("utf-8") if wire_type == 2 else _bad(name)
            elif kind.startswith("m:"):
                result[name] = decode(kind[2:], value)
            elif kind.startswith("rm:"):
                result[name].append(decode(kind[3:], value))
            elif kind == "ri":
                if wire_type == 0:
                    result[name].append(value - (1 << 64) if value >= 1 << 63 else value)
                else:
                    p = 0
                    while p < len(value):
                        v, p = _read_varint(value, p)
                        result[name].append(v - (1 << 64) if v >= 1 << 63 else v)
            elif kind == "map":
                entry = _decode_map_entry(value)
                result[name][entry[0]] = entry[1]
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{name}: invalid UTF-8") from exc
        except TypeError as exc:
            raise DecodeError(f"{name}: wrong wire type") from exc
    return result


def _bad(name: str) -> Any:
    raise DecodeError(f"{name}: wrong wire type")


def _decode_map_entry(buf: bytes) -> tuple[str, str]:
    key = value = ""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        length, pos = _read_varint(buf, pos)
        data = bytes(buf[pos : pos + length]).decode("utf-8")
        pos += length
        if tag >> 3 == 1:
            key = data
        elif tag >> 3 == 2:
            value = data
    return key, value
