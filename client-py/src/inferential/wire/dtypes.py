"""The dtype table: proto DType <-> numpy dtype, and BFloat16 for numpy without it.

Item sizes come from the table generated from the proto (``_proto/tables.py``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential._proto.tables import DTYPE_NAME, ITEM_SIZE


def _bfloat16_numpy() -> Optional[np.dtype]:
    try:  # optional: ml_dtypes gives numpy a real bfloat16
        import ml_dtypes  # type: ignore[import-not-found]

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return None


_BF16 = _bfloat16_numpy()

# Without ml_dtypes a received BFLOAT16 tensor is exposed as its raw bits: uint16, tagged in
# the dtype's metadata so that sending the array on (a model echoing its input, a robot
# forwarding a reply) keeps it BFLOAT16 rather than turning it into UINT16. numpy carries the
# tag through views, copies and reshapes; it compares equal to plain uint16 otherwise.
BFLOAT16_BITS = np.dtype("<u2", metadata={"inferential": "bfloat16"})


def _numpy_dtype(number: int, name: str) -> Optional[np.dtype]:
    """The little-endian numpy dtype of a DType, None when numpy has no such type."""
    if number == pb.BFLOAT16:
        return _BF16 if _BF16 is not None else BFLOAT16_BITS
    try:
        dt = np.dtype(name.lower()).newbyteorder("<")
    except TypeError:
        return None
    # The generated table is normative; a numpy type of another size is not this DType.
    return dt if dt.itemsize == ITEM_SIZE[number] else None


def _build_dtype_table() -> tuple[dict[int, np.dtype], dict[str, int]]:
    to_numpy: dict[int, np.dtype] = {}
    from_numpy: dict[str, int] = {}
    for number, name in DTYPE_NAME.items():
        dt = _numpy_dtype(number, name)
        if dt is None:
            continue
        to_numpy[number] = dt
        from_numpy["bfloat16" if number == pb.BFLOAT16 else dt.name] = number
    return to_numpy, from_numpy


DTYPE_TO_NUMPY, _NUMPY_NAME_TO_DTYPE = _build_dtype_table()


def dtype_name(dtype: int) -> str:
    return DTYPE_NAME.get(dtype) or ("DTYPE_UNSPECIFIED" if dtype == pb.DTYPE_UNSPECIFIED else f"DType({dtype})")


def itemsize(dtype: int) -> int:
    return ITEM_SIZE[dtype]


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
    tag = array.dtype.metadata
    if tag is not None and tag.get("inferential") == "bfloat16":
        return pb.BFLOAT16  # never cached: the tagged dtype hashes like plain uint16
    cached = _WIRE_DTYPE_CACHE.get(array.dtype)
    if cached is not None:
        return cached
    number = _NUMPY_NAME_TO_DTYPE.get(array.dtype.name)
    if number is None or (number == pb.BFLOAT16 and _BF16 is None):
        supported = ", ".join(sorted(_NUMPY_NAME_TO_DTYPE))
        raise TypeError(f"numpy dtype {array.dtype} has no wire dtype (supported: {supported})")
    _WIRE_DTYPE_CACHE[array.dtype] = number
    return number
