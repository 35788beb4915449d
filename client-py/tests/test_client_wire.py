"""The pure wire codec (inferential.wire): tensors to frames and back, no sockets."""

from __future__ import annotations

import numpy as np
import pytest

from inferential._proto import inferential_pb2 as pb
from inferential.errors import ProtocolError
from inferential.wire import (
    DEFAULT_LIMITS,
    DTYPE_TO_NUMPY,
    SMALL_TENSOR_BYTES,
    BFloat16,
    Limits,
    WireError,
    check_metadata,
    check_text,
    decode_tensors,
    itemsize,
    pack_tensors,
    split_frames,
)


def round_trip(tensors, limits=DEFAULT_LIMITS):
    msg = pb.Observation()
    frames = pack_tensors(list(tensors.items()), msg.tensors.add)
    wire = pb.Observation.FromString(msg.SerializeToString())  # through real bytes
    return decode_tensors(wire.tensors, [bytes(f) for f in frames], limits), wire, frames


NUMERIC = [name for name, n in pb.DType.items() if n not in (pb.DTYPE_UNSPECIFIED, pb.BFLOAT16)]


@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_dtype_round_trips_with_its_proto_item_size(name):
    dt = np.dtype(name.lower())
    if dt == np.bool_:
        arr = np.array([[True, False, True], [False, False, True]])
    else:
        info = np.finfo(dt) if dt.kind == "f" else np.iinfo(dt)
        arr = np.array([[info.min, 0, 1], [info.max, 2, 3]], dtype=dt)
    out, wire, _ = round_trip({"x": arr})
    assert wire.tensors[0].dtype == pb.DType.Value(name)
    assert itemsize(pb.DType.Value(name)) == dt.itemsize
    assert out["x"].dtype == dt and out["x"].shape == (2, 3)
    np.testing.assert_array_equal(out["x"], arr)


def test_bfloat16_is_sent_from_the_wrapper_and_received_as_the_table_dtype():
    values = np.array([1.5, -2.0, 0.15625, 3.0e38], dtype=np.float32)
    out, wire, _ = round_trip({"b": BFloat16.from_float32(values)})
    assert wire.tensors[0].dtype == pb.BFLOAT16 and wire.tensors[0].byte_length == 8
    got = out["b"]
    assert got.dtype == DTYPE_TO_NUMPY[pb.BFLOAT16]  # ml_dtypes.bfloat16 if installed, else uint16 bits
    bits = got.view(np.uint16) if got.dtype != np.uint16 else got
    np.testing.assert_array_equal(BFloat16(bits.copy()).to_float32()[:3], values[:3])


def test_bfloat16_rounds_to_nearest_even_and_keeps_nan():
    bits = BFloat16.from_float32(np.array([1.00390625, 1.01171875, np.nan], dtype=np.float32)).bits
    # 1 + 2^-8 is a tie: rounds to even (1.0); 1 + 3*2^-8 is a tie: rounds up to 1 + 2^-6.
    assert bits[0] == 0x3F80 and bits[1] == 0x3F82 and bits[2] == 0x7FC0


def test_big_endian_input_goes_out_little_endian():
    arr = np.arange(5, dtype=">i4")
    out, _, frames = round_trip({"be": arr})
    assert bytes(frames[0]) == np.arange(5, dtype="<i4").tobytes()
    assert out["be"].dtype == np.dtype("<i4")
    np.testing.assert_array_equal(out["be"], arr)


def test_non_contiguous_input_goes_out_in_c_order():
    base = np.arange(48, dtype=np.float64).reshape(6, 8)
    view = base[::2, 1::3].T  # strided and transposed
    out, _, _ = round_trip({"v": view})
    np.testing.assert_array_equal(out["v"], view)


