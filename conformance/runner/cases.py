"""Case files: loading, generated tensor data, and comparing answers with expectations.

The schema is documented in conformance/README.md. Everything here is independent of any
client: tensor bytes are generated from the case, frames are built with `refwire`.
"""

from __future__ import annotations

import fnmatch
import math
import pathlib
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

import refwire

CASES_DIR = pathlib.Path(__file__).resolve().parent.parent / "cases"
KNOWN_FAILING_DIR = pathlib.Path(__file__).resolve().parent.parent / "known_failing"

ENCODE_DEFAULTS = {
    "client_id": "r1",
    "client_type": "",
    "request_id": "7",
    "timestamp_ns": "1700000000000000000",
    "single_payload_frame": False,
}


@dataclass
class Case:
    name: str
    kind: str
    spec: dict[str, Any]
    source: str
    languages: Optional[list[str]] = None  # None: every language


def load_cases() -> list[Case]:
    cases: list[Case] = []
    seen: set[str] = set()
    for path in sorted(CASES_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        defaults = doc.get("defaults", {})
        for spec in doc["cases"]:
            spec = {**defaults, **spec}
            name = spec.pop("name")
            if name in seen:
                raise ValueError(f"{path.name}: duplicate case name {name}")
            seen.add(name)
            cases.append(Case(name, spec.pop("kind"), spec, path.name, spec.pop("languages", None)))
    return cases


@dataclass
class KnownFailing:
    patterns: list[tuple[str, str]] = field(default_factory=list)  # (glob, reason)

    @classmethod
    def load(cls, language: str) -> "KnownFailing":
        path = KNOWN_FAILING_DIR / f"{language}.txt"
        result = cls()
        if path.exists():
            for line in path.read_text().splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                pattern, _, reason = line.partition(" ")
                result.patterns.append((pattern, reason.strip().lstrip("#").strip()))
        return result

    def reason(self, case_name: str) -> Optional[str]:
        for pattern, reason in self.patterns:
            if fnmatch.fnmatchcase(case_name, pattern):
                return reason or "listed"
        return None


# -- tensor data --------------------------------------------------------------------------


def item_size(dtype: str) -> int:
    return refwire.DTYPES[dtype][1]


def nbytes(dtype: str, shape: list[int]) -> int:
    return math.prod(shape) * item_size(dtype)


def tensor_bytes(t: dict[str, Any]) -> bytes:
    """The bytes of a case tensor: its `data` hex, or a pattern sized from dtype and shape."""
    data = t.get("data")
    if isinstance(data, str):
        return bytes.fromhex(data)
    n = nbytes(t["dtype"], t["shape"]) if "nbytes" not in t else int(t["nbytes"])
    seed = int(t.get("seed", 0))
    if t["dtype"] == "BOOL":
        return bytes((i + seed) % 2 for i in range(n))
    if n > 4096:
        block = bytes((i * 37 + 11 + seed) & 0xFF for i in range(251))
        return (block * (n // 251 + 1))[:n]
    return bytes((i * 37 + 11 + seed) & 0xFF for i in range(n))


def expand_tensors(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Case tensors with `many: N` expanded into N tensors named key0..keyN-1."""
    out = []
    for t in tensors:
        many = t.get("many")
        if many:
            for i in range(int(many)):
                item = {k: v for k, v in t.items() if k != "many"}
                item["key"] = f"{t['key']}{i}"
                item["seed"] = i
                out.append(item)
        else:
            out.append(t)
    return out


def wire_tensors(tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The testee-protocol form of case tensors (data as hex)."""
    return [
        {"key": t["key"], "dtype": t["dtype"], "shape": list(t["shape"]), "data": tensor_bytes(t).hex()}
        for t in expand_tensors(tensors)
    ]


# -- replies built by the runner -------------------------------------------------------


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def layout_reply(tensors: list[dict[str, Any]], layout: str) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Descriptors and payload frames for reply tensors.

    layouts: ``packed`` one frame, aligned offsets; ``frames`` a frame per tensor;
    ``misaligned`` one frame with every tensor at an odd offset (legal for a sender that
    ignores the alignment rule; a receiver must still read it); ``none`` no payload frame.
    A tensor may pin ``byte_offset``/``byte_length``/``frame`` to break the rules on purpose.
    """
    descriptors: list[dict[str, Any]] = []
    frames: list[bytearray] = []
    for t in expand_tensors(tensors):
        data = tensor_bytes(t)
        if layout == "none":
            offset = 0
        elif layout == "frames":
            start = sum(len(f) for f in frames)
            frames.append(bytearray(data))
            offset = start
        else:
            if not frames:
                frames.append(bytearray())
            frame = frames[-1]
            pos = len(frame)
            if layout == "misaligned":
                pos += 1 if pos % 2 == 0 else 0
            else:
                pos = align(pos, item_size(t["dtype"]))
            frame.extend(b"\0" * (pos - len(frame)))
            frame.extend(data)
            offset = pos
        desc = {
            "key": t["key"],
            "dtype": t.get("wire_dtype", t["dtype"]),
            "shape": list(t["shape"]),
            "byte_offset": t.get("byte_offset", offset),
            "byte_length": t.get("byte_length", len(data)),
            "encoding": t.get("encoding", 1),
        }
        descriptors.append(desc)
    return descriptors, [bytes(f) for f in frames]


def reply_fields(base: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A ModelResponse dict: defaults from ``base`` (what it answers), overridden by ``spec``."""
    status = spec.get("status", "OK")
    fields: dict[str, Any] = {
        "client": {"id": base.get("client_id", "r1")},
        "response_id": "ref-1",
        "timestamp_ns": 1700000000001000000,
        "model_id": base.get("model_id", "m"),
        "request_id": int(base.get("request_id", 0)),
        "status": status,
        "protocol_version": 2,
        "retryable": refwire.RETRYABLE.get(status, False) if isinstance(status, str) else False,
        "timing": {"queue_wait_ms": 0.25, "inference_ms": 1.5, "total_ms": 2.0, "batch_size": 1},
        "observation_timestamp_ns": int(base.get("timestamp_ns", 0)),
        "metadata": {},
    }
    for key in (
        "response_id", "model_id", "error", "metadata", "retryable", "retry_after_ms", "timing",
        "first_action_step", "action_period_ms", "predicted_delay_steps", "actual_delay_steps", "valid_until_ns",
    ):  # fmt: skip
        if key in spec:
            fields[key] = spec[key]
    if "protocol_version" in spec:
        fields["protocol_version"] = int(spec["protocol_version"])
    if "request_id" in spec:
        fields["request_id"] = int(spec["request_id"])
    if "client_id" in spec:
        fields["client"] = {"id": spec["client_id"]}
    if fields["protocol_version"] == 0:  # a 1.x server sends none of the v2 fields
        for key in ("status", "retryable", "timing", "observation_timestamp_ns", "request_id", "retry_after_ms",
                    "first_action_step", "action_period_ms", "predicted_delay_steps", "actual_delay_steps",
                    "valid_until_ns"):  # fmt: skip
            fields.pop(key, None)
    return fields


def build_reply_frames(base: dict[str, Any], spec: dict[str, Any]) -> list[bytes]:
    """The frames a DEALER receives for a reply spec: [delimiter, envelope, payload...]."""
    if "frames_hex" in spec:
        return [bytes.fromhex(f) for f in spec["frames_hex"]]
    descriptors, payload = layout_reply(spec.get("tensors", []), spec.get("layout", "packed"))
    fields = reply_fields(base, spec)
    fields["tensors"] = descriptors
    envelope = bytes.fromhex(spec["envelope_hex"]) if "envelope_hex" in spec else refwire.encode("ModelResponse", fields)
    if "extra_frames" in spec:
        payload += [bytes.fromhex(f) for f in spec["extra_frames"]]
    if "pad_bytes" in spec:
        # One more payload frame of that many zero bytes (described by no tensor): a reply
        # over a client's max_message_bytes, without spelling it out in hex.
        payload.append(bytes(int(spec["pad_bytes"])))
    delimiter = bytes.fromhex(spec.get("delimiter_hex", ""))
    frames = [envelope, *payload]
    if not spec.get("drop_delimiter"):
        frames.insert(0, delimiter)
    return frames


# -- comparing ------------------------------------------------------------------------


class Mismatch(AssertionError):
    pass


def resolve(value: Any, refs: dict[str, list[str]]) -> Any:
    """Replace {id: k} (k-th observe's request id) and {recv_id: k} references."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key in refs:
            return refs[key][int(arg)]
    if isinstance(value, dict):
        return {k: resolve(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


def check_subset(expected: Any, actual: Any, where: str = "") -> None:
    """Every key of ``expected`` must be in ``actual`` with an equal value (recursively).

    Floats compare to 1e-6 relative; a list compares element-wise and by length.
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            raise Mismatch(f"{where or 'answer'}: expected an object with {sorted(expected)}, got {actual!r}")
        for key, value in expected.items():
            if key not in actual:
                raise Mismatch(f"{where}.{key}: missing in {sorted(actual)}")
            check_subset(value, actual[key], f"{where}.{key}")
        return
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            raise Mismatch(f"{where}: expected {len(expected)} items, got {actual!r}"[:500])
        for i, (e, a) in enumerate(zip(expected, actual)):
            check_subset(e, a, f"{where}[{i}]")
        return
    if isinstance(expected, float) and isinstance(actual, (int, float)):
        if not math.isclose(expected, actual, rel_tol=1e-6, abs_tol=1e-9):
            raise Mismatch(f"{where}: expected {expected!r}, got {actual!r}")
        return
    if expected != actual:
        raise Mismatch(f"{where}: expected {expected!r}, got {actual!r}"[:500])
