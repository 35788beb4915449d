"""The client against the real Python server (started by the test): the protocol fixes end to end.

Skipped when only the client distribution is installed.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import zmq

pytest.importorskip("inferential.server")

from inferential import AsyncConnection, Connection, Limits, RequestTimeout, WireError  # noqa: E402
from inferential._proto import inferential_pb2 as pb  # noqa: E402
from inferential.config import InferentialConfig  # noqa: E402
from inferential.server import BackgroundServer, Server  # noqa: E402
from inferential.wire import decode_tensors, itemsize, pack_tensors  # noqa: E402


@pytest.fixture(scope="module")
def endpoint():
    config = InferentialConfig.model_validate({"transport": {"bind": "tcp://127.0.0.1:0"}, "models": []})
    server = Server(config=config, models={"echo": "inferential.models.testing:Echo"})
    background = BackgroundServer(server)
    yield background.start()
    background.stop()


def test_a_zero_size_tensor_alone_travels_with_no_payload_frame_both_ways(endpoint):
    with Connection(server=endpoint, client_id="zero") as conn:
        result = conn.model("echo").request(timeout_ms=5000, empty=np.zeros((0, 3), np.float32))
    assert result.ok and result["empty"].shape == (0, 3) and result["empty"].dtype == np.float32


def test_the_servers_reply_aligns_every_tensor_offset(endpoint):
    inputs = [("a", np.arange(3, dtype=np.uint8)), ("b", np.ones(2, np.float64)), ("c", np.ones(1, np.int16))]
    raw = _raw(endpoint)
    try:
        obs = pb.Observation(model_id="echo", request_id=3, protocol_version=2)
        obs.client.id = "align"
        payload = pack_tensors(inputs, obs.tensors.add)
        raw.send_multipart([b"", obs.SerializeToString(), *payload])
        resp, reply_payload = _reply(raw)
        assert resp.status == pb.OK and len(resp.tensors) == 3
        for t in resp.tensors:
            assert t.byte_offset % itemsize(t.dtype) == 0, t.key
        out = decode_tensors(resp.tensors, reply_payload)
        for key, arr in inputs:
            np.testing.assert_array_equal(out[key], arr)
    finally:
        raw.close(linger=0)


def test_an_invalid_utf8_client_id_is_answered_invalid_request_naming_it_with_the_request_id(endpoint):
    raw = _raw(endpoint)
    try:
        obs = pb.Observation(model_id="echo", request_id=41, protocol_version=2)
        obs.client.id = "XX"
        envelope = obs.SerializeToString().replace(b"XX", b"\xff\xfe")
        raw.send_multipart([b"", envelope])
        resp, _ = _reply(raw)
        assert resp.status == pb.INVALID_REQUEST and resp.request_id == 41
        assert "client.id is not valid UTF-8" in resp.error and resp.model_id == "echo"
    finally:
        raw.close(linger=0)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda o: setattr(o.client, "type", "t" * 257), "client.type: longer than 256"),
        (lambda o: setattr(o, "auth_token", "s" * 1025), "auth_token: longer than 1024"),
        (lambda o: o.metadata.__setitem__("", "v"), "metadata: empty key"),
    ],
)
def test_the_server_enforces_the_string_limits_and_the_client_raises_its_reason(endpoint, mutate, match):
    raw = _raw(endpoint)
    try:
        obs = pb.Observation(model_id="echo", request_id=5, protocol_version=2)
        obs.client.id = "limits"
        mutate(obs)
        raw.send_multipart([b"", obs.SerializeToString()])
        resp, _ = _reply(raw)
        assert resp.status == pb.INVALID_REQUEST and resp.request_id == 5 and match in resp.error
    finally:
        raw.close(linger=0)


def test_bool_bytes_other_than_0_and_1_are_answered_invalid_request(endpoint):
    raw = _raw(endpoint)
    try:
        obs = pb.Observation(model_id="echo", request_id=8, protocol_version=2)
        obs.client.id = "bools"
        obs.tensors.add(key="mask", dtype=pb.BOOL, shape=[2], byte_offset=0, byte_length=2, encoding=pb.RAW)
        raw.send_multipart([b"", obs.SerializeToString(), b"\x01\x07"])
        resp, _ = _reply(raw)
        assert resp.status == pb.INVALID_REQUEST and resp.request_id == 8 and "BOOL bytes" in resp.error
    finally:
        raw.close(linger=0)


def test_a_client_id_at_the_limit_is_served_and_one_byte_over_is_refused_locally(endpoint):
    with Connection(server=endpoint, client_id="c" * 256) as conn:
        assert conn.model("echo").request(timeout_ms=5000, x=np.ones(1)).ok
    with pytest.raises(WireError, match="client_id: longer than 256 bytes"):
        Connection(server=endpoint, client_id="c" * 257)


def _raw(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _reply(sock: zmq.Socket, timeout_s: float = 5.0) -> tuple[pb.ModelResponse, list[bytes]]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if sock.poll(50):
            frames = sock.recv_multipart()
            return pb.ModelResponse.FromString(frames[1]), frames[2:]
    raise AssertionError("no reply from the server")


def test_server_info_reports_the_protocol_version_and_limits(endpoint):
    with Connection(server=endpoint, client_id="asker") as conn:
        info = conn.server_info(timeout_ms=5000)
        assert conn.stats.by_status == {"OK": 1} and conn.stats.unknown_dropped == 0
    assert info.protocol_version == 2 and info.server.startswith("inferential-server")
    assert info.limits == Limits()


def test_server_info_from_asyncio(endpoint):
    async def ask():
        async with AsyncConnection(server=endpoint, client_id="async-asker") as conn:
            return await conn.server_info(timeout_ms=5000)

    assert asyncio.run(ask()).protocol_version == 2


def test_server_info_times_out_against_a_peer_that_never_answers_like_a_1x_server():
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Connection(server=f"tcp://127.0.0.1:{port}", client_id="asker") as conn:
            started = time.monotonic()
            with pytest.raises(RequestTimeout, match="1.x server"):
                conn.server_info(timeout_ms=200)
            assert 0.15 < time.monotonic() - started < 2.0
        frames = silent.recv_multipart()
        obs = pb.Observation.FromString(frames[2])
        assert obs.model_id == "" and obs.metadata == {"inferential.describe": "1"} and obs.protocol_version == 2
    finally:
        silent.close(linger=0)
