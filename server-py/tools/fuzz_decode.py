"""Fuzz the server's decode path: frames -> decode_request -> a request or a typed refusal.

    python server-py/tools/fuzz_decode.py --examples 20000     # make fuzz-server

Hypothesis generates frames three ways: raw bytes, well-formed envelopes with hostile
field values (shapes, offsets, dtypes, lengths, ids, metadata, hints) over random
payloads, and valid observations with bytes flipped. The property: decode_request
returns a decoded observation or raises Rejection (or Describe); anything else is an
escape, which in the server would be an exception on the receive path. Every escape is
counted and the first few printed; the exit status is 1 when there was any.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferential._proto import inferential_pb2 as pb
from inferential.server.protocol import Describe, Rejection, decode_request
from inferential.wire import Limits

LIMITS = Limits(max_message_bytes=1 << 20)

runs = 0
decoded = 0  # how many got through every check: the generators reach the end of the path too
escapes: list[str] = []

u64 = st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1))
i64 = st.one_of(st.integers(-2, 64), st.integers(-(2**63), 2**63 - 1))
text = st.one_of(st.text(max_size=8), st.text(max_size=300), st.just(""))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def envelopes(draw: st.DrawFn) -> list[bytes]:
    obs = pb.Observation()
    obs.client.id = draw(text)
    obs.client.type = draw(st.text(max_size=4))
    obs.model_id = draw(st.one_of(text, st.just("noop")))
    if draw(st.booleans()):  # often a plausible sender, so the checks past the ids are reached
        obs.client.id = "robot-1"
    obs.request_id = draw(u64)
    obs.timestamp_ns = draw(u64)
    obs.protocol_version = draw(st.integers(0, 2**32 - 1))
    obs.urgency = draw(floats)
    obs.latency_budget_ms = draw(floats)
    obs.control_rate_hz = draw(floats)
    for _ in range(draw(st.integers(0, 4))):
        t = obs.tensors.add()
        t.key = draw(text)
        t.dtype = draw(st.integers(0, 40))  # type: ignore[assignment]
        t.shape.extend(draw(st.lists(i64, max_size=10)))
        t.byte_offset = draw(u64)
        t.byte_length = draw(u64)
        t.encoding = draw(st.integers(0, 5))  # type: ignore[assignment]
    for k, v in draw(st.dictionaries(text, text, max_size=4)).items():
        obs.metadata[k] = v
    payload = draw(st.lists(st.binary(max_size=256), max_size=4))
    return [draw(st.binary(max_size=8)), b"", obs.SerializeToString(), *payload]


@st.composite
def flipped(draw: st.DrawFn) -> list[bytes]:
    frames = draw(envelopes())
    env = bytearray(frames[2])
    for _ in range(draw(st.integers(1, 4))):
        if env:
            env[draw(st.integers(0, len(env) - 1))] = draw(st.integers(0, 255))
    return [frames[0], frames[1], bytes(env), *frames[3:]]


raw = st.lists(st.binary(max_size=64), max_size=6)


def check(frames: list[bytes]) -> None:
    global runs, decoded
    runs += 1
    try:
        decode_request(frames, LIMITS)
        decoded += 1
    except (Rejection, Describe):
        pass
    except Exception:  # an escape: recorded, and the search goes on
        escapes.append(f"{frames!r}\n{traceback.format_exc()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=20000, help="examples per generator (three generators)")
    args = parser.parse_args()
    start = time.monotonic()
    for strategy in (raw, envelopes(), flipped()):
        run = settings(
            max_examples=args.examples, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )(given(strategy)(check))
        run()
    took = time.monotonic() - start
    print(f"fuzz-server: {runs} decodes in {took:.0f} s ({decoded} accepted, the rest refused), {len(escapes)} escapes")
    for e in escapes[:3]:
        print(e)
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
