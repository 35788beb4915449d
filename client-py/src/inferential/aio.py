"""The asyncio client: same shape as inferential.client, every call awaitable.

One reader task per connection receives every reply and routes it to the model
it belongs to (or to the request() waiting for it); it starts on first use inside
the running event loop. A connection belongs to one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional, Union

import zmq
import zmq.asyncio

from inferential.client import (
    DEFAULT_SERVER,
    _ConnectionBase,
    _ModelBase,
    configure_socket,
    observation_fields,
)
from inferential.errors import ConnectionClosed, RequestTimeout
from inferential.options import ClientOptions
from inferential.result import Result

log = logging.getLogger("inferential.client")

_Num = Union[int, float]


class AsyncConnection(_ConnectionBase):
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
        self._ctx = zmq.asyncio.Context(io_threads=1)
        self._socket = self._ctx.socket(zmq.DEALER)
        try:
            configure_socket(self._socket, self.options)
            self._socket.connect(self.server)
        except Exception:
            self._socket.close(linger=0)
            self._ctx.term()
            raise
        self._reader: Optional[asyncio.Task[None]] = None
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[int, asyncio.Future[Any]] = {}

    def model(self, model_id: str, latency_budget_ms: float = 50.0, priority: int = 1) -> "AsyncModel":
        self._check_open()
        return AsyncModel(self, model_id, latency_budget_ms, priority)

    def close(self) -> None:
        """Stop the reader and close the socket at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(f"connection to {self.server} closed"))
        self._waiters.clear()
        for event in self._events.values():
            event.set()  # wake get_result() callers; they see the connection closed
        self._socket.close(linger=0)
        self._ctx.term()

    async def aclose(self) -> None:
        reader = self._reader
        self.close()
        if reader is not None:
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass

    async def __aenter__(self) -> "AsyncConnection":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # --- I/O ---------------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            if self._reader is not None and not self._reader.cancelled() and self._reader.exception():
                log.error("reply reader stopped; restarting", exc_info=self._reader.exception())
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _read_loop(self) -> None:
        router = self._router
        while True:
            frames = await self._socket.recv_multipart(copy=False)
            routed = router.on_reply(frames)
            if routed is None:
                continue
            model_id, rid, awaited = routed
            if awaited:
                value = router.take_awaited(rid)
                fut = self._waiters.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_result(value)
            else:
                event = self._events.get(model_id)
                if event is not None:
                    event.set()

    async def _send(self, frames: list[Any], request_id: int, model_id: str, awaited: bool) -> None:
        self._check_open()
        self._ensure_reader()
        router = self._router
        router.track(request_id, model_id, awaited)
        try:
            await self._socket.send_multipart(frames, copy=self._copy)
        except zmq.Again:
            router.untrack(request_id)
            raise self._unavailable() from None
        except BaseException:
            router.untrack(request_id)
            raise
        router.sent()

    def _event(self, model_id: str) -> asyncio.Event:
        event = self._events.get(model_id)
        if event is None:
            event = self._events[model_id] = asyncio.Event()
        return event


class AsyncModel(_ModelBase):
    """Observations to one model and its results, over an AsyncConnection.

    Same semantics as inferential.Model; see its docstrings.
    """

    connection: AsyncConnection

    async def observe(
        self,
        urgency: float = 0.0,
        steps_remaining: Optional[int] = None,
        priority: Optional[int] = None,
        deadline_ns: Optional[int] = None,
        actions_remaining: Optional[int] = None,
        control_rate_hz: Optional[_Num] = None,
        **inputs: Any,
    ) -> int:
        fields = observation_fields(urgency, steps_remaining, priority, deadline_ns, actions_remaining, control_rate_hz)
        rid, frames = self._prepare(fields, inputs)
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
            result = conn._router.take_latest(self.model_id)
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

    async def request(
        self,
        timeout_ms: Optional[_Num] = None,
        urgency: float = 0.0,
        steps_remaining: Optional[int] = None,
        priority: Optional[int] = None,
        deadline_ns: Optional[int] = None,
        actions_remaining: Optional[int] = None,
        control_rate_hz: Optional[_Num] = None,
        **inputs: Any,
    ) -> Result:
        fields = observation_fields(urgency, steps_remaining, priority, deadline_ns, actions_remaining, control_rate_hz)
        conn = self.connection
        wait = conn.options.request_timeout_ms if timeout_ms is None else timeout_ms
        rid, frames = self._prepare(fields, inputs)
        router = conn._router
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn._waiters[rid] = fut
        try:
            await conn._send(frames, rid, self.model_id, awaited=True)
        except BaseException:
            conn._waiters.pop(rid, None)
            raise
        try:
            got = await asyncio.wait_for(fut, max(0.0, wait) / 1000.0)
        except asyncio.TimeoutError:
            conn._waiters.pop(rid, None)
            router.abandon(rid)
            raise RequestTimeout(
                f"no reply to request {rid} from model '{self.model_id}' within {wait} ms",
                request_id=rid,
                model_id=self.model_id,
            ) from None
        except asyncio.CancelledError:
            conn._waiters.pop(rid, None)
            router.abandon(rid)
            raise
        if isinstance(got, Exception):
            raise got
        return got.raise_for_status()
