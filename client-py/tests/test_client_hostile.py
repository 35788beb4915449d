"""Issue 14, client side, against the real Python server: a reply flood does not stretch a
wait past its timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("inferential.server")

from inferential import AsyncConnection, ClientOptions, Connection, ObservationHints  # noqa: E402
from inferential.config import InferentialConfig  # noqa: E402
from inferential.server import BackgroundServer, Server  # noqa: E402

FLOOD = 20_000
WAIT_MS = 5
# A wait that read the whole flood before returning comes back with all FLOOD replies read
# (measured with the chunking taken out: 364-484 ms, every reply read); one that keeps its
# timeout comes back with most of them unread (128-641 read). How long it took is bounded
# only loosely: on a loaded CI machine a 50 ms wait once took 118 ms (the server's thread
# in this process competing for the interpreter), which says nothing about the client.
SLACK_MS = 250


@pytest.fixture(scope="module")
def endpoint():
    config = InferentialConfig.model_validate({"transport": {"bind": "tcp://127.0.0.1:0"}, "models": []})
    server = Server(config=config, models={"noop": "inferential.models.testing:NoOp"})
    background = BackgroundServer(server)
    background.start()
    yield server
    background.stop()


def _options() -> ClientOptions:
    return ClientOptions(recv_hwm=10 * FLOOD, send_hwm=10 * FLOOD)


def _replied(server: Server, count: int) -> None:
    """Wait until the server has sent ``count`` more replies (then they queue in the client's socket)."""
    end = time.monotonic() + 30
    while server.metrics.counter("replies", {"model": "noop"}) < count and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.2)  # from the server's socket to the client's


def _send_unread(conn: Any, count: int) -> None:
    """``count`` observations to noop on ``conn``'s socket, tracked as observe() tracks them
    but without reading anything in between (observe() reads a chunk of replies per send,
    so its replies would not be waiting unread)."""
    noop = conn.model("noop")
    x = np.zeros(1, np.float32)
    for _ in range(count):
        rid, frames = noop._prepare(ObservationHints(), {"x": x})
        conn._matcher.track(rid, "noop", False)
        conn._socket.send_multipart(frames, copy=False)


def _flooded(server: Server, conn: Connection) -> None:
    """FLOOD replies waiting, unread, on ``conn``'s socket."""
    before = server.metrics.counter("replies", {"model": "noop"})
    _send_unread(conn, FLOOD)
    _replied(server, before + FLOOD)


def test_get_result_returns_near_its_timeout_under_a_flood_of_replies(endpoint):
    server = endpoint
    with Connection(server.endpoint, client_id="flooded", options=_options()) as conn:
        _flooded(server, conn)
        other = conn.model("other")  # no reply will ever come for it
        start = time.monotonic()
        assert other.get_result(timeout_ms=WAIT_MS) is None
        took_ms = (time.monotonic() - start) * 1000
        read_in_wait = conn.stats.received
        # The flood is still read, over the following calls.
        end = time.monotonic() + 10
        while conn.stats.received < FLOOD and time.monotonic() < end:
            other.get_result(timeout_ms=WAIT_MS)
        received = conn.stats.received
    print(f"get_result(timeout_ms={WAIT_MS}) under {FLOOD} waiting replies: {took_ms:.0f} ms, {read_in_wait} read")
    assert read_in_wait < FLOOD // 2  # it returned at its timeout, most of the flood unread
    assert took_ms < WAIT_MS + SLACK_MS
    assert received == FLOOD


def test_async_get_result_returns_near_its_timeout_under_a_flood_of_replies(endpoint):
    server = endpoint

    async def main() -> tuple[float, int]:
        before = server.metrics.counter("replies", {"model": "noop"})
        async with AsyncConnection(server.endpoint, client_id="flooded-aio", options=_options()) as conn:
            await conn.model("noop").observe(x=np.zeros(1, np.float32))  # the socket watched from now on
            _send_unread(conn, FLOOD - 1)  # no await: nothing is read meanwhile
            _replied(server, before + FLOOD)  # blocks the loop: the replies queue unread
            # Sending on the socket consumed the descriptor's signal (the client's own sends
            # read after each send for that reason): start the reader as such a send would.
            asyncio.get_running_loop().call_soon(conn._on_readable)
            start = time.monotonic()
            assert await conn.model("other").get_result(timeout_ms=WAIT_MS) is None
            return (time.monotonic() - start) * 1000, conn.stats.received

    took_ms, read_in_wait = asyncio.run(main())
    print(f"async get_result(timeout_ms={WAIT_MS}) under {FLOOD} replies: {took_ms:.0f} ms, {read_in_wait} read")
    assert read_in_wait < FLOOD // 2  # it returned at its timeout, most of the flood unread
    assert took_ms < WAIT_MS + SLACK_MS


def _big(inputs):
    """An output over the client's 1 MiB limit but within the server's."""
    return {"y": np.zeros(300_000, np.float32)}


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_reply_over_the_clients_limit_costs_one_request_and_the_connection_recovers(flavour):
    from inferential import Limits, RequestTimeout

    config = InferentialConfig.model_validate({"transport": {"bind": "tcp://127.0.0.1:0"}, "models": []})
    server = Server(config=config, models={"big": _big, "noop": "inferential.models.testing:NoOp"})
    background = BackgroundServer(server)
    endpoint = background.start()
    options = ClientOptions(limits=Limits(max_message_bytes=1024 * 1024))
    x = np.zeros(1, np.float32)
    try:
        if flavour == "sync":
            with Connection(endpoint, client_id="small", options=options) as conn:
                assert conn.model("noop").request(timeout_ms=5000, x=x).ok
                with pytest.raises(RequestTimeout):  # libzmq drops the connection on the oversized reply
                    conn.model("big").request(timeout_ms=1000, x=x)
                after = conn.model("noop").request(timeout_ms=5000, x=x)
                resets = conn.stats.socket_resets
        else:

            async def main():
                async with AsyncConnection(endpoint, client_id="small-aio", options=options) as conn:
                    assert (await conn.model("noop").request(timeout_ms=5000, x=x)).ok
                    with pytest.raises(RequestTimeout):
                        await conn.model("big").request(timeout_ms=1000, x=x)
                    return await conn.model("noop").request(timeout_ms=5000, x=x), conn.stats.socket_resets

            after, resets = asyncio.run(main())
    finally:
        background.stop()
    assert after.ok and resets == 1
