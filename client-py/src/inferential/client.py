"""The synchronous robot-side client: Connection -> ModelHandle -> observe() / get_result() / request().

A Connection owns one ZMQ DEALER socket connected to the server's ROUTER. Like a
ZMQ socket it belongs to one thread: give each thread its own Connection (they
may share a client_id; each gets its own routing identity), or use
inferential.aio.AsyncConnection. docs/protocol.md is the wire specification.
"""

from __future__ import annotations

import math
import time
from typing import Any, Optional, Union

import zmq

from inferential._connection import (
    DEFAULT_SERVER,
    DRAIN_CHUNK,
    POLLIN,
    SNDMORE,
    ConnectionBase,
    ModelHandleBase,
    default_client_id,
    normalize_server,
    waiting_messages,
    zpoll,
    zsend,
)
from inferential._envelope import DEFAULT_LATENCY_BUDGET_MS, DEFAULT_PRIORITY
from inferential.options import ClientOptions, ObservationHints, takes_hints
from inferential.result import Result, ServerInfo

__all__ = ["DEFAULT_SERVER", "Connection", "Model", "ModelHandle", "default_client_id", "normalize_server"]

_Num = Union[int, float]


class Connection(ConnectionBase):
    """A robot's connection to one Inferential server.

    ``Connection(server="tcp://localhost:5555", client_id="agent-01", client_type="sensor")``.
    ``server`` without a scheme means TCP. ``client_id`` (str or int) names the robot
    to the server; by default one is generated (``default_client_id()``). Options
    come from ``options`` (a ClientOptions) with keyword ``overrides`` applied, e.g.
    ``Connection(server, send_timeout_ms=200)``. Use it as a context manager, or
    call close().
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

    def model(
        self, model_id: str, latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS, priority: int = DEFAULT_PRIORITY
    ) -> "ModelHandle":
        """A handle for sending observations to ``model_id`` and reading its replies.

        Handles for the same model_id share the replies of this connection.
        """
        self._check_open()
        return ModelHandle(self, model_id, latency_budget_ms, priority)

    def close(self) -> None:
        """Close the socket at once (unsent messages are discarded). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_socket()
        self._ctx.term()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- I/O ---------------------------------------------------------------

    def _send(self, frames: list[Any], request_id: int, model_id: str, awaited: bool) -> None:
        self._check_open()
        if self._link_lost():
            self._reset_socket()
        self._drain()
        matcher = self._matcher
        matcher.track(request_id, model_id, awaited)
        sock, copy, last = self._socket, self._copy, len(frames) - 1
        try:
            # Blocks up to send_timeout_ms (SNDTIMEO) on the first frame only: once it is
            # queued, the rest of the message is too.
            for i, frame in enumerate(frames):
                zsend(sock, frame, SNDMORE if i < last else 0, copy)
        except zmq.Again:
            matcher.untrack(request_id)
            raise self._unavailable() from None
        except BaseException:
            matcher.untrack(request_id)
            raise
        matcher.sent()

    def server_info(self, timeout_ms: _Num = 1000) -> ServerInfo:
        """Ask the server for its protocol version and limits (docs/protocol.md §12).

        Raises RequestTimeout when no answer comes in time (a 1.x server never answers),
        ServerUnavailable when no server accepts the request.
        """
        rid, frames = self._describe()
        self._send(frames, rid, "", awaited=True)
        got = self._await(rid, timeout_ms)
        if got is None:
            raise self._describe_timed_out(rid, timeout_ms)
        return ServerInfo.from_result(got.raise_for_status())

    def _await(self, rid: int, timeout_ms: _Num) -> Optional[Result]:
        """The reply to ``rid`` (raising its protocol error), or None after ``timeout_ms``."""
        deadline = time.monotonic() + max(0.0, timeout_ms) / 1000.0
        matcher = self._matcher
        while True:
            self._drain(deadline)
            got = matcher.take_awaited(rid)
            if got is not None:
                if isinstance(got, Exception):
                    raise got
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._poll(remaining)

    def _drain(self, deadline: Optional[float] = None) -> None:
        """Route the replies waiting: at least one chunk, then more until ``deadline``
        (monotonic seconds; None: one chunk). What is left is read on the next call."""
        on_reply = self._matcher.on_reply
        sock = self._socket
        while True:
            count = 0
            for frames in waiting_messages(sock, DRAIN_CHUNK):
                on_reply(frames)
                count += 1
            if count < DRAIN_CHUNK or deadline is None or time.monotonic() >= deadline:
                return

    def _poll(self, seconds: float) -> None:
        zpoll([(self._socket, POLLIN)], max(1, math.ceil(seconds * 1000)))


class ModelHandle(ModelHandleBase):
    """Observations to one model and its results, over a Connection (``Connection.model()``)."""

    connection: Connection

    @takes_hints
    def observe(self, **inputs: Any) -> int:
        """Send one observation; returns its request id.

        Keyword arguments: numpy arrays (and wire.BFloat16) become tensors, str
        values become metadata; anything else raises TypeError naming the keyword.
        The scheduling hints (``urgency``, ``steps_remaining``, ``priority``,
        ``deadline_ns``, ``actions_remaining``, ``control_rate_hz``, ``control_step``) are those of
        inferential.ObservationHints.

        Raises ServerUnavailable when no connected server accepts it within
        ``send_timeout_ms``. Arrays of at least ``zero_copy_min_bytes`` are sent
        without a copy: do not write into them until their reply has arrived.
        """
        return self._observe(ObservationHints.take(inputs), inputs, awaited=False)

    def _observe(self, hints: ObservationHints, inputs: dict[str, Any], awaited: bool) -> int:
        rid, frames = self._prepare(hints, inputs)
        self.connection._send(frames, rid, self.model_id, awaited)
        return rid

    def get_result(self, timeout_ms: Optional[_Num] = None) -> Optional[Result]:
        """The newest reply for this model not yet returned, waiting up to ``timeout_ms``.

        Returns None when none arrived in time (``timeout_ms=0`` only checks).
        Replies older than one already delivered for this model, and unread ones a
        newer reply supersedes, are dropped and counted in ``connection.stats.stale_dropped``.
        A SUPERSEDED reply is counted and skipped: the newer observation's reply follows.
        Raises the RequestFailed subclass of the status for any other non-OK reply.
        """
        conn = self.connection
        conn._check_open()
        wait = conn.options.default_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + max(0.0, wait) / 1000.0
        matcher = conn._matcher
        while True:
            conn._drain(deadline)
            result = matcher.take_latest(self.model_id)
            if result is not None:
                return result.raise_for_status()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            conn._poll(remaining)

    @takes_hints
    def request(self, timeout_ms: Optional[_Num] = None, **inputs: Any) -> Result:
        """observe() and wait for the reply to that very observation.

        Raises RequestTimeout when none arrives within ``timeout_ms`` (default
        ``request_timeout_ms``), the RequestFailed subclass for a non-OK reply,
        ProtocolError for a malformed one, or when the server answers that it could not
        read an observation of this connection. Its reply never reaches get_result().
        """
        conn = self.connection
        wait = conn.options.request_timeout_ms if timeout_ms is None else timeout_ms
        rid = self._observe(ObservationHints.take(inputs), inputs, awaited=True)
        got = conn._await(rid, wait)
        if got is None:
            raise self._timed_out(rid, wait)
        return got.raise_for_status()


# The 1.x name of the handle, kept for compatibility (``inferential.Model`` is the
# server's model contract, a different thing).
Model = ModelHandle
