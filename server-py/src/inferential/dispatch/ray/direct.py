"""The direct data path: batches go to a replica on this machine over a ZMQ IPC socket.

Serve keeps deploying, health-checking, replacing and scaling the replicas; only the
batches bypass Serve's handle, router, object store and the replica's event loop,
which cost ~10 ms per 150 KB batch of 8 on two cores (docs/ray.md). Each replica of
a ``ModelReplica`` deployment binds a socket named after its Serve replica id
(``socket_path``); the backend finds the replicas of its deployments in Ray's list
of named actors, connects a DEALER to each socket that exists on this machine, and
sends a batch to the replica with the fewest batches in flight. Replicas on other
machines (no socket here) are reached through the Serve handle as before.

Messages: ``[call id, pickle header, *buffers]`` both ways. Tensors travel as
out-of-band pickle buffers, i.e. the bytes of the received frames themselves: one
copy into the socket, none on the replica, whose inputs are read-only views. The
socket is a Unix socket in a directory only this user can enter (the trust of Ray's
own object store); a replica's process that ends closes it, which the backend sees at
once (ZMQ's disconnect event) and retries the batches it had there elsewhere.

This module is imported by Ray workers (the replica side): zmq and the standard
library only.
"""

from __future__ import annotations

import os
import pickle
import struct
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import zmq

#: Bumped when the message layout changes; a replica announces it in describe().
PROTOCOL = 1
#: Buffers smaller than this are pickled in-band: a frame of their own costs more.
OUT_OF_BAND_MIN = 16 * 1024
_CALL = struct.Struct("<Q")


def socket_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"inferential-ray-{os.getuid()}")


def socket_path(replica_unique_id: str) -> str:
    # Unix socket paths are limited to ~107 bytes: the short unique id keeps it well under.
    return os.path.join(socket_dir(), f"{replica_unique_id}.sock")


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must belong to this user and be closed to others")


def trusted(path: str) -> bool:
    """A socket we may exchange pickles with: it and its directory belong to this user,
    and nobody else may enter the directory (another user could otherwise plant a socket
    under a replica's name, or take the directory first)."""
    try:
        folder, sock = os.stat(os.path.dirname(path)), os.stat(path)
    except OSError:
        return False
    uid = os.getuid()
    return folder.st_uid == uid and not folder.st_mode & 0o077 and sock.st_uid == uid


def encode(obj: Any) -> list[Any]:
    """[header, *buffers]: large contiguous buffers (tensors) out of band, not copied."""
    buffers: list[Any] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        if buf.raw().nbytes < OUT_OF_BAND_MIN:
            return True  # in-band
        buffers.append(buf)
        return False

    return [pickle.dumps(obj, protocol=5, buffer_callback=out_of_band), *buffers]


def decode(frames: list[zmq.Frame]) -> Any:
    # Read-only views, as over Serve's object store: a model that writes to its inputs fails
    # the same way on every path.
    return pickle.loads(frames[0].buffer, buffers=[memoryview(f.buffer).toreadonly() for f in frames[1:]])


