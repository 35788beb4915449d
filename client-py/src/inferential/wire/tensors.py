"""Tensors <-> payload frames. Pure: no sockets.

The logical payload of a message is the concatenation of its payload frames; a tensor's
``byte_offset``/``byte_length`` address that concatenation and must lie inside a single
frame. Version-1.x peers send and expect exactly one payload frame.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential.errors import WireError
from inferential.wire.dtypes import DTYPE_TO_NUMPY, BFloat16, dtype_name, wire_dtype
from inferential.wire.limits import DEFAULT_LIMITS, UINT64_MAX, Limits

# Frames of at most this many bytes are joined into one frame when sending: a
# frame costs more than copying a few hundred bytes, a large array is sent as is.
SMALL_TENSOR_BYTES = 2048

Buffer = Union[memoryview, bytes]


def _wire_array(value: Union[np.ndarray, BFloat16]) -> tuple[int, np.ndarray]:
    dtype: int
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
    tensors: Iterable[tuple[str, Union[np.ndarray, BFloat16]]],
    add_tensor: Any,
    timestamp_ns: int = 0,
    max_frames: int = DEFAULT_LIMITS.max_payload_frames,
) -> list[Any]:
    """Describe ``tensors`` with ``add_tensor()`` (a repeated Tensor field's ``add``)
    and return the payload frames: large arrays as zero-copy buffers, small ones joined.

    Each tensor's ``byte_offset`` is a multiple of its item size (zero bytes fill the gap),
    so a receiver whose frame buffers are aligned can view it in place; a zero-size tensor
    addresses no bytes and gets offset 0.
    """
    frames: list[Any] = []
    small: list[bytes] = []
    offset = 0
    for key, value in tensors:
        dtype, arr = _wire_array(value)
        size = arr.nbytes
        t = add_tensor()
        t.key = key
        t.dtype = dtype
        t.shape.extend(arr.shape)
        t.encoding = pb.RAW
        if timestamp_ns:
            t.timestamp_ns = timestamp_ns
        if not size:
            continue
        pad = -offset % arr.itemsize
        if pad:
            # Before a large array with nothing joined yet, the gap travels as a frame of its own.
            small.append(bytes(pad))
            offset += pad
        t.byte_offset = offset
        t.byte_length = size
        if size <= SMALL_TENSOR_BYTES:
            small.append(arr.tobytes())
        else:
            if small:
                frames.append(b"".join(small))
                small = []
            frames.append(arr.data if arr.ndim else arr.tobytes())
        offset += size
    if small:
        frames.append(b"".join(small))
    if len(frames) > max_frames:  # only with many large tensors and gaps between them
        frames = [join_payload(frames)]
    return frames


def join_payload(frames: Sequence[Any]) -> bytes:
    """One payload frame, for 1.x peers that read exactly one."""
    if len(frames) == 1 and isinstance(frames[0], bytes):
        return frames[0]
    return b"".join(f if isinstance(f, (bytes, memoryview)) else bytes(f) for f in frames)


def _size(seg: Buffer) -> int:
    return seg.nbytes if isinstance(seg, memoryview) else len(seg)


def decode_tensors(
    descriptors: Sequence[Any],
    segments: Sequence[Buffer],
    limits: Limits = DEFAULT_LIMITS,
    what: str = "tensors",
) -> dict[str, np.ndarray]:
    """Numpy views over ``segments`` for each descriptor, after checking every rule.

    Raises WireError naming the tensor and the rule it breaks. Alignment is not assumed:
    a view at an offset that is not a multiple of its item size is a valid numpy array
    (``flags.aligned`` is False and numpy copies internally where it must), so nothing is
    copied here. A zero-size tensor needs no bytes: it is accepted whatever its offset,
    with or without payload frames.
    """
    if len(descriptors) > limits.max_tensors:
        raise WireError(what, f"{len(descriptors)} tensors, limit is {limits.max_tensors}")
    if len(segments) == 1:  # the common case: one payload frame
        bounds = [(0, _size(segments[0]))]
    else:
        bounds = []
        start = 0
        for seg in segments:
            n = _size(seg)
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
        count = math.prod(shape)  # exact: compared with the uint64 bound below
        needed = count * dt.itemsize
        length = t.byte_length
        if needed != length:
            if needed > UINT64_MAX:
                why = f"shape {list(shape)} of {dtype_name(t.dtype)} needs more than 2^64-1 bytes (overflow)"
            else:
                why = f"shape {list(shape)} of {dtype_name(t.dtype)} needs {needed} bytes but byte_length is {length}"
            raise WireError(_where(what, i, key), why)
        if not length:
            out[key] = np.empty(shape, dtype=dt)
            continue
        begin = t.byte_offset
        if begin + length > total:
            overflow = " (the sum overflows 64 bits)" if begin + length > UINT64_MAX else ""
            raise WireError(
                _where(what, i, key),
                f"bytes [{begin}, {begin + length}) lie outside the {total}-byte payload{overflow}",
            )
        seg_index = _segment_of(bounds, begin, length)
        if seg_index is None:
            raise WireError(_where(what, i, key), f"bytes [{begin}, {begin + length}) span two payload frames")
        # A view in one call (2-3x quicker than frombuffer and a reshape); the bounds are checked above.
        arr = _ndarray(shape, dt, segments[seg_index], begin - bounds[seg_index][0])
        if dt.kind == "b" and arr.view(np.uint8).max() > 1:
            raise WireError(_where(what, i, key), "BOOL bytes must be 0 or 1")
        out[key] = arr
    return out


_PLAIN_ENCODINGS = frozenset((pb.RAW, pb.ENCODING_UNSPECIFIED))
_ndarray = np.ndarray


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


def _segment_of(bounds: list[tuple[int, int]], begin: int, length: int) -> Union[int, None]:
    """The payload frame holding bytes [begin, begin + length), length > 0; None when they span two."""
    for i, (lo, hi) in enumerate(bounds):
        if lo <= begin < hi:
            return i if begin + length <= hi else None
    return None
