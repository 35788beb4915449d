"""The synchronous client against a scripted ROUTER peer over real loopback TCP sockets."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq

from inferential import (
    ClientOptions,
    Connection,
    ConnectionClosed,
    DeadlineUnmeetable,
    InferentialError,
    ProtocolError,
    QueueFull,
    RequestFailed,
    RequestTimeout,
    ServerUnavailable,
    Status,
    UnknownModel,
)
from inferential._proto import inferential_pb2 as pb

from client_peer import RouterPeer, echo_doubled, reply_frames, unused_tcp_endpoint

FAST = dict(send_timeout_ms=500, reconnect_ivl_ms=10, reconnect_ivl_max_ms=50)


@pytest.fixture
def conn(peer):
    c = Connection(server=peer.address, client_id="agent-01", client_type="sensor", **FAST)
    yield c
    c.close()


def test_readme_quick_start_works_as_written(peer, conn):
    model = conn.model("policy-v2", latency_budget_ms=30.0)
    readings = np.array([0.0, -0.78, 0.0, -2.35, 0.0, 1.57, 0.78], dtype=np.float32)
    model.observe(urgency=0.8, sensor_readings=readings, prompt="classify anomaly")
    got = peer.recv()
    assert got.frames[0] == b"" and len(got.frames) == 3  # [b"", envelope, payload]
    assert got.obs.metadata["prompt"] == "classify anomaly" and got.obs.latency_budget_ms == 30.0
    np.testing.assert_array_equal(got.tensors["sensor_readings"], readings)
    peer.reply(got, tensors={"actions": readings * 2})
    result = model.get_result(timeout_ms=1000)
    assert result is not None
    output = result["actions"]
    assert isinstance(output, np.ndarray)
    np.testing.assert_array_equal(output, readings * 2)


def test_request_ids_start_at_one_increase_and_are_echoed(peer, conn):
    model = conn.model("policy")
    for expected in (1, 2, 3):
        before = time.time_ns()
        rid = model.observe(state=np.zeros(2, np.float32))
        got = peer.recv()
        assert rid == expected == got.obs.request_id
        assert got.obs.protocol_version == 2
        assert (got.obs.client.id, got.obs.client.type) == ("agent-01", "sensor")
        assert before <= got.obs.timestamp_ns <= time.time_ns()
        peer.reply(got)
        result = model.get_result(timeout_ms=1000)
        assert result.request_id == rid and result.ok and result.round_trip_ms > 0
    assert conn.stats.sent == 3 and conn.stats.by_status == {"OK": 3}


def test_replies_are_routed_per_model(peer, conn):
    a, b = conn.model("model-a"), conn.model("model-b")
    ra = a.observe(x=np.ones(1))
    rb = b.observe(x=np.ones(1))
    got_a, got_b = peer.recv(), peer.recv()
    peer.reply(got_b, tensors={"who": np.array([2])})
    peer.reply(got_a, tensors={"who": np.array([1])})
    res_a = a.get_result(timeout_ms=1000)
    res_b = b.get_result(timeout_ms=1000)
    assert (res_a.model_id, res_a.request_id, int(res_a["who"][0])) == ("model-a", ra, 1)
    assert (res_b.model_id, res_b.request_id, int(res_b["who"][0])) == ("model-b", rb, 2)
    assert conn.stats.stale_dropped == 0


def test_a_stale_reply_is_dropped_and_counted(peer, conn):
    model = conn.model("policy")
    model.observe(x=np.ones(1))
    r2 = model.observe(x=np.ones(1))
    first, second = peer.recv(), peer.recv()
    peer.reply(second)
    peer.reply(first)  # arrives after the newer one
    assert model.get_result(timeout_ms=1000).request_id == r2
    assert model.get_result(timeout_ms=100) is None
    assert conn.stats.stale_dropped == 1


def test_unknown_duplicate_and_malformed_replies_are_counted_never_raised(peer, conn):
    model = conn.model("policy")
    r1 = model.observe(x=np.ones(1))
    got = peer.recv()
    peer.send(got.identity, reply_frames("policy", 999))  # unknown id
    peer.send(got.identity, [b"", b"\xff\xff garbage"])  # not a ModelResponse
    peer.send(got.identity, [b"oops", b""])  # no delimiter
    peer.reply(got)
    assert model.get_result(timeout_ms=1000).request_id == r1  # later than the bad ones: all processed
    assert (conn.stats.unknown_dropped, conn.stats.malformed_dropped) == (1, 2)
    r2 = model.observe(x=np.ones(1))
    got2 = peer.recv()
    peer.reply(got)  # duplicate of r1
    peer.reply(got2)
    assert model.get_result(timeout_ms=1000).request_id == r2
    assert conn.stats.unknown_dropped == 2 and conn.stats.received == 6


def test_an_error_status_raises_the_typed_error(peer, conn):
    model = conn.model("policy")
    rid = model.observe(x=np.ones(1))
    peer.reply(peer.recv(), status=pb.QUEUE_FULL, error="per-robot cap reached")
    with pytest.raises(QueueFull) as info:
        model.get_result(timeout_ms=1000)
    err = info.value
    assert isinstance(err, RequestFailed) and isinstance(err, InferentialError)
    assert (err.status, err.request_id, err.retryable) == (Status.QUEUE_FULL, rid, True)
    assert err.message == "per-robot cap reached" and "QUEUE_FULL" in str(err)

    rid = model.observe(x=np.ones(1))
    peer.reply(peer.recv(), status=pb.UNKNOWN_MODEL, error="no model 'policy'")
    with pytest.raises(UnknownModel) as info:
        model.get_result(timeout_ms=1000)
    assert info.value.retryable is False and info.value.request_id == rid
    assert conn.stats.by_status == {"QUEUE_FULL": 1, "UNKNOWN_MODEL": 1}


def test_a_superseded_reply_is_skipped_by_get_result(peer, conn):
    model = conn.model("policy")
    model.observe(x=np.ones(1))
    r2 = model.observe(x=np.ones(1))
    first, second = peer.recv(), peer.recv()
    peer.reply(first, status=pb.SUPERSEDED)
    assert model.get_result(timeout_ms=50) is None
    peer.reply(second)
    assert model.get_result(timeout_ms=1000).request_id == r2


def test_a_non_array_keyword_raises_type_error_and_sends_nothing(peer, conn):
    model = conn.model("policy")
    with pytest.raises(TypeError, match="'gain'"):
        model.observe(state=np.zeros(3), gain=0.5)
    assert conn.stats.sent == 0 and peer.nothing_received()


def test_default_client_id_is_generated_and_valid(peer):
    with Connection(server=peer.endpoint, **FAST) as c1, Connection(server=peer.endpoint, **FAST) as c2:
        assert c1.client_id and c1.client_id != c2.client_id
        assert f"-{os.getpid()}-" in c1.client_id
        c1.model("m").observe(x=np.ones(1))
        assert peer.recv().obs.client.id == c1.client_id
    with Connection(server=peer.endpoint, client_id=42, **FAST) as c3:
        c3.model("m").observe(x=np.ones(1))
        assert peer.recv().obs.client.id == "42"


def test_observe_raises_server_unavailable_within_bounds_when_no_server_listens():
    with Connection(server=unused_tcp_endpoint()) as conn:  # default options
        model = conn.model("policy")
        start = time.monotonic()
        with pytest.raises(ServerUnavailable):
            model.observe(x=np.ones(1))
        assert time.monotonic() - start < 3.0
        assert conn.stats.send_failed == 1 and conn.stats.sent == 0


def test_options_reach_the_socket_and_zmq_assigns_the_routing_id():
    opts = ClientOptions(
        reconnect_ivl_ms=7,
        reconnect_ivl_max_ms=700,
        heartbeat_ivl_ms=300,
        heartbeat_timeout_ms=900,
        send_timeout_ms=250,
        send_hwm=11,
        recv_hwm=13,
    )
    with Connection(server=unused_tcp_endpoint(), client_id="robot", options=opts) as conn:
        s = conn._socket
        assert (s.getsockopt(zmq.RECONNECT_IVL), s.getsockopt(zmq.RECONNECT_IVL_MAX)) == (7, 700)
        # Liveness by TCP keepalive, never a ZMTP PING timer (inferential.liveness).
        assert s.getsockopt(zmq.HEARTBEAT_IVL) == 0
        keepalive = [zmq.TCP_KEEPALIVE, zmq.TCP_KEEPALIVE_IDLE, zmq.TCP_KEEPALIVE_INTVL, zmq.TCP_KEEPALIVE_CNT]
        assert [s.getsockopt(o) for o in keepalive] == [1, 1, 1, 1]
        assert s.getsockopt(zmq.TCP_MAXRT) == 900
        assert (s.getsockopt(zmq.SNDTIMEO), s.getsockopt(zmq.SNDHWM), s.getsockopt(zmq.RCVHWM)) == (250, 11, 13)
        assert s.getsockopt(zmq.IMMEDIATE) == 1 and s.getsockopt(zmq.LINGER) == 0
        assert s.getsockopt(zmq.ROUTING_ID) == b""  # never the client_id (the 1.x reply-stealing bug)
    with Connection(server=unused_tcp_endpoint()) as conn:
        s = conn._socket
        assert (s.getsockopt(zmq.RECONNECT_IVL), s.getsockopt(zmq.RECONNECT_IVL_MAX)) == (100, 5000)


def test_option_overrides_and_validation():
    with Connection(server="127.0.0.1:1", reconnect_max_ms=900, send_timeout_ms=5) as conn:
        assert conn.options.reconnect_ivl_max_ms == 900 and conn.options.send_timeout_ms == 5
        assert conn.server == "tcp://127.0.0.1:1"
    with pytest.raises(TypeError, match="sendtimeout"):
        Connection(server="127.0.0.1:1", sendtimeout=5)
    with pytest.raises(ValueError, match="reconnect_ivl_ms"):
        ClientOptions(reconnect_ivl_ms=-1)
    with pytest.raises(ValueError, match="reconnect_ivl_max_ms"):
        ClientOptions(reconnect_ivl_ms=500, reconnect_ivl_max_ms=100)


def test_reconnect_ivl_ms_0_is_refused_since_libzmq_reads_it_as_never_reconnect():
    with pytest.raises(ValueError, match="never reconnect"):
        ClientOptions(reconnect_ivl_ms=0)
    with pytest.raises(ValueError, match="never reconnect"):
        Connection(server="127.0.0.1:1", reconnect_ivl_ms=0)
    assert ClientOptions(reconnect_ivl_ms=1).reconnect_ivl_ms == 1


def test_a_reconnect_delivers_fresh_observations_only():
    first = RouterPeer()
    endpoint = first.endpoint
    conn = Connection(server=endpoint, send_timeout_ms=100, reconnect_ivl_ms=10, reconnect_ivl_max_ms=20)
    try:
        model = conn.model("policy")
        model.observe(x=np.ones(1))
        first.recv()
        first.close()
        time.sleep(0.1)  # the client sees the disconnect
        with pytest.raises(ServerUnavailable):
            model.observe(x=np.ones(1))  # not queued for later
        second = RouterPeer(endpoint)
        try:
            deadline = time.monotonic() + 3
            while True:
                try:
                    rid = model.observe(x=np.ones(1))
                    break
                except ServerUnavailable:
                    assert time.monotonic() < deadline, "no reconnection within 3 s"
            got = second.recv()
            assert got.obs.request_id == rid  # the first thing the new server sees is the fresh one
            assert second.nothing_received()
            second.reply(got)
            assert model.get_result(timeout_ms=1000).request_id == rid
        finally:
            second.close()
    finally:
        conn.close()


def test_two_connections_with_one_client_id_each_get_their_own_replies(peer):
    peer.serve(echo_doubled)
    with (
        Connection(server=peer.address, client_id="robot", **FAST) as c1,
        Connection(server=peer.address, client_id="robot", **FAST) as c2,
    ):
        m1, m2 = c1.model("policy"), c2.model("policy")
        for i in range(3):
            r1 = m1.request(timeout_ms=2000, x=np.array([i], np.int64))
            r2 = m2.request(timeout_ms=2000, x=np.array([100 + i], np.int64))
            assert int(r1["actions"][0]) == 2 * i and int(r2["actions"][0]) == 2 * (100 + i)


def test_request_returns_the_reply_to_its_own_observation_with_large_tensors(peer, conn):
    peer.serve(echo_doubled)
    model = conn.model("policy")
    image = np.random.default_rng(0).integers(0, 127, (224, 224, 3), dtype=np.uint8)
    result = model.request(timeout_ms=2000, image=image, state=np.zeros(7, np.float32))
    np.testing.assert_array_equal(result["actions"], image * 2)
    assert result.timing.batch_size == 1 and result.request_id == 1
    assert model.get_result(timeout_ms=0) is None  # request() replies never reach get_result


def test_request_raises_request_timeout_and_a_late_reply_is_stale(peer, conn):
    model = conn.model("policy")
    start = time.monotonic()
    with pytest.raises(RequestTimeout) as info:
        model.request(timeout_ms=50, x=np.ones(1))
    assert time.monotonic() - start < 1.0 and isinstance(info.value, TimeoutError)
    peer.reply(peer.recv())
    assert model.get_result(timeout_ms=100) is None
    assert conn.stats.stale_dropped == 1


def test_request_raises_the_typed_error(peer, conn):
    peer.serve(lambda got: {"status": pb.DEADLINE_UNMEETABLE, "error": "needs 80 ms, 20 left"})
    with pytest.raises(DeadlineUnmeetable, match="needs 80 ms") as info:
        conn.model("policy").request(timeout_ms=2000, x=np.ones(1))
    assert info.value.retryable and info.value.request_id == 1


def test_a_1x_server_gets_one_payload_frame_and_its_unnumbered_reply_is_matched(peer):
    with Connection(server=peer.address, single_payload_frame=True, **FAST) as conn:
        model = conn.model("policy")
        big = np.arange(10_000, dtype=np.float32)
        rid = model.observe(a=np.ones(2, np.float32), big=big)
        got = peer.recv()
        assert len(got.payload_frames) == 1
        np.testing.assert_array_equal(got.tensors["big"], big)
        peer.send(
            got.identity,
            reply_frames(
                "policy",
                0,
                status=0,
                protocol_version=0,
                timing=None,
                tensors={"actions": np.ones(3)},
                single_payload_frame=True,
            ),
        )
        result = model.get_result(timeout_ms=1000)
        assert result.ok and result.request_id == rid and result.timing is None


def test_a_closed_connection_raises_connection_closed(peer):
    conn = Connection(server=peer.address, **FAST)
    model = conn.model("policy")
    conn.close()
    conn.close()  # idempotent
    with pytest.raises(ConnectionClosed):
        model.observe(x=np.ones(1))
    with pytest.raises(ConnectionClosed):
        model.get_result()


def test_a_v2_reply_with_request_id_0_fails_the_waiting_request_at_once_with_the_servers_reason(peer, conn):
    model = conn.model("policy")

    def unreadable(got):
        # What a server answers to an observation whose envelope it could not parse.
        peer.send(got.identity, reply_frames("", 0, status=pb.INVALID_REQUEST, error="envelope is not valid"))
        return None

    peer.serve(unreadable)
    start = time.monotonic()
    with pytest.raises(ProtocolError, match="envelope is not valid"):
        model.request(timeout_ms=5000, x=np.ones(1))
    assert time.monotonic() - start < 2.5  # well before its own timeout
    assert conn.stats.malformed_dropped == 1


def test_retry_after_ms_is_exposed_and_the_client_does_not_retry(peer, conn):
    def full(got):
        frames = reply_frames(got.obs.model_id, got.obs.request_id, status=pb.QUEUE_FULL, error="full")
        resp = pb.ModelResponse.FromString(frames[1])
        resp.retry_after_ms = 25
        peer.send(got.identity, [b"", resp.SerializeToString()])
        return None

    peer.serve(full)
    with pytest.raises(QueueFull) as info:
        conn.model("policy").request(timeout_ms=2000, x=np.ones(1))
    assert info.value.retry_after_ms == 25 and info.value.result.retry_after_ms == 25
    assert conn.stats.sent == 1  # nothing was sent again


_UNREAD_REPLIES_THEN_SERVER_GONE = """
import time, zmq
from inferential import ClientOptions, Connection

# A server that answers a robot which is not reading its replies, then goes away: with
# ZMTP PINGs on the robot's socket, libzmq 4.3.x aborted the robot's process here.
ctx = zmq.Context()
for _ in range(4):
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    with Connection(server=f"tcp://127.0.0.1:{port}", client_id="robot",
                    options=ClientOptions(heartbeat_ivl_ms=100, recv_hwm=5)) as conn:
        conn.model("m").observe(note="hi")
        identity = router.recv_multipart()[0]
        for _ in range(200):
            try:
                router.send_multipart([identity, b"", b"x" * 100_000], zmq.NOBLOCK)
            except zmq.Again:
                break
        time.sleep(0.2)
        router.close()  # the server goes away while the robot's input is paused
        time.sleep(0.4)
print("survived")
"""


def test_robot_survives_server_leaving_while_replies_are_unread():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _UNREAD_REPLIES_THEN_SERVER_GONE], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert "survived" in proc.stdout
