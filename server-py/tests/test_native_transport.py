"""The native transport (inferential_native, server-native/) against the Python one.

The rules: the Rust check accepts exactly what ``decode_request`` accepts (the conformance
decode corpus replayed through both), an accepted observation decodes to the same arrays,
and a real server on each transport answers the same frames with the same status and
error text. Then what the transport itself promises: idle costs no CPU, a reply to a peer
that is gone is reported, the backlog bound holds, close is idempotent, CURVE works.
Skipped when the module is not built (``make setup-native``).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zmq
from server_helpers import running_server
from test_protocol_cases import CASES, observation_frames

from inferential._proto import inferential_pb2 as pb
from inferential.config.schema import TransportConfig
from inferential.server.native_transport import NativeTransport, native_available, wants_native
from inferential.server.protocol import Rejection, decode_request
from inferential.wire import Limits, pack_tensors

native = pytest.importorskip("inferential_native")

LIMITS = Limits()


def _python_verdict(frames: list[bytes]):
    try:
        return decode_request(frames, LIMITS)[1]
    except Rejection as rej:
        return rej


def _native_decode(frames: list[bytes]):
    """What the native transport hands the loop for these frames (None: refused)."""
    spans = native.check_frames(frames[1:], LIMITS.max_message_bytes)
    if spans is None:
        return None
    payload = frames[3:]
    # The envelope as the module hands it over: a buffer object, not bytes.
    item = (frames[0], memoryview(frames[2]), payload, spans, sum(len(f) for f in payload), 0)
    return NativeTransport._decode(item)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_check_accepts_exactly_what_the_python_decoder_accepts(case) -> None:
    frames = observation_frames(case.spec["reply"])
    expected = _python_verdict(frames)
    got = _native_decode(frames)
    if isinstance(expected, Rejection):
        assert got is None, f"native accepted what Python refuses: {expected}"
        return
    assert got is not None, "native refused what Python accepts"
    assert got.payload_bytes == expected.payload_bytes
    assert got.obs == expected.obs
    assert set(got.inputs) == set(expected.inputs)
    for key, value in expected.inputs.items():
        if isinstance(value, str):
            assert got.inputs[key] == value
        else:
            assert got.inputs[key].dtype == value.dtype and got.inputs[key].shape == value.shape, key
            assert np.ascontiguousarray(got.inputs[key]).tobytes() == np.ascontiguousarray(value).tobytes(), key


def test_random_mutations_never_accept_what_python_refuses() -> None:
    rng = np.random.default_rng(16)
    obs = pb.Observation(model_id="m", request_id=1, protocol_version=2)
    obs.client.id = "r1"
    obs.metadata["task"] = "pick"
    arrays = [
        ("a", np.arange(6, dtype=np.float32)),
        ("b", np.array([1, 0, 1], np.bool_)),
        ("c", np.zeros(700, np.int16)),
    ]
    payload = [bytes(p) for p in pack_tensors(arrays, obs.tensors.add)]
    base = [b"peer", b"", obs.SerializeToString(), *payload]
    checked = 0
    for _ in range(3000):
        frames = list(base)
        which = int(rng.integers(2, len(frames)))
        raw = bytearray(frames[which])
        for _ in range(int(rng.integers(1, 4))):
            if raw:
                raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
        frames[which] = bytes(raw)
        expected = _python_verdict(frames)
        got = _native_decode(frames)
        if isinstance(expected, Rejection):
            assert got is None, (frames, expected)
        elif got is not None:
            checked += 1
            for key, value in expected.inputs.items():
                if not isinstance(value, str):
                    assert np.ascontiguousarray(got.inputs[key]).tobytes() == np.ascontiguousarray(value).tobytes()
    assert checked > 100  # most mutations of tensor bytes leave a valid message


def _ask(endpoint: str, messages: list[list[bytes]]) -> list[tuple[int, str, int]]:
    """(status, error, request_id) of the reply to each message, sent one at a time."""
    ctx = zmq.Context()
    out = []
    try:
        for frames in messages:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send_multipart(frames)
            if sock.poll(3000):
                reply = pb.ModelResponse.FromString(sock.recv_multipart()[1])
                out.append((reply.status, reply.error, reply.request_id))
            else:
                out.append((-1, "no reply", 0))
            sock.close()
    finally:
        ctx.term()
    return out


def test_both_transports_answer_the_corpus_alike() -> None:
    """Every observation case of the decode corpus through a real server on each path:
    the same status, error text and request id (the valid ones name an unserved model)."""
    messages = [observation_frames(c.spec["reply"])[1:] for c in CASES]
    answers = {}
    for mode in ("off", "on"):
        with running_server(transport={"bind": "tcp://127.0.0.1:0", "native": mode}) as (server, endpoint):
            assert isinstance(server._transport, NativeTransport) == (mode == "on")
            answers[mode] = _ask(endpoint, messages)
    for case, py, nat in zip(CASES, answers["off"], answers["on"], strict=True):
        assert nat == py, case.name
    statuses = {a[0] for a in answers["on"]}
    assert pb.INVALID_REQUEST in statuses and pb.UNKNOWN_MODEL in statuses


def test_a_request_round_trips_with_tensors_and_metadata() -> None:
    from inferential import Connection

    with running_server(transport={"bind": "tcp://127.0.0.1:0", "native": "on"}) as (server, endpoint):
        assert isinstance(server._transport, NativeTransport)
        conn = Connection(endpoint, client_id="r1")
        try:
            x = np.arange(150_000, dtype=np.uint8).reshape(250, 600)
            y = np.linspace(0, 1, 7, dtype=np.float64)
            result = conn.model("echo").request(x=x, y=y, task="pick", timeout_ms=5000)
            assert result.ok
            np.testing.assert_array_equal(result["x"], x)
            np.testing.assert_array_equal(result["y"], y)
            # A describe request (no model id) is refused by the check and answered by the
            # Python decoder's path.
            assert conn.server_info(timeout_ms=5000)
            # The checked observations were not decoded a second time by the Python path.
            assert server._transport.rechecked == 0
        finally:
            conn.close()


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def test_idle_costs_no_cpu() -> None:
    with running_server(transport={"bind": "tcp://127.0.0.1:0", "native": "on"}):
        time.sleep(0.3)
        before = _cpu_s()
        time.sleep(2.0)
        used = _cpu_s() - before
    # The test process holds the server's loop, the native I/O thread and libzmq's threads.
    assert used < 0.05, f"{used * 1000:.1f} ms of CPU in 2 s idle"


def test_a_reply_to_a_peer_that_is_gone_is_reported_and_close_is_idempotent() -> None:
    t = NativeTransport(TransportConfig(bind="tcp://127.0.0.1:0"))
    t.bind()
    try:
        assert t.send([b"nobody", b"", b"x"]) == "peer disconnected"
        assert t.backlog_bound_ns() >= 0
    finally:
        t.close()
        t.close()


def test_the_backlog_bound_covers_the_time_a_message_waited() -> None:
    """A message that sat in the queue while the loop was busy is bounded by at least that long."""
    import asyncio

    t = NativeTransport(TransportConfig(bind="tcp://127.0.0.1:0"))
    endpoint = t.bind()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    bounds: list[int] = []
    loop = asyncio.new_event_loop()
    try:
        dealer.send_multipart([b"", b"not an observation"])
        time.sleep(0.2)  # the loop is not running: the message waits
        t.attach(loop, lambda frames: bounds.append(t.backlog_bound_ns()), lambda: None)
        loop.run_until_complete(asyncio.sleep(0.1))
    finally:
        t.close()
        loop.close()
        dealer.close()
        ctx.term()
    assert len(bounds) == 1 and bounds[0] >= 150_000_000


def test_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert native_available()
    monkeypatch.setenv("INFERENTIAL_TRANSPORT", "python")
    assert not wants_native(TransportConfig(native="auto"))
    assert wants_native(TransportConfig(native="on"))
    monkeypatch.setenv("INFERENTIAL_TRANSPORT", "native")
    assert wants_native(TransportConfig(native="auto"))
    assert not wants_native(TransportConfig(native="off"))
    # YAML reads a bare on/off as a boolean.
    assert TransportConfig.model_validate({"native": True}).native == "on"
    assert TransportConfig.model_validate({"native": False}).native == "off"


def test_without_the_module_auto_falls_back_and_on_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from inferential.server import native_transport
    from inferential.server.transport import RouterTransport

    monkeypatch.setattr(native_transport, "_native", None)
    monkeypatch.delenv("INFERENTIAL_TRANSPORT", raising=False)
    transport = native_transport.make_transport(TransportConfig(bind="tcp://127.0.0.1:0", native="auto"))
    assert type(transport) is RouterTransport
    with pytest.raises(RuntimeError, match="not built"):
        native_transport.make_transport(TransportConfig(native="on"))


@pytest.mark.skipif(not zmq.has("curve"), reason="pyzmq's libzmq has no CURVE")
def test_curve_on_the_native_transport() -> None:
    from inferential import ClientOptions, Connection
    from inferential.errors import RequestTimeout, ServerUnavailable, Unauthenticated

    server_public, server_secret = (k.decode() for k in zmq.curve_keypair())
    keys = {n: tuple(k.decode() for k in zmq.curve_keypair()) for n in ("arm-a", "arm-b", "stranger")}
    known = [{"id": n, "curve_public_key": keys[n][0]} for n in ("arm-a", "arm-b")]

    def options(name: str) -> ClientOptions:
        public, secret = keys[name]
        return ClientOptions(curve_server_key=server_public, curve_public_key=public, curve_secret_key=secret)

    with running_server(
        transport={"bind": "tcp://127.0.0.1:0", "native": "on"},
        auth={"curve_secret_key": server_secret},
        clients={"known": known},
    ) as (server, endpoint):
        assert isinstance(server._transport, NativeTransport)
        x = np.zeros(3, np.float32)
        conn = Connection(endpoint, client_id="arm-a", options=options("arm-a"))
        try:
            assert conn.model("noop").request(x=x, timeout_ms=5000).ok
        finally:
            conn.close()
        # arm-b's key speaking as arm-a: UNAUTHENTICATED.
        conn = Connection(endpoint, client_id="arm-a", options=options("arm-b"))
        try:
            with pytest.raises(Unauthenticated, match="bound to client 'arm-b'"):
                conn.model("noop").request(x=x, timeout_ms=5000)
        finally:
            conn.close()
        # A key not listed: the handshake is refused, nothing comes back.
        conn = Connection(endpoint, client_id="stranger", options=options("stranger"))
        try:
            with pytest.raises((RequestTimeout, ServerUnavailable)):
                conn.model("noop").request(x=x, timeout_ms=800)
        finally:
            conn.close()


def test_a_loop_that_falls_behind_loses_nothing() -> None:
    """More messages than the module's queue holds arrive while the loop is not running: the
    I/O thread stops reading at its queue's bound (libzmq's HWMs then hold the rest back) and
    every message is delivered once the loop runs."""
    import asyncio

    t = NativeTransport(TransportConfig(bind="tcp://127.0.0.1:0"))
    endpoint = t.bind()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.SNDHWM, 10_000)
    dealer.connect(endpoint)
    got: list[bytes] = []
    loop = asyncio.new_event_loop()
    n = 3000
    try:
        for i in range(n):
            dealer.send_multipart([b"", b"%d" % i])
        time.sleep(0.5)
        t.attach(loop, lambda frames: got.append(bytes(frames[2])), lambda: None)
        end = time.monotonic() + 10
        while len(got) < n and time.monotonic() < end:
            loop.run_until_complete(asyncio.sleep(0.05))
    finally:
        t.close()
        loop.close()
        dealer.close()
        ctx.term()
    assert got == [b"%d" % i for i in range(n)]


def test_back_to_back_requests_never_stall() -> None:
    """Sequential round trips, each sent the moment the last reply arrived, all answered.
    (A lost wake-up of the I/O thread stalled bench/_closed_loop.py's robots; this loop
    through the Python client did not reproduce it, so it guards only the plain case.)"""
    from inferential import Connection
    from inferential.errors import RequestFailed

    answered = 0
    with running_server(transport={"bind": "tcp://127.0.0.1:0", "native": "on"}) as (server, endpoint):
        conn = Connection(endpoint, client_id="r1")
        try:
            model = conn.model("noop")
            x = np.zeros(8, np.float32)
            for _ in range(1000):
                try:  # a RequestTimeout (no reply in 5 s) fails the test
                    model.request(x=x, timeout_ms=5000)
                except RequestFailed:  # answered, with a shed status on a loaded machine
                    pass
                answered += 1
        finally:
            conn.close()
        assert server._transport.rechecked == 0
    assert answered == 1000