def test_zero_size_and_zero_dim_tensors_round_trip():
    out, wire, _ = round_trip(
        {"empty": np.zeros((0, 3), np.float32), "scalar": np.array(2.5), "tail": np.ones(2, np.uint8)}
    )
    assert out["empty"].shape == (0, 3) and wire.tensors[0].byte_length == 0
    assert out["scalar"].shape == () and float(out["scalar"]) == 2.5
    np.testing.assert_array_equal(out["tail"], [1, 1])


def test_large_arrays_travel_as_their_own_frame_without_a_copy():
    big = np.arange(SMALL_TENSOR_BYTES, dtype=np.float32)  # 4x the small threshold
    small = np.ones(3, np.float32)
    msg = pb.Observation()
    frames = pack_tensors([("a", small), ("big", big), ("c", small)], msg.tensors.add)
    assert len(frames) == 3
    assert isinstance(frames[1], memoryview) and np.shares_memory(np.asarray(frames[1]), big)
    out = decode_tensors(msg.tensors, frames)
    np.testing.assert_array_equal(out["big"], big)
    np.testing.assert_array_equal(out["c"], small)


def test_decoded_arrays_are_views_of_the_received_buffer():
    arr = np.arange(1024, dtype=np.int64)
    msg = pb.Observation()
    frames = [bytearray(bytes(f)) for f in pack_tensors([("x", arr)], msg.tensors.add)]
    out = decode_tensors(msg.tensors, frames)
    frames[0][0] = 7
    assert out["x"][0] == 7


# --- every malformed descriptor is rejected, naming the tensor ------------------


def _one_tensor(**changes):
    msg = pb.Observation()
    t = msg.tensors.add(key="img", dtype=pb.UINT8, shape=[2, 3], byte_offset=0, byte_length=6, encoding=pb.RAW)
    segments = [bytes(6)]
    for k, v in changes.items():
        if k == "shape":
            del t.shape[:]
            t.shape.extend(v)
        elif k == "segments":
            segments = v
        else:
            setattr(t, k, v)
    return msg, segments


@pytest.mark.parametrize(
    "changes, field, reason",
    [
        ({"key": ""}, "tensors[0]", "empty key"),
        ({"key": "k" * 257, "byte_length": 6}, "tensors[0]", "key longer than 256"),
        ({"dtype": pb.DTYPE_UNSPECIFIED}, "'img'", "DTYPE_UNSPECIFIED"),
        ({"dtype": 99}, "'img'", "DType(99)"),
        ({"encoding": pb.JPEG}, "'img'", "encoding JPEG"),
        ({"encoding": pb.PNG}, "'img'", "encoding PNG"),
        ({"shape": [1] * 9, "byte_length": 1}, "'img'", "9 dimensions"),
        ({"shape": [-2, -3]}, "'img'", "negative dimension"),
        ({"byte_length": 5}, "'img'", "needs 6 bytes but byte_length is 5"),
        ({"byte_offset": 4}, "'img'", "outside the 6-byte payload"),
        ({"segments": [bytes(3), bytes(3)]}, "'img'", "span two payload frames"),
        ({"segments": []}, "'img'", "outside the 0-byte payload"),
    ],
)
def test_decode_rejects_a_malformed_descriptor_naming_it(changes, field, reason):
    msg, segments = _one_tensor(**changes)
    with pytest.raises(WireError) as info:
        decode_tensors(msg.tensors, segments)
    assert field in info.value.field
    assert reason in str(info.value)
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)


def test_decode_rejects_a_duplicate_key():
    msg = pb.Observation()
    for _ in range(2):
        msg.tensors.add(key="a", dtype=pb.UINT8, shape=[1], byte_offset=0, byte_length=1)
    with pytest.raises(WireError, match="tensors\\[1\\] 'a': duplicate key"):
        decode_tensors(msg.tensors, [b"\x01"])


def test_decode_rejects_too_many_tensors():
    msg = pb.Observation()
    for i in range(3):
        msg.tensors.add(key=f"t{i}", dtype=pb.UINT8, shape=[0], byte_offset=0, byte_length=0)
    with pytest.raises(WireError, match="3 tensors, limit is 2"):
        decode_tensors(msg.tensors, [], Limits(max_tensors=2))


