"""Pure codec for the Inferential wire protocol (docs/protocol.md). No sockets here.

A message on the wire is a list of ZMQ frames::

    robot -> server (DEALER):   [b"", envelope, payload_0, payload_1, ...]
    server -> robot (ROUTER):   [identity, b"", envelope, payload_0, ...]

The logical payload is the concatenation of the payload frames; a tensor's
``byte_offset``/``byte_length`` address that concatenation and must lie inside a
single frame. Version-1.x peers send and expect exactly one payload frame.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential.errors import ProtocolError

PROTOCOL_VERSION = 2

# Frames of at most this many bytes are joined into one frame when sending: a
# frame costs more than copying a few hundred bytes, a large array is sent as is.
SMALL_TENSOR_BYTES = 2048


class WireError(ProtocolError, ValueError):
    """A message that breaks the protocol. ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Bounds a receiver enforces on every message (docs/protocol.md, Limits)."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_tensors: int = 64
    max_dims: int = 8
    max_key_bytes: int = 256
    max_metadata_entries: int = 64
    max_metadata_value_bytes: int = 4096


DEFAULT_LIMITS = Limits()


# --- dtype table, derived from the proto enum ---------------------------------


def _bfloat16_numpy() -> np.dtype | None:
    try:  # optional: ml_dtypes gives numpy a real bfloat16
        import ml_dtypes  # type: ignore[import-not-found]

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return None


_BF16 = _bfloat16_numpy()


def _build_dtype_table() -> tuple[dict[int, np.dtype], dict[str, int]]:
    to_numpy: dict[int, np.dtype] = {}
    from_numpy: dict[str, int] = {}
    for name, number in pb.DType.items():
        if number == pb.DTYPE_UNSPECIFIED:
            continue
        if number == pb.BFLOAT16:
            # Without ml_dtypes a bfloat16 tensor is exposed as its raw uint16 bits.
            dt = _BF16 if _BF16 is not None else np.dtype("<u2")
            to_numpy[number] = dt
            from_numpy["bfloat16"] = number
            continue
        dt = np.dtype(name.lower()).newbyteorder("<")
        to_numpy[number] = dt
        from_numpy[np.dtype(name.lower()).name] = number
    return to_numpy, from_numpy


DTYPE_TO_NUMPY, _NUMPY_NAME_TO_DTYPE = _build_dtype_table()


def dtype_name(dtype: int) -> str:
    return pb.DType.Name(dtype) if dtype in pb.DType.values() else f"DType({dtype})"


def itemsize(dtype: int) -> int:
    return DTYPE_TO_NUMPY[dtype].itemsize


class BFloat16:
    """A tensor to send as BFLOAT16, holding its raw bits as little-endian uint16.

    ``BFloat16.from_float32(x)`` rounds float32 values to nearest-even; with the
    optional ``ml_dtypes`` package, arrays of its bfloat16 dtype are sent directly.
    """

    __slots__ = ("bits",)

    def __init__(self, bits: np.ndarray) -> None:
        if bits.dtype != np.uint16:
            raise TypeError(f"BFloat16 holds uint16 bit patterns, got {bits.dtype}")
        self.bits = bits

    @classmethod
    def from_float32(cls, values: np.ndarray) -> "BFloat16":
        f = np.ascontiguousarray(values, dtype="<f4")
        u = f.view("<u4").astype(np.uint64)
        rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        nan = np.isnan(f)
        bits = np.where(nan, 0x7FC0, rounded).astype("<u2")
        return cls(bits)

    def to_float32(self) -> np.ndarray:
        return (self.bits.astype("<u4") << 16).view("<f4")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bits.shape


_WIRE_DTYPE_CACHE: dict[np.dtype, int] = {}  # dtype.name is slow; dtype objects hash fast


