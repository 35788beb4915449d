"""Seed inputs for fuzz_decode_reply: valid and near-valid replies in its input layout.

Usage: python make_seeds.py DIR   (needs the Python client's generated protobuf module)
"""

import struct
import sys
from pathlib import Path

from inferential._proto import inferential_pb2 as pb


def frames_input(envelope: bytes, payload: list[bytes]) -> bytes:
    out = bytearray([0])
    for frame in [envelope, *payload]:
        out += struct.pack("<H", len(frame)) + frame
    return bytes(out)


def reply(**tensors) -> pb.ModelResponse:
    r = pb.ModelResponse(model_id="m", request_id=2, status=pb.OK, protocol_version=2)
    r.client.id = "r1"
    return r


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seeds = {}
    r = reply()
    t = r.tensors.add(key="x", dtype=pb.FLOAT32, shape=[2], byte_offset=0, byte_length=8, encoding=pb.RAW)
    seeds["f32"] = frames_input(r.SerializeToString(), [struct.pack("<2f", 1.0, 2.0)])
    t.byte_offset = 4
    seeds["outside"] = frames_input(r.SerializeToString(), [b"\0" * 8])
    r2 = reply()
    r2.tensors.add(key="d", dtype=pb.FLOAT64, shape=[1], byte_offset=2, byte_length=8)
    r2.tensors.add(key="b", dtype=pb.BOOL, shape=[2], byte_offset=0, byte_length=2)
    r2.metadata["k"] = "v"
    seeds["misaligned"] = frames_input(r2.SerializeToString(), [b"\x01\x00" + struct.pack("<d", 3.5)])
    r3 = reply()
    r3.status = pb.QUEUE_FULL
    r3.retry_after_ms = 20
    r3.timing.total_ms = 1.0
    seeds["queue_full"] = frames_input(r3.SerializeToString(), [])
    r4 = reply()
    r4.tensors.add(key="a", dtype=pb.UINT8, shape=[2, 2], byte_offset=0, byte_length=4)
    r4.tensors.add(key="c", dtype=pb.INT64, shape=[1], byte_offset=8, byte_length=8)
    seeds["two_frames"] = frames_input(r4.SerializeToString(), [b"\1\2\3\4\0\0\0\0", struct.pack("<q", -1)])
    r5 = reply()  # a chunked policy's reply: [3, 2] float32 actions and the chunk fields
    r5.tensors.add(key="actions", dtype=pb.FLOAT32, shape=[3, 2], byte_offset=0, byte_length=24)
    r5.first_action_step = 12
    r5.action_period_ms = 20.0
    r5.predicted_delay_steps = 1.5
    r5.actual_delay_steps = 1.25
    r5.valid_until_ns = 1_700_000_000_320_000_000
    seeds["chunk"] = frames_input(r5.SerializeToString(), [struct.pack("<6f", *range(6))])
    for name, data in seeds.items():
        (out / name).write_bytes(data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