def test_metadata_limits_name_the_entry():
    check_metadata({"a": "x" * 4096})
    with pytest.raises(WireError, match="metadata 'a'.*4096"):
        check_metadata({"a": "x" * 4097})
    with pytest.raises(WireError, match="65 entries"):
        check_metadata({str(i): "" for i in range(65)})


# --- alignment: senders align, receivers never assume it ---------------------------


def test_senders_align_each_offset_to_its_item_size_with_zero_gaps():
    msg = pb.Observation()
    tensors = [
        ("u8", np.arange(3, dtype=np.uint8)),
        ("f32", np.array([1.5, 2.5], np.float32)),
        ("i16", np.array([7], np.int16)),
        ("f64", np.array([3.25], np.float64)),
    ]
    frames = pack_tensors(tensors, msg.tensors.add)
    payload = b"".join(bytes(f) for f in frames)
    offsets = {t.key: t.byte_offset for t in msg.tensors}
    for t in msg.tensors:
        assert t.byte_offset % itemsize(t.dtype) == 0, t.key
    # Each gap is exactly what alignment needs, filled with zeros.
    assert offsets == {"u8": 0, "f32": 4, "i16": 12, "f64": 16}
    assert payload[3:4] == b"\0" and payload[14:16] == b"\0\0"
    out = decode_tensors(msg.tensors, frames)
    for key, arr in tensors:
        np.testing.assert_array_equal(out[key], arr)


def test_a_large_array_after_an_odd_sized_one_starts_aligned_in_a_frame_of_its_own():
    odd = np.arange(SMALL_TENSOR_BYTES + 1, dtype=np.uint8)  # large, odd length
    big = np.arange(SMALL_TENSOR_BYTES, dtype=np.float64)
    msg = pb.Observation()
    frames = pack_tensors([("odd", odd), ("big", big)], msg.tensors.add)
    assert msg.tensors[1].byte_offset % 8 == 0
    assert len(frames) == 3 and bytes(frames[1]) == bytes(7)  # the gap, then the array
    assert isinstance(frames[2], memoryview) and np.shares_memory(np.asarray(frames[2]), big)
    np.testing.assert_array_equal(decode_tensors(msg.tensors, frames)["big"], big)


def test_receivers_view_misaligned_tensors_in_place_without_assuming_alignment():
    values = np.array([1.25, -2.5, 1e30], np.float32)
    msg = pb.Observation()
    msg.tensors.add(key="x", dtype=pb.FLOAT32, shape=[3], byte_offset=3, byte_length=12)
    frame = bytearray(b"abc" + values.tobytes())
    out = decode_tensors(msg.tensors, [frame])
    assert not out["x"].flags.aligned  # the allocator aligns the buffer; offset 3 does not
    np.testing.assert_array_equal(out["x"], values)
    assert np.shares_memory(out["x"], np.frombuffer(frame, np.uint8))  # a view, not a copy
    np.testing.assert_array_equal(out["x"] * 2, values * 2)  # numpy computes on unaligned views


def test_many_large_tensors_with_gaps_never_exceed_the_payload_frame_limit():
    msg = pb.Observation()
    tensors = []
    for i in range(32):
        tensors.append((f"odd{i}", np.zeros(SMALL_TENSOR_BYTES + 1, np.uint8)))
        tensors.append((f"f{i}", np.full(SMALL_TENSOR_BYTES, i, np.float32)))
    frames = pack_tensors(tensors, msg.tensors.add)
    assert len(frames) <= Limits().max_payload_frames
    out = decode_tensors(msg.tensors, frames)
    assert float(out["f31"][0]) == 31.0


# --- zero-size tensors need no bytes ------------------------------------------------