def wire_dtype(array: np.ndarray) -> int:
    """The DType number for a numpy array; raises TypeError when there is none."""
    cached = _WIRE_DTYPE_CACHE.get(array.dtype)
    if cached is not None:
        return cached
    name = array.dtype.name
    number = _NUMPY_NAME_TO_DTYPE.get(name)
    if number is None or (number == pb.BFLOAT16 and _BF16 is None):
        supported = ", ".join(sorted(_NUMPY_NAME_TO_DTYPE))
        raise TypeError(f"numpy dtype {array.dtype} has no wire dtype (supported: {supported})")
    _WIRE_DTYPE_CACHE[array.dtype] = number
    return number


# --- encoding -----------------------------------------------------------------


def _wire_array(value: np.ndarray | BFloat16) -> tuple[int, np.ndarray]:
    if isinstance(value, BFloat16):
        arr, dtype = value.bits, pb.BFLOAT16
    else:
        arr, dtype = value, wire_dtype(value)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return dtype, arr


def pack_tensors(
    tensors: Iterable[tuple[str, np.ndarray | BFloat16]],
    add_tensor: Any,
    timestamp_ns: int = 0,
) -> list[Any]:
    """Describe ``tensors`` with ``add_tensor()`` (a repeated Tensor field's ``add``)
    and return the payload frames: large arrays as zero-copy buffers, small ones joined.
    """
    frames: list[Any] = []
    small: list[bytes] = []
    offset = 0
    for key, value in tensors:
        dtype, arr = _wire_array(value)
        nbytes = arr.nbytes
        t = add_tensor()
        t.key = key
        t.dtype = dtype
        t.shape.extend(arr.shape)
        t.byte_offset = offset
        t.byte_length = nbytes
        t.encoding = pb.RAW
        if timestamp_ns:
            t.timestamp_ns = timestamp_ns
        if nbytes <= SMALL_TENSOR_BYTES:
            small.append(arr.tobytes())
        else:
            if small:
                frames.append(b"".join(small))
                small = []
            frames.append(arr.data if arr.ndim else arr.tobytes())
        offset += nbytes
    if small:
        frames.append(b"".join(small))
    return frames


def join_payload(frames: Sequence[Any]) -> bytes:
    """One payload frame, for 1.x peers that read exactly one."""
    if len(frames) == 1 and isinstance(frames[0], bytes):
        return frames[0]
    return b"".join(bytes(f) if not isinstance(f, (bytes, memoryview)) else f for f in frames)


# --- decoding -----------------------------------------------------------------


def decode_tensors(
    descriptors: Sequence[Any],
    segments: Sequence[memoryview | bytes],
    limits: Limits = DEFAULT_LIMITS,
    what: str = "tensors",
) -> dict[str, np.ndarray]:
    """Numpy views over ``segments`` for each descriptor, after checking every rule.

    Raises WireError naming the tensor and the rule it breaks.
    """
    if len(descriptors) > limits.max_tensors:
        raise WireError(what, f"{len(descriptors)} tensors, limit is {limits.max_tensors}")
    if len(segments) == 1:  # the common case: one payload frame
        seg = segments[0]
        bounds = [(0, len(seg) if not isinstance(seg, memoryview) else seg.nbytes)]
    else:
        bounds = []
        start = 0
        for seg in segments:
            n = len(seg) if not isinstance(seg, memoryview) else seg.nbytes
            bounds.append((start, start + n))
            start += n
    total = bounds[-1][1] if bounds else 0
    max_key, max_dims = limits.max_key_bytes, limits.max_dims

    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(descriptors):
        key = t.key
        # Checked in this order, the first broken rule is reported (_tensor_error words it).
        dt = DTYPE_TO_NUMPY.get(t.dtype)
        shape = tuple(t.shape)
        if (
            not key
            or (len(key) * 4 > max_key and len(key.encode()) > max_key)
            or key in out
            or dt is None
            or t.encoding not in _PLAIN_ENCODINGS
            or len(shape) > max_dims
            or min(shape, default=0) < 0
        ):
            raise _tensor_error(what, i, t, key, out, dt, shape, limits)
        count = math.prod(shape)  # Python ints: no overflow
        length = t.byte_length
        if count * dt.itemsize != length:
            raise WireError(
                _where(what, i, key),
                f"shape {list(shape)} of {dtype_name(t.dtype)} needs {count * dt.itemsize} bytes "
                f"but byte_length is {length}",
            )
        begin = t.byte_offset
        if begin + length > total:
            raise WireError(
                _where(what, i, key), f"bytes [{begin}, {begin + length}) lie outside the {total}-byte payload"
            )
        seg_index = _segment_of(bounds, begin, length)
        if seg_index is None:
            raise WireError(_where(what, i, key), f"bytes [{begin}, {begin + length}) span two payload frames")
        arr = np.frombuffer(segments[seg_index], dtype=dt, count=count, offset=begin - bounds[seg_index][0])
        out[key] = arr.reshape(shape) if len(shape) != 1 else arr
    return out


