"""The asyncio client: same shape as inferential.client, every call awaitable.

The connection's socket is watched by the running event loop (a reader on its
file descriptor, attached on first use): every reply is received as soon as it
arrives and routed to the model it belongs to, or to the request() waiting for
it, with no task or future per message. Sends do not block the loop. A
connection belongs to the event loop it is first used in.

Request ids are taken when observe()/request() is called, before any await: tasks
sending at once may reach the socket in another order, so the server can see ids out
of order across tasks (each task's own ids still increase).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional, Union

import zmq

from inferential._connection import (
    DEFAULT_SERVER,
    DRAIN_CHUNK,
    NOBLOCK,
    SNDMORE,
    ConnectionBase,
    ModelHandleBase,
    waiting_messages,
    zsend,
)
from inferential._envelope import DEFAULT_LATENCY_BUDGET_MS, DEFAULT_PRIORITY
from inferential.errors import ConnectionClosed
from inferential.options import ClientOptions, ObservationHints, takes_hints
from inferential.result import Result, ServerInfo

__all__ = ["AsyncConnection", "AsyncModel", "AsyncModelHandle"]

log = logging.getLogger("inferential.client")

_Num = Union[int, float]
_TIMED_OUT = object()


class AsyncConnection(ConnectionBase):
    """``async with AsyncConnection("tcp://host:5555", client_id="agent-01") as conn: ...``

    Arguments and options are those of inferential.Connection.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        client_id: Union[str, int, None] = None,
        client_type: str = "",
        options: Optional[ClientOptions] = None,
        **overrides: Any,
    ) -> None:
        super().__init__(server, client_id, client_type, options, overrides)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._fd: Optional[int] = None
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[int, asyncio.Future[Any]] = {}

    def model(
        self, model_id: str, latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS, priority: int = DEFAULT_PRIORITY
    ) -> "AsyncModelHandle":
        self._check_open()
        return AsyncModelHandle(self, model_id, latency_budget_ms, priority)

    def close(self) -> None:
        """Stop the reader and close the socket at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and self._fd is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(f"connection to {self.server} closed"))
        self._waiters.clear()
        for event in self._events.values():
            event.set()  # wake get_result() callers; they see the connection closed
        self._close_socket()
        self._ctx.term()

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> "AsyncConnection":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # --- I/O ---------------------------------------------------------------

    def _ensure_reader(self) -> None:
        """Watch the socket from the running loop (once: a connection keeps its loop)."""
        if self._loop is not None:
            return
        loop = asyncio.get_running_loop()
        fd = self._fd = int(self._socket.getsockopt(zmq.FD))
        loop.add_reader(fd, self._on_readable)
        self._loop = loop

    def _on_readable(self) -> None:
        """Receive and route every reply waiting (ZMQ's descriptor is edge-triggered:
        read until nothing is left, here and after every send)."""
        if self._closed:
            return
        matcher = self._matcher
        count = 0
        for frames in waiting_messages(self._socket, DRAIN_CHUNK):
            count += 1
            try:
                deliveries = matcher.on_reply(frames)
            except Exception:  # never lose the reader over one reply
                log.exception("could not route a reply")
                continue
            for model_id, rid, awaited in deliveries:
                if awaited:
                    value = matcher.take_awaited(rid)
                    fut = self._waiters.pop(rid, None)
                    if fut is not None and not fut.done():
                        fut.set_result(value)
                else:
                    event = self._events.get(model_id)
                    if event is not None:
                        event.set()
        if count >= DRAIN_CHUNK and self._loop is not None:
            # More may be waiting, and the descriptor will not signal it again: come back
            # after the other callbacks (a waiter's timeout among them) have run.
            self._loop.call_soon(self._on_readable)

    async def _send(self, frames: list[Any], request_id: int, model_id: str, awaited: bool) -> None:
        self._check_open()
        if self._link_lost():
            if self._loop is not None and self._fd is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._fd)
            self._loop = self._fd = None
            self._reset_socket()
        self._ensure_reader()
        matcher = self._matcher
        matcher.track(request_id, model_id, awaited)
        try:
            await self._send_frames(frames)
        except zmq.Again:
            matcher.untrack(request_id)
            raise self._unavailable() from None
        except BaseException:
            matcher.untrack(request_id)
            raise
        matcher.sent()
        self._on_readable()  # a send can hide input from the edge-triggered descriptor

    async def server_info(self, timeout_ms: _Num = 1000) -> ServerInfo:
        """Ask the server for its protocol version and limits (docs/protocol.md §12).

        Raises RequestTimeout when no answer comes in time (a 1.x server never answers),
        ServerUnavailable when no server accepts the request.
        """
        rid, frames = self._describe()
        got = await self._send_and_await(frames, rid, "", timeout_ms)
        if got is None:
            raise self._describe_timed_out(rid, timeout_ms)
        return ServerInfo.from_result(got.raise_for_status())

    async def _send_and_await(self, frames: list[Any], rid: int, model_id: str, wait: _Num) -> Optional[Result]:
        """Send a request that a caller waits for; its reply (raising its protocol error),
        or None after ``wait`` ms (the caller words the timeout)."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        try:
            await self._send(frames, rid, model_id, awaited=True)
        except BaseException:
            self._waiters.pop(rid, None)
            raise
        # A timer rather than asyncio.wait_for: no task per request.
        timer = asyncio.get_running_loop().call_later(max(0.0, wait) / 1000.0, _time_out, fut)
        try:
            got = await fut
        except asyncio.CancelledError:
            self._waiters.pop(rid, None)
            self._matcher.abandon(rid)
            raise
        finally:
            timer.cancel()
        if got is _TIMED_OUT:
            self._waiters.pop(rid, None)
            return None
        if isinstance(got, Exception):
            raise got
        return got

    async def _send_frames(self, frames: list[Any]) -> None:
        """Hand the message to ZMQ without blocking the loop; while no server accepts
        it (IMMEDIATE: nothing is queued for an absent one), retry until
        ``send_timeout_ms``, then raise zmq.Again."""
        sock, copy, last = self._socket, self._copy, len(frames) - 1
        give_up = None
        delay = 0.001
        while True:
            try:
                zsend(sock, frames[0], NOBLOCK | SNDMORE if last else NOBLOCK, copy)
                break
            except zmq.Again:
                now = time.monotonic()
                if give_up is None:
                    give_up = now + self.options.send_timeout_ms / 1000.0
                if now >= give_up:
                    raise
                await asyncio.sleep(min(delay, give_up - now))
                delay = min(delay * 2, 0.05)
                self._check_open()
        # The first frame is queued: the rest of the message goes with it.
        for i in range(1, last + 1):
            zsend(sock, frames[i], SNDMORE if i < last else 0, copy)

    def _event(self, model_id: str) -> asyncio.Event:
        event = self._events.get(model_id)
        if event is None:
            event = self._events[model_id] = asyncio.Event()
        return event