class ReplicaChannel:
    """Replica side: a ROUTER on the replica's socket and one I/O thread.

    ``run(batch)`` (the replica's batch runner) is called on ``pool``, or with
    ``inline`` (a replica running one batch at a time) on the I/O thread itself: two
    thread wake-ups fewer per batch, each of which can wait milliseconds for a CPU on
    a busy machine (``run`` serialises with Serve's calls on its own). The result goes
    back with the replica's timestamps (wall clock, for the benchmark's breakdown):
    received, started, finished.
    """

    def __init__(
        self, path: str, run: Callable[[list[Any]], Any], pool: ThreadPoolExecutor, inline: bool = False
    ) -> None:
        _private_dir(os.path.dirname(path))
        self.path = path
        self._run = run
        self._pool = pool
        self._inline = inline
        self._ctx = zmq.Context(1)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.bind(f"ipc://{path}")
        os.chmod(path, 0o600)
        self._done_addr = f"inproc://done-{id(self)}"
        self._done = self._ctx.socket(zmq.PULL)
        self._done.bind(self._done_addr)
        self._local = threading.local()
        self._closed = False
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._serve, name="inferential-direct", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._done, zmq.POLLIN)
        try:
            while not self._closed:
                for sock, _ in poller.poll():
                    while True:  # everything waiting, in one pass
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if sock is self._sock:
                            self._received(frames)
                        elif len(frames) > 1:
                            self._sock.send_multipart(frames, copy=False)
                        # a one-frame message on _done is close()'s wake-up
        except zmq.ZMQError as err:
            if not self._closed:
                self.error = err
        except BaseException as err:  # reported by check_health
            self.error = err

    def _received(self, frames: list[zmq.Frame]) -> None:
        received = time.time()
        if len(frames) < 3 or len(frames[1].bytes) != _CALL.size:
            return  # not ours: nobody waits for an answer to it
        ident, call = frames[0], frames[1]
        try:
            batch = decode(frames[2:])
        except Exception as err:
            self._reply(ident, call, ("failed", f"the batch could not be decoded: {type(err).__name__}: {err}", None))
            return
        if self._inline:
            self._work(ident, call, batch, received)
        else:
            self._pool.submit(self._work, ident, call, batch, received)

    def _work(self, ident: zmq.Frame, call: zmq.Frame, batch: list[Any], received: float) -> None:
        started = time.time()
        message: tuple[str, Any, Any]
        try:
            # An empty batch is the backend's warm-up of this path: the model is not called.
            message = ("ok", self._run(batch) if batch else [], (received, started, time.time()))
        except BaseException as err:  # _run catches the model's; this is ours
            message = ("failed", f"{type(err).__name__}: {err}", None)
        self._reply(ident, call, message)

    def _reply(self, ident: zmq.Frame, call: zmq.Frame, message: Any) -> None:
        try:
            frames = encode(message)
        except Exception as err:  # an output that does not pickle fails the batch, not the channel
            frames = encode(("failed", f"the result could not be encoded: {type(err).__name__}: {err}", None))
        if self._closed:
            return
        if threading.current_thread() is self._thread:
            self._sock.send_multipart([ident, call, *frames], copy=False)
            return
        # ZMQ sockets are single-threaded: each pool thread pushes replies over a
        # socket of its own, and the I/O thread forwards them (zero-copy, in process).
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self._ctx.socket(zmq.PUSH)
            push.linger = 0
            push.connect(self._done_addr)
        push.send_multipart([ident, call, *frames], copy=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        wake = self._ctx.socket(zmq.PUSH)
        wake.linger = 0
        wake.connect(self._done_addr)
        wake.send(b"")
        wake.close()
        self._thread.join(2.0)
        self._ctx.destroy(linger=0)
        try:
            os.unlink(self.path)
        except OSError:
            pass


def call_id(n: int) -> bytes:
    return _CALL.pack(n)


def parse_call_id(frame: zmq.Frame) -> int:
    return int(_CALL.unpack(frame.bytes)[0])


# --- the backend's side -----------------------------------------------------------------


class ReplicaLost(Exception):
    """The replica's socket closed with the batch on it: worth another replica."""


class DirectReplica:
    """The backend's connection to one replica's socket, driven by the backend's event loop.

    No task or future per batch: the loop watches the socket's descriptor and a reply
    calls its batch's callback in the same pass, as the local backend's threads do.
    """

    def __init__(self, ctx: Any, unique_id: str, path: str, on_lost: Callable[["DirectReplica"], None]) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self.unique_id = unique_id
        self.path = path
        self.ready = asyncio.Event()
        self.lost = False
        self.inflight = 0  # batches sent and not answered, including ones whose caller gave up
        self.calls = 0
        self._on_lost = on_lost
        self._pending: dict[int, tuple[Callable[[Any, Optional[BaseException]], None], Any]] = {}
        self._outstanding: set[int] = set()
        self._next = 0
        self._sock = ctx.socket(zmq.DEALER)
        self._sock.linger = 0
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self._sock.connect(f"ipc://{path}")
        self._fds = [self._sock.FD, self._monitor.FD]
        self._loop.add_reader(self._fds[0], self._drain)
        self._loop.add_reader(self._fds[1], self._watch)
        # ZMQ's descriptor signals edges: look once now for what is already there.
        self._loop.call_soon(self._watch)

    def _drain(self) -> None:
        try:
            while not self.lost and self._sock.EVENTS & zmq.POLLIN:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                if len(frames) < 2:
                    continue
                n = parse_call_id(frames[0])
                if n in self._outstanding:
                    self._outstanding.discard(n)
                    self.inflight -= 1
                entry = self._pending.pop(n, None)
                if entry is not None:
                    entry[1].cancel()
                    entry[0](frames[1:], None)
        except zmq.ZMQError as err:
            self._lose(f"reading from the replica failed: {err}")

    def _watch(self) -> None:
        from zmq.utils.monitor import parse_monitor_message

        try:
            while not self.lost and self._monitor.EVENTS & zmq.POLLIN:
                event = parse_monitor_message(self._monitor.recv_multipart(zmq.NOBLOCK))["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.ready.set()
                elif event == zmq.EVENT_DISCONNECTED and self.ready.is_set():
                    self._lose("the replica's socket closed (its process ended)")
        except zmq.ZMQError:  # the monitor closes with the socket
            pass

    def send(
        self, frames: list[Any], timeout_s: float, callback: Callable[[Any, Optional[BaseException]], None]
    ) -> None:
        """Send a batch; ``callback(reply frames, None)`` or ``callback(None, error)`` runs
        later on the loop, the error being asyncio.TimeoutError or ReplicaLost."""
        if self.lost:
            self._loop.call_soon(callback, None, ReplicaLost("the replica's socket closed"))
            return
        self._next += 1
        n = self._next
        self._pending[n] = (callback, self._loop.call_later(timeout_s, self._expire, n))
        self._outstanding.add(n)
        self.inflight += 1
        self.calls += 1
        self._sock.send_multipart([call_id(n), *frames], copy=False)
        if self._sock.EVENTS & zmq.POLLIN:  # the send may have taken the edge of a waiting reply
            self._loop.call_soon(self._drain)

    def _expire(self, n: int) -> None:
        import asyncio

        entry = self._pending.pop(n, None)
        if entry is not None:
            entry[0](None, asyncio.TimeoutError())

    async def call(self, frames: list[Any], timeout_s: float) -> list[zmq.Frame]:
        """The reply's frames; asyncio.TimeoutError after ``timeout_s``; ReplicaLost."""
        fut = self._loop.create_future()

        def settle(reply: Any, error: Optional[BaseException]) -> None:
            if not fut.done():
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(reply)

        self.send(frames, timeout_s, settle)
        return await fut

    def _lose(self, why: str) -> None:
        if self.lost:
            return
        self.close(why)
        self._on_lost(self)

    def close(self, why: str = "the backend stopped") -> None:
        """Close the connection; batches still waiting fail with ReplicaLost(why)."""
        self.lost = True
        pending, self._pending = self._pending, {}
        for callback, timer in pending.values():
            timer.cancel()
            callback(None, ReplicaLost(why))
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._fds = []
        if self._sock.closed:
            return
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._sock.close(linger=0)


class DirectPool:
    """The directly reachable replicas of one deployment."""

    def __init__(self, ctx: Any, on_change: Callable[[], None]) -> None:
        self._ctx = ctx
        self._on_change = on_change
        self.replicas: dict[str, DirectReplica] = {}
        self._turn = 0

    def sync(self, unique_ids: set[str]) -> None:
        """Follow Serve's replicas: connect to new ones with a socket here, drop gone ones."""
        for uid in list(self.replicas):
            if uid not in unique_ids:
                self.replicas.pop(uid)._lose("Serve no longer lists the replica")
        for uid in unique_ids - set(self.replicas):
            path = socket_path(uid)
            if trusted(path):  # on this machine, and ours
                self.replicas[uid] = DirectReplica(self._ctx, uid, path, self._lost)

    def _lost(self, replica: DirectReplica) -> None:
        if self.replicas.get(replica.unique_id) is replica:
            del self.replicas[replica.unique_id]
        try:  # a replica that died left its file; unique ids never come back
            os.unlink(replica.path)
        except OSError:
            pass
        self._on_change()

    def pick(self) -> Optional[DirectReplica]:
        """The ready replica with the fewest batches in flight (ties taken in turn)."""
        ready = [r for r in self.replicas.values() if r.ready.is_set() and not r.lost]
        if not ready:
            return None
        self._turn += 1
        least = min(r.inflight for r in ready)
        candidates = [r for r in ready if r.inflight == least]
        return candidates[self._turn % len(candidates)]

    async def wait_ready(self, timeout_s: float) -> None:
        import asyncio

        waits = [asyncio.ensure_future(r.ready.wait()) for r in self.replicas.values()]
        if waits:
            _, late = await asyncio.wait(waits, timeout=timeout_s)
            for w in late:
                w.cancel()

    def close(self) -> None:
        for r in self.replicas.values():
            r.close()
        self.replicas.clear()