_PLAIN_ENCODINGS = frozenset((pb.RAW, pb.ENCODING_UNSPECIFIED))


def _where(what: str, i: int, key: str) -> str:
    return f"{what}[{i}]" + (f" '{key}'" if key else "")


def _tensor_error(
    what: str, i: int, t: Any, key: str, seen: Mapping[str, Any], dt: Any, shape: tuple, limits: Limits
) -> WireError:
    where = _where(what, i, key)
    if not key:
        return WireError(where, "empty key")
    if len(key.encode()) > limits.max_key_bytes:
        return WireError(where, f"key longer than {limits.max_key_bytes} bytes")
    if key in seen:
        return WireError(where, "duplicate key")
    if dt is None:
        return WireError(where, f"unknown or unspecified dtype {dtype_name(t.dtype)}")
    if t.encoding not in _PLAIN_ENCODINGS:
        enc = pb.Encoding.Name(t.encoding) if t.encoding in pb.Encoding.values() else str(t.encoding)
        return WireError(where, f"encoding {enc} is not supported; send RAW tensors")
    if len(shape) > limits.max_dims:
        return WireError(where, f"{len(shape)} dimensions, limit is {limits.max_dims}")
    return WireError(where, f"negative dimension in shape {list(shape)}")


def _segment_of(bounds: list[tuple[int, int]], begin: int, length: int) -> int | None:
    for i, (lo, hi) in enumerate(bounds):
        if lo <= begin < hi or (length == 0 and lo <= begin <= hi):
            return i if begin + length <= hi else None
    if length == 0:  # an empty tensor with no payload at all
        return 0 if bounds else None
    return None


def check_metadata(metadata: Mapping[str, str], limits: Limits = DEFAULT_LIMITS) -> None:
    if len(metadata) > limits.max_metadata_entries:
        raise WireError(
            "metadata", f"{len(metadata)} entries, limit is {limits.max_metadata_entries}"
        )
    for k, v in metadata.items():
        if len(k.encode()) > limits.max_key_bytes:
            raise WireError(f"metadata '{k[:40]}'", f"key longer than {limits.max_key_bytes} bytes")
        if len(v.encode()) > limits.max_metadata_value_bytes:
            raise WireError(
                f"metadata '{k}'", f"value longer than {limits.max_metadata_value_bytes} bytes"
            )


# --- statuses -----------------------------------------------------------------

STATUS_NAMES = {number: name for name, number in pb.Status.items()}

# The proto's Status enum as a Python IntEnum (derived, never pasted).
Status = enum.IntEnum("Status", dict(pb.Status.items()), module=__name__)

# Whether sending again (a fresh observation) can succeed with nothing else changed.
# The proto comments are the normative table; servers also send it in `retryable`.
RETRYABLE = frozenset(
    {
        pb.MODEL_ERROR,
        pb.EXPIRED,
        pb.QUEUE_FULL,
        pb.DEADLINE_UNMEETABLE,
        pb.SHUTTING_DOWN,
        pb.CANCELLED,
    }
)


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"Status({status})")