@pytest.mark.parametrize("segments", [[], [b""], [b"\x01\x02\x03"]], ids=["no frame", "empty frame", "other bytes"])
def test_zero_size_tensors_are_accepted_with_or_without_payload_frames(segments):
    msg = pb.Observation()
    msg.tensors.add(key="none", dtype=pb.FLOAT32, shape=[0, 3], byte_offset=0, byte_length=0)
    msg.tensors.add(key="far", dtype=pb.INT64, shape=[4, 0], byte_offset=1000, byte_length=0)
    out = decode_tensors(msg.tensors, segments)
    assert out["none"].shape == (0, 3) and out["none"].dtype == np.float32
    assert out["far"].shape == (4, 0)


def test_a_zero_size_tensor_alone_is_sent_with_no_payload_frame():
    msg = pb.Observation()
    assert pack_tensors([("empty", np.zeros((0, 3), np.float32))], msg.tensors.add) == []
    assert msg.tensors[0].byte_length == 0 and msg.tensors[0].byte_offset == 0


# --- checked arithmetic, BOOL bytes, frame and string limits ------------------------


def test_a_shape_whose_byte_count_overflows_64_bits_is_rejected():
    msg = pb.Observation()
    msg.tensors.add(key="x", dtype=pb.FLOAT64, shape=[2**31, 2**31, 4], byte_offset=0, byte_length=0)
    with pytest.raises(WireError, match="more than 2\\^64-1 bytes"):
        decode_tensors(msg.tensors, [])


def test_an_offset_plus_length_that_overflows_64_bits_is_rejected():
    msg = pb.Observation()
    msg.tensors.add(key="x", dtype=pb.UINT8, shape=[16], byte_offset=2**64 - 8, byte_length=16)
    with pytest.raises(WireError, match="overflows 64 bits"):
        decode_tensors(msg.tensors, [bytes(16)])


def test_bool_bytes_other_than_0_and_1_are_rejected():
    msg = pb.Observation()
    msg.tensors.add(key="mask", dtype=pb.BOOL, shape=[3], byte_offset=0, byte_length=3)
    assert decode_tensors(msg.tensors, [b"\x00\x01\x01"])["mask"].tolist() == [False, True, True]
    with pytest.raises(WireError, match="'mask': BOOL bytes must be 0 or 1"):
        decode_tensors(msg.tensors, [b"\x00\x02\x01"])


def test_empty_metadata_keys_are_rejected():
    with pytest.raises(WireError, match="metadata: empty key"):
        check_metadata({"": "v"})


def test_more_payload_frames_than_the_limit_are_rejected():
    split_frames([b"", b"env", *[b"x"] * 64], Limits())
    with pytest.raises(WireError, match="65 payload frames, limit is 64"):
        split_frames([b"", b"env", *[b"x"] * 65], Limits())


@pytest.mark.parametrize(
    "text, required, match",
    [
        ("", True, "must not be empty"),
        ("x" * 257, False, "longer than 256 bytes"),
        ("é" * 129, False, "longer than 256 bytes"),  # 258 UTF-8 bytes in 129 characters
        ("\udcff", False, "not valid UTF-8"),
    ],
)
def test_string_fields_are_checked_in_utf8_bytes(text, required, match):
    check_text("client.id", "é" * 128, 256, required=True)  # exactly 256 bytes: fine
    with pytest.raises(WireError, match=f"client.id: {match}"):
        check_text("client.id", text, 256, required=required)


def test_a_received_bfloat16_tensor_sent_on_stays_bfloat16():
    out, _, _ = round_trip({"b": BFloat16.from_float32(np.array([1.5, -2.0], np.float32))})
    received = out["b"]
    forwarded, wire, _ = round_trip({"b": received, "copy": received.reshape(2, 1).copy()})
    assert [t.dtype for t in wire.tensors] == [pb.BFLOAT16, pb.BFLOAT16]
    np.testing.assert_array_equal(forwarded["b"].view(np.uint16), received.view(np.uint16))
    # A plain uint16 array is still UINT16, whatever was sent before it.
    _, wire, _ = round_trip({"u": np.ones(2, np.uint16)})
    assert wire.tensors[0].dtype == pb.UINT16
