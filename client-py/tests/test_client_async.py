"""The asyncio client against the scripted ROUTER peer: the same basics as the sync client."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import zmq

from inferential import (
    AsyncConnection,
    ConnectionClosed,
    Expired,
    RequestTimeout,
    ServerUnavailable,
)
from inferential._proto import inferential_pb2 as pb

from client_peer import echo_doubled, unused_tcp_endpoint

FAST = dict(send_timeout_ms=500, reconnect_ivl_ms=10, reconnect_ivl_max_ms=50)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_ids_increase_and_replies_are_routed_per_model(peer):
    async def main():
        async with AsyncConnection(server=peer.address, client_id="agent-01", **FAST) as conn:
            a, b = conn.model("model-a"), conn.model("model-b")
            ids = [await a.observe(x=np.ones(1)), await b.observe(x=np.ones(1)), await a.observe(x=np.ones(1))]
            assert ids == [1, 2, 3]
            got = [peer.recv() for _ in ids]
            assert [g.obs.request_id for g in got] == ids
            assert {g.obs.client.id for g in got} == {"agent-01"}
            peer.reply(got[1], tensors={"who": np.array([2])})
            peer.reply(got[2], tensors={"who": np.array([3])})
            peer.reply(got[0])  # older than a reply already routed to model-a: stale
            res_b = await b.get_result(timeout_ms=1000)
            res_a = await a.get_result(timeout_ms=1000)
            assert (res_b.model_id, res_b.request_id, int(res_b["who"][0])) == ("model-b", 2, 2)
            assert (res_a.model_id, res_a.request_id, int(res_a["who"][0])) == ("model-a", 3, 3)
            assert await a.get_result(timeout_ms=100) is None
            assert conn.stats.stale_dropped == 1 and conn.stats.sent == 3

    run(main())


def test_get_result_waits_for_a_reply_that_arrives_later(peer):
    async def main():
        async with AsyncConnection(server=peer.address, **FAST) as conn:
            model = conn.model("policy")
            rid = await model.observe(x=np.ones(1))
            waiting = asyncio.ensure_future(model.get_result(timeout_ms=2000))
            await asyncio.sleep(0.02)
            assert not waiting.done()
            peer.reply(peer.recv())
            assert (await waiting).request_id == rid

    run(main())


def test_request_and_error_status(peer):
    def handler(got):
        if got.obs.metadata.get("fail"):
            return {"status": pb.EXPIRED, "error": "waited 5 s"}
        return echo_doubled(got)

    peer.serve(handler)

    async def main():
        async with AsyncConnection(server=peer.address, **FAST) as conn:
            model = conn.model("policy")
            results = await asyncio.gather(
                *(model.request(timeout_ms=2000, x=np.array([i], np.int32)) for i in range(5))
            )
            assert [int(r["actions"][0]) for r in results] == [0, 2, 4, 6, 8]
            with pytest.raises(Expired) as info:
                await model.request(timeout_ms=2000, x=np.ones(1), fail="yes")
            assert info.value.retryable and info.value.message == "waited 5 s"
            assert conn.stats.by_status == {"OK": 5, "EXPIRED": 1}

    run(main())


def test_request_timeout_type_error_and_close(peer):
    async def main():
        conn = AsyncConnection(server=peer.address, **FAST)
        model = conn.model("policy")
        with pytest.raises(TypeError, match="'gain'"):
            await model.observe(gain=3)
        with pytest.raises(RequestTimeout):
            await model.request(timeout_ms=30, x=np.ones(1))
        waiting = asyncio.ensure_future(model.get_result(timeout_ms=5000))
        await asyncio.sleep(0.01)
        await conn.aclose()
        with pytest.raises(ConnectionClosed):
            await waiting
        with pytest.raises(ConnectionClosed):
            await model.observe(x=np.ones(1))

    run(main())


def test_observe_raises_server_unavailable_within_bounds_and_options_reach_the_socket():
    async def main():
        async with AsyncConnection(server=unused_tcp_endpoint(), send_timeout_ms=200, reconnect_ivl_ms=7) as conn:
            assert conn._socket.getsockopt(zmq.RECONNECT_IVL) == 7
            assert conn._socket.getsockopt(zmq.ROUTING_ID) == b""
            start = time.monotonic()
            with pytest.raises(ServerUnavailable):
                await conn.model("policy").observe(x=np.ones(1))
            assert time.monotonic() - start < 3.0 and conn.stats.send_failed == 1

    run(main())


def test_concurrent_tasks_take_unique_ids_before_awaiting_and_each_gets_its_own_reply(peer):
    peer.serve(echo_doubled)

    async def main():
        async with AsyncConnection(server=peer.address, **FAST) as conn:
            model = conn.model("policy")
            coros = [model.request(timeout_ms=5000, x=np.array([i], np.int64)) for i in range(20)]
            results = await asyncio.gather(*coros)
            assert sorted(r.request_id for r in results) == list(range(1, 21))
            for i, r in enumerate(results):
                assert int(r["actions"][0]) == 2 * i
            assert conn.stats.sent == 20 and conn.stats.unknown_dropped == 0

    run(main())
