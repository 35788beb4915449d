"""Replies encoded by the native module (``Router.reply``) against ``protocol.encode_reply``.

The same reply, sent once by each encoder through one ROUTER to a real DEALER, must read
back the same through the client's decoder: every envelope field but the response id and
the clock, and every output's dtype, shape and bytes. What the native path cannot carry as
is goes to the Python encoder, which then words the refusal. Skipped when the module is
not built (``make setup-native``).
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional

import numpy as np
import pytest
import zmq

from inferential._envelope import decode_reply, parse_reply
from inferential.config.schema import TransportConfig
from inferential.result import Timing
from inferential.server.chunking import ChunkReply
from inferential.server.native_transport import NativeTransport
from inferential.server.protocol import encode_reply, native_chunk, native_outputs, native_timing, response_id_prefix
from inferential.wire import BFloat16, Limits, Status

pytest.importorskip("inferential_native")

LIMITS = Limits()
PEER = b"robot-7"


@pytest.fixture()
def pair() -> Iterator[tuple[NativeTransport, zmq.Socket]]:
    t = NativeTransport(TransportConfig(bind="tcp://127.0.0.1:0"))
    endpoint = t.bind()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.ROUTING_ID, PEER)
    dealer.setsockopt(zmq.RCVTIMEO, 5000)
    dealer.connect(endpoint)
    try:
        # The ROUTER knows the peer once the handshake is done: until then a send fails.
        deadline = time.monotonic() + 5
        while t.send([PEER, b"", b""]) is not None:
            assert time.monotonic() < deadline, "the DEALER never connected"
            time.sleep(0.01)
        dealer.recv_multipart()
        yield t, dealer
    finally:
        dealer.close()
        ctx.term()
        t.close()


def _native(t: NativeTransport, version: int, status: int, error: str, outputs: Any, timing: Optional[Timing],
            chunk: Optional[ChunkReply], retry_after_ms: int = 0) -> Optional[str]:  # fmt: skip
    prepared = native_outputs(outputs)
    assert prepared is not None
    native = t.native_reply()
    assert native is not None
    return native[0](PEER, "r1", "policy", 42, version, status, error, 123_456, retry_after_ms,
                 native_timing(timing), native_chunk(chunk), *prepared)  # fmt: skip


def _python(t: NativeTransport, version: int, status: int, error: str, outputs: Any, timing: Optional[Timing],
            chunk: Optional[ChunkReply], retry_after_ms: int = 0) -> Optional[str]:  # fmt: skip
    frames = encode_reply(
        identity=PEER, client_id="r1", model_id="policy", request_id=42, protocol_version=version, status=status,
        error=error, outputs=outputs, timing=timing, observation_timestamp_ns=123_456, now_ns=time.time_ns(),
        retry_after_ms=retry_after_ms, chunk=chunk,
    )  # fmt: skip
    return t.send(frames)


def _read(dealer: zmq.Socket) -> tuple[Any, Any]:
    frames = dealer.recv_multipart(copy=False)
    resp, payload = parse_reply(frames, LIMITS)
    resp.ClearField("response_id")
    resp.ClearField("timestamp_ns")
    resp.ClearField("tensors")  # their layout may differ; what they hold is compared below
    return resp, decode_reply(frames, LIMITS)


OUTPUTS = {
    "action": np.array([[0.5, -1.0, 2.0]], dtype=np.float32),
    "image": np.arange(5000, dtype=np.uint8).reshape(50, 100),  # a frame of its own
    "count": np.array(7, dtype=np.int64),  # 0-d
    "mask": np.array([True, False, True]),
    "empty": np.zeros((0, 3), dtype=np.float64),
    "wide": np.arange(700, dtype=np.int16),  # small, after the large one
    "note": "grasp",
}
TIMING = Timing(queue_wait_ms=0.25, inference_ms=1.5, total_ms=2.0, batch_size=3)
CASES = {
    "v2 OK with every kind of output": (2, Status.OK, "", OUTPUTS, TIMING, None),
    "v2 OK with a chunk": (
        2,
        Status.OK,
        "",
        {"actions": np.ones((8, 7), np.float32)},
        TIMING,
        ChunkReply(
            first_action_step=12,
            action_period_ms=20.0,
            predicted_delay_steps=1.5,
            actual_delay_steps=2.0,
            valid_until_ns=99,
        ),
    ),
    "v2 OK, a chunk without steps": (
        2,
        Status.OK,
        "",
        {"a": np.ones(3, np.float32)},
        TIMING,
        ChunkReply(action_period_ms=20.0, valid_until_ns=5),
    ),
    "v2 refusal with a retry hint": (2, Status.QUEUE_FULL, "queue full", None, TIMING, None, 40),
    "v2 error, no timing": (2, Status.DEADLINE_UNMEETABLE, "late", None, None, None),
    "1.x OK with outputs": (0, Status.OK, "", OUTPUTS, TIMING, None),
    "1.x error": (0, Status.MODEL_ERROR, "the model raised", None, TIMING, None),
    "1.x OK, nothing": (0, Status.OK, "", {}, None, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_both_encoders_send_the_same_reply(pair: tuple[NativeTransport, zmq.Socket], name: str) -> None:
    t, dealer = pair
    version, status, error, outputs, timing, chunk, *retry = CASES[name]
    assert _python(t, version, int(status), error, outputs, timing, chunk, *retry) is None
    want_env, want = _read(dealer)
    assert _native(t, version, int(status), error, outputs, timing, chunk, *retry) is None
    got_env, got = _read(dealer)
    assert got_env == want_env
    assert got.status == want.status and got.error == want.error
    for key, value in (outputs or {}).items():
        if isinstance(value, str):
            assert got.metadata[key] == want.metadata[key] == value
            continue
        a, b = got[key], want[key]
        assert a.dtype == b.dtype == value.dtype and a.shape == b.shape == value.shape, key
        assert a.tobytes() == b.tobytes() == value.tobytes(), key


def test_what_the_native_encoder_cannot_carry_as_is_goes_to_python() -> None:
    assert native_outputs(None) == (None, [])
    assert native_outputs({"a": np.ones(3, np.float32)}) is not None
    for value in (
        BFloat16.from_float32(np.ones(3, np.float32)),
        np.ones(3, dtype=">f4"),  # another byte order
        np.ones((4, 4), np.float32)[:, 1],  # not contiguous
        [1.0, 2.0],
        np.array(["a"], dtype=object),
    ):
        assert native_outputs({"x": value}) is None, value


def test_a_reply_over_the_limits_is_refused_and_nothing_is_sent(pair: tuple[NativeTransport, zmq.Socket]) -> None:
    t, dealer = pair
    long_key = "k" * (LIMITS.max_key_bytes + 1)
    for outputs in (
        {long_key: np.ones(1, np.float32)},
        {"x": np.ones((1,) * (LIMITS.max_dims + 1), np.float32)},
        {f"t{i}": np.ones(1, np.float32) for i in range(LIMITS.max_tensors + 1)},
        {"note": "v" * (LIMITS.max_metadata_value_bytes + 1)},
    ):
        with pytest.raises(ValueError, match="protocol limits"):
            _native(t, 2, int(Status.OK), "", outputs, TIMING, None)
    assert dealer.poll(200) == 0, "a refused reply was sent anyway"
    # A buffer that does not hold its shape's bytes is refused too.
    reply, _ = t.native_reply()
    with pytest.raises(ValueError, match="bytes for shape"):
        reply(
            PEER,
            "r1",
            "m",
            1,
            2,
            int(Status.OK),
            "",
            0,
            0,
            None,
            None,
            None,
            [("x", 1, (4,), np.ones(3, np.float32))],
        )


def test_a_reply_to_a_peer_that_is_gone_says_so(pair: tuple[NativeTransport, zmq.Socket]) -> None:
    t, _ = pair
    reply, _ = t.native_reply()
    got = reply(b"nobody", "r1", "m", 1, 2, int(Status.OK), "", 0, 0, None, None, None, [])
    assert got == "peer disconnected"


def test_replies_carry_unique_ids_and_a_batch_checks_for_input_once(pair: tuple[NativeTransport, zmq.Socket]) -> None:
    t, dealer = pair
    reply, check_input = t.native_reply()
    ids = []
    for i in range(5):
        # All but the last without the input check, as the replies of one batch go.
        assert reply(PEER, "r1", "m", i, 2, int(Status.OK), "", 0, 0, None, None, None, [], i == 4) is None
        resp, _ = parse_reply(dealer.recv_multipart(copy=False), LIMITS)
        assert resp.request_id == i
        ids.append(resp.response_id)
    check_input()
    assert len(set(ids)) == 5
    assert all(i.startswith(response_id_prefix("r")) for i in ids)
    assert not any(i.startswith(response_id_prefix("n")) for i in ids), "the prefix of the module's refusals"