class AsyncModelHandle(ModelHandleBase):
    """Observations to one model and its results, over an AsyncConnection.

    Same semantics as inferential.client.ModelHandle; see its docstrings.
    """

    connection: AsyncConnection

    @takes_hints
    async def observe(self, **inputs: Any) -> int:
        rid, frames = self._prepare(ObservationHints.take(inputs), inputs)
        await self.connection._send(frames, rid, self.model_id, awaited=False)
        return rid

    async def get_result(self, timeout_ms: Optional[_Num] = None) -> Optional[Result]:
        conn = self.connection
        conn._check_open()
        conn._ensure_reader()
        wait = conn.options.default_timeout_ms if timeout_ms is None else timeout_ms
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait) / 1000.0
        event = conn._event(self.model_id)
        while True:
            event.clear()
            result = conn._matcher.take_latest(self.model_id)
            if result is not None:
                return result.raise_for_status()
            conn._check_open()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    @takes_hints
    async def request(self, timeout_ms: Optional[_Num] = None, **inputs: Any) -> Result:
        conn = self.connection
        wait = conn.options.request_timeout_ms if timeout_ms is None else timeout_ms
        rid, frames = self._prepare(ObservationHints.take(inputs), inputs)
        got = await conn._send_and_await(frames, rid, self.model_id, wait)
        if got is None:
            raise self._timed_out(rid, wait)
        return got.raise_for_status()


def _time_out(fut: "asyncio.Future[Any]") -> None:
    if not fut.done():
        fut.set_result(_TIMED_OUT)


# The 1.x-era name of the handle, kept for compatibility.
AsyncModel = AsyncModelHandle
