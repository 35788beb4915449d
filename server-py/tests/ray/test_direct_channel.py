"""The direct data path's two ends (dispatch/ray/direct.py) over a real socket, without Ray.

The Ray tests (test_ray_backend.py) run it inside Serve replicas; these pin down the
channel itself in well under a second: tensors arrive as read-only views, junk from a
peer fails that message only, a replica that goes away fails its batches at once.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zmq

from inferential.dispatch.ray.direct import (
    DirectReplica,
    ReplicaChannel,
    ReplicaLost,
    call_id,
    decode,
    encode,
    trusted,
)

IMAGE = np.arange(224 * 224 * 3, dtype=np.uint32).astype(np.uint8).reshape(224, 224, 3)


def run(batch: list[dict]) -> list[dict]:
    if batch[0].get("sleep_s"):
        time.sleep(float(batch[0]["sleep_s"]))
    return [
        {"sum": np.int64(inputs["image"].sum()), "writeable": inputs["image"].flags.writeable, "tag": inputs["tag"]}
        for inputs in batch
    ]


@pytest.fixture
def socket_file(tmp_path):
    folder = tmp_path / "sockets"
    folder.mkdir(mode=0o700)
    return str(folder / "replica.sock")


async def _connect(path: str, ctx: zmq.Context, lost: list) -> DirectReplica:
    replica = DirectReplica(ctx, "test", path, lost.append)
    await asyncio.wait_for(replica.ready.wait(), 5)
    return replica


@pytest.mark.parametrize("inline", [True, False], ids=["on the I/O thread", "on the pool"])
def test_a_batch_goes_and_comes_back_with_tensors_as_read_only_views(socket_file, inline):
    pool = ThreadPoolExecutor(2)
    channel = ReplicaChannel(socket_file, run, pool, inline=inline)
    assert oct(os.stat(socket_file).st_mode & 0o777) == "0o600"
    ctx = zmq.Context()

    async def scenario():
        replica = await _connect(socket_file, ctx, [])
        batch = [{"image": IMAGE + np.uint8(i), "tag": f"r{i}"} for i in range(3)]
        frames = encode(batch)
        assert len(frames) == 4  # header + one out-of-band frame per 150 KB image
        kind, result, stamps = decode(await replica.call(frames, 5.0))
        replica.close()
        return kind, result, stamps

    try:
        kind, result, (received, started, finished) = asyncio.run(scenario())
    finally:
        channel.close()
        ctx.destroy(linger=0)
        pool.shutdown()
    assert kind == "ok" and [r["tag"] for r in result] == ["r0", "r1", "r2"]
    assert [int(r["sum"]) for r in result] == [int((IMAGE + np.uint8(i)).sum()) for i in range(3)]
    assert not any(r["writeable"] for r in result)  # views over the received frames
    assert received <= started <= finished
    assert not os.path.exists(socket_file)  # close() removes the socket file


def test_junk_from_a_peer_fails_that_message_only(socket_file):
    pool = ThreadPoolExecutor(1)
    channel = ReplicaChannel(socket_file, run, pool, inline=True)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.rcvtimeo = 5000
    raw.connect(f"ipc://{socket_file}")
    try:
        raw.send_multipart([b"x"])  # too short: dropped unanswered
        raw.send_multipart([b"short", b"header"])  # a call id of the wrong size: dropped
        raw.send_multipart([call_id(7), b"not a pickle"])
        reply = raw.recv_multipart(copy=False)
        assert reply[0].bytes == call_id(7)
        kind, reason, _ = decode(reply[1:])
        assert kind == "failed" and "could not be decoded" in reason
        raw.send_multipart([call_id(8), pickle.dumps([{"image": IMAGE, "tag": "ok"}], protocol=5)])
        reply = raw.recv_multipart(copy=False)
        kind, result, _ = decode(reply[1:])
        assert reply[0].bytes == call_id(8) and kind == "ok" and result[0]["tag"] == "ok"
        assert channel.alive
    finally:
        raw.close()
        channel.close()
        ctx.destroy(linger=0)
        pool.shutdown()


def test_a_replica_that_goes_away_fails_its_batch_at_once_and_a_slow_one_times_out(socket_file):
    pool = ThreadPoolExecutor(1)
    channel = ReplicaChannel(socket_file, run, pool, inline=False)
    ctx = zmq.Context()
    lost: list = []

    async def scenario():
        replica = await _connect(socket_file, ctx, lost)
        with pytest.raises(asyncio.TimeoutError):
            await replica.call(encode([{"image": IMAGE, "tag": "slow", "sleep_s": "0.5"}]), 0.1)
        slow = asyncio.ensure_future(replica.call(encode([{"image": IMAGE, "tag": "t", "sleep_s": "2"}]), 10.0))
        await asyncio.sleep(0.1)
        start = time.monotonic()
        await asyncio.to_thread(channel.close)  # the replica's socket closes mid-batch
        with pytest.raises(ReplicaLost):
            await slow
        return time.monotonic() - start, replica

    try:
        took, replica = asyncio.run(scenario())
    finally:
        channel.close()
        ctx.destroy(linger=0)
        pool.shutdown(wait=False)
    assert took < 2.0  # told by the disconnect, not by the 10 s deadline
    assert lost == [replica] and replica.lost


def test_only_sockets_in_a_private_folder_of_this_user_are_trusted(tmp_path, socket_file):
    pool = ThreadPoolExecutor(1)
    channel = ReplicaChannel(socket_file, run, pool)
    try:
        assert trusted(socket_file)
        os.chmod(os.path.dirname(socket_file), 0o755)  # others may enter: could have planted it
        assert not trusted(socket_file)
        with pytest.raises(PermissionError):  # and a replica refuses to bind there
            ReplicaChannel(os.path.join(os.path.dirname(socket_file), "other.sock"), run, pool)
    finally:
        os.chmod(os.path.dirname(socket_file), 0o700)
        channel.close()
        pool.shutdown()
    assert not trusted(str(tmp_path / "missing" / "x.sock"))
