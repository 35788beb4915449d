"""The synchronous robot-side client: Connection -> Model -> observe() / get_result() / request().

A Connection owns one ZMQ DEALER socket connected to the server's ROUTER. Like a
ZMQ socket it belongs to one thread: give each thread its own Connection (they
may share a client_id; each gets its own routing identity), or use
inferential.aio.AsyncConnection. docs/protocol.md is the wire specification.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import socket as _socket
import time
from typing import Any, Iterator, Optional, Union

import zmq

from inferential._codec import ConnectionStats, ReplyRouter, encode_observation
from inferential.errors import ConnectionClosed, RequestTimeout, ServerUnavailable
from inferential.options import ClientOptions, resolve_options
from inferential.result import Result

DEFAULT_SERVER = "tcp://localhost:5555"

# Per request the connection calls libzmq through pyzmq's backend with plain int
# flags: its convenience layer (flag enums, a Poller per poll) costs more than
# the system calls themselves.
_zsend = zmq.backend.Socket.send
_zrecv = zmq.backend.Socket.recv
_zpoll = zmq.backend.zmq_poll
_POLLIN = int(zmq.POLLIN)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


def _waiting_messages(sock: zmq.Socket) -> Iterator[list[Any]]:
    """Every message already waiting on ``sock``, each as its list of frames (zero-copy),
    without blocking. ZMQ's descriptor is edge-triggered: callers read until this ends."""
    watch = [(sock, _POLLIN)]
    while _zpoll(watch, 0):
        frame = _zrecv(sock, _NOBLOCK, False)
        frames = [frame]
        while frame.more:  # the rest of a message is already here: ZMQ delivers whole messages
            frame = _zrecv(sock, 0, False)
            frames.append(frame)
        yield frames

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def normalize_server(server: str) -> str:
    """``host:port`` means ``tcp://host:port``; endpoints with a scheme pass unchanged."""
    if not isinstance(server, str) or not server:
        raise ValueError(f"server must be a non-empty endpoint string, got {server!r}")
    return server if _SCHEME.match(server) else f"tcp://{server}"


def default_client_id() -> str:
    """``{hostname}-{pid}-{6 hex digits}``: unique per process, readable in server logs."""
    host = _socket.gethostname().split(".")[0] or "robot"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _check_client_id(client_id: Union[str, int, None], max_bytes: int) -> str:
    if client_id is None:
        return default_client_id()
    if isinstance(client_id, bool) or not isinstance(client_id, (str, int)):
        raise TypeError(f"client_id must be a str or an int, got {type(client_id).__name__}")
    text = str(client_id)
    if not text:
        raise ValueError("client_id is empty; pass None to generate one")
    if len(text.encode()) > max_bytes:
        raise ValueError(f"client_id is longer than {max_bytes} bytes")
    return text


def _check_model_id(model_id: str, max_bytes: int) -> str:
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty str, got {model_id!r}")
    if len(model_id.encode()) > max_bytes:
        raise ValueError(f"model_id is longer than {max_bytes} bytes")
    return model_id


def configure_socket(sock: zmq.Socket, options: ClientOptions) -> None:
    """Apply the options to a DEALER before it connects. The routing id is left to ZMQ."""
    sock.setsockopt(zmq.LINGER, 0)
    # Queue nothing for a server that is not connected: a reconnect delivers no stale backlog.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)
    sock.setsockopt(zmq.HEARTBEAT_IVL, options.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, options.heartbeat_timeout_ms)
    sock.setsockopt(zmq.SNDHWM, options.send_hwm)
    sock.setsockopt(zmq.RCVHWM, options.recv_hwm)
    sock.setsockopt(zmq.SNDTIMEO, options.send_timeout_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, options.limits.max_message_bytes)
    if options.zero_copy_min_bytes is not None:
        sock.copy_threshold = options.zero_copy_min_bytes


class _ConnectionBase:
    """What the sync and async connections share: identity, options, request matching."""

    def __init__(
        self,
        server: str,
        client_id: Union[str, int, None],
        client_type: str,
        options: Optional[ClientOptions],
        overrides: dict[str, Any],
    ) -> None:
        self.options = resolve_options(options, overrides)
        self.server = normalize_server(server)
        self.client_id = _check_client_id(client_id, self.options.limits.max_key_bytes)
        if not isinstance(client_type, str):
            raise TypeError(f"client_type must be a str, got {type(client_type).__name__}")
        self.client_type = client_type
        self._router = ReplyRouter(self.options.limits)
        self._copy = self.options.zero_copy_min_bytes is None
        self._closed = False
        # One DEALER per connection, on a context of its own (sync and asyncio alike: the
        # asyncio connection watches the same socket's descriptor from its loop).
        self._ctx = zmq.Context(io_threads=1)
        self._socket = self._ctx.socket(zmq.DEALER)
        try:
            configure_socket(self._socket, self.options)
            self._socket.connect(self.server)
        except Exception:
            self._socket.close(linger=0)
            self._ctx.term()
            raise

    @property
    def stats(self) -> ConnectionStats:
        """Live counters: sent, received, stale/unknown/malformed drops, replies by status."""
        return self._router.stats

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosed(f"connection to {self.server} is closed")

    def _unavailable(self) -> ServerUnavailable:
        return ServerUnavailable(
            f"no server at {self.server} accepted the observation within "
            f"{self.options.send_timeout_ms} ms (not connected, or not reading)"
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}(server={self.server!r}, client_id={self.client_id!r}, {state})"


def observation_fields(
    urgency: float,
    steps_remaining: Optional[int],
    priority: Optional[int],
    deadline_ns: Optional[int],
    actions_remaining: Optional[int],
    control_rate_hz: Optional[float],
) -> dict[str, Any]:
    """The per-observation fields of observe()/request(), as the encoder takes them."""
    return {
        "urgency": urgency,
        "steps_remaining": steps_remaining,
        "priority": priority,
        "deadline_ns": deadline_ns,
        "actions_remaining": actions_remaining,
        "control_rate_hz": control_rate_hz,
    }


class _ModelBase:
    """Per-model defaults and the encoding of one observation."""

    def __init__(self, connection: Any, model_id: str, latency_budget_ms: float, priority: int) -> None:
        limits = connection.options.limits
        self.connection = connection
        self.model_id = _check_model_id(model_id, limits.max_key_bytes)
        if not isinstance(latency_budget_ms, (int, float)) or not (
            math.isfinite(latency_budget_ms) and latency_budget_ms >= 0
        ):
            raise ValueError(f"latency_budget_ms must be a finite number >= 0, got {latency_budget_ms!r}")
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority must be an int >= 0 (0 is highest), got {priority!r}")
        self.latency_budget_ms = float(latency_budget_ms)
        self.priority = priority

    def _prepare(self, fields: dict[str, Any], inputs: dict[str, Any]) -> tuple[int, list[Any]]:
        """A new request id and the frames of the observation carrying it."""
        conn = self.connection
        conn._check_open()
        rid = conn._router.next_request_id()
        return rid, self._encode(rid, fields, inputs)

    def _timed_out(self, request_id: int, wait: Any) -> RequestTimeout:
        """Forget a request() that got no reply in time; the error to raise for it."""
        self.connection._router.abandon(request_id)
        return RequestTimeout(
            f"no reply to request {request_id} from model '{self.model_id}' within {wait} ms",
            request_id=request_id,
            model_id=self.model_id,
        )

    def _encode(self, request_id: int, fields: dict[str, Any], inputs: dict[str, Any]) -> list[Any]:
        conn = self.connection
        opts = conn.options
        priority = fields["priority"]
        return encode_observation(
            client_id=conn.client_id,
            client_type=conn.client_type,
            model_id=self.model_id,
            request_id=request_id,
            inputs=inputs,
            urgency=fields["urgency"],
            steps_remaining=fields["steps_remaining"],
            priority=self.priority if priority is None else priority,
            latency_budget_ms=self.latency_budget_ms,
            deadline_ns=fields["deadline_ns"],
            actions_remaining=fields["actions_remaining"],
            control_rate_hz=fields["control_rate_hz"],
            auth_token=opts.auth_token,
            timestamp_ns=time.time_ns(),
            limits=opts.limits,
            single_payload_frame=opts.single_payload_frame,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_id!r}, latency_budget_ms={self.latency_budget_ms}, "
            f"priority={self.priority}, client_id={self.connection.client_id!r})"
        )


class Connection(_ConnectionBase):
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

    def model(self, model_id: str, latency_budget_ms: float = 50.0, priority: int = 1) -> "Model":
        """A handle for sending observations to ``model_id`` and reading its replies.

        Handles for the same model_id share the replies of this connection.
        """
        self._check_open()
        return Model(self, model_id, latency_budget_ms, priority)

    def close(self) -> None:
        """Close the socket at once (unsent messages are discarded). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- I/O ---------------------------------------------------------------

    def _send(self, frames: list[Any], request_id: int, model_id: str, awaited: bool) -> None:
        self._check_open()
        self._drain()
        router = self._router
        router.track(request_id, model_id, awaited)
        sock, copy, last = self._socket, self._copy, len(frames) - 1
        try:
            # Blocks up to send_timeout_ms (SNDTIMEO) on the first frame only: once it is
            # queued, the rest of the message is too.
            for i, frame in enumerate(frames):
                _zsend(sock, frame, _SNDMORE if i < last else 0, copy)
        except zmq.Again:
            router.untrack(request_id)
            raise self._unavailable() from None
        except BaseException:
            router.untrack(request_id)
            raise
        router.sent()

    def _drain(self) -> None:
        sock = self._socket
        on_reply = self._router.on_reply
        for frames in _waiting_messages(sock):
            on_reply(frames)

    def _poll(self, seconds: float) -> None:
        _zpoll([(self._socket, _POLLIN)], max(1, math.ceil(seconds * 1000)))


_Num = Union[int, float]


class Model(_ModelBase):
    """Observations to one model and its results, over a Connection."""

    connection: Connection

    def observe(
        self,
        urgency: float = 0.0,
        steps_remaining: Optional[int] = None,
        priority: Optional[int] = None,
        deadline_ns: Optional[int] = None,
        actions_remaining: Optional[int] = None,
        control_rate_hz: Optional[_Num] = None,
        **inputs: Any,
    ) -> int:
        """Send one observation; returns its request id.

        Keyword arguments: numpy arrays (and wire.BFloat16) become tensors, str
        values become metadata; anything else raises TypeError naming the keyword.
        ``urgency`` 0..1; ``steps_remaining`` left in the trajectory; ``priority``
        overrides the model handle's (0 = highest); ``deadline_ns`` absolute Unix
        ns; ``actions_remaining`` in the robot's action queue; ``control_rate_hz``
        at which it consumes them.

        Raises ServerUnavailable when no connected server accepts it within
        ``send_timeout_ms``. Arrays of at least ``zero_copy_min_bytes`` are sent
        without a copy: do not write into them until their reply has arrived.
        """
        fields = observation_fields(urgency, steps_remaining, priority, deadline_ns, actions_remaining, control_rate_hz)
        return self._observe(fields, inputs, awaited=False)

    def _observe(self, fields: dict[str, Any], inputs: dict[str, Any], awaited: bool) -> int:
        rid, frames = self._prepare(fields, inputs)
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
        router = conn._router
        while True:
            conn._drain()
            result = router.take_latest(self.model_id)
            if result is not None:
                return result.raise_for_status()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            conn._poll(remaining)

    def request(
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
        """observe() and wait for the reply to that very observation.

        Raises RequestTimeout when none arrives within ``timeout_ms`` (default
        ``request_timeout_ms``), the RequestFailed subclass for a non-OK reply,
        ProtocolError for a malformed one. Its reply never reaches get_result().
        """
        fields = observation_fields(urgency, steps_remaining, priority, deadline_ns, actions_remaining, control_rate_hz)
        conn = self.connection
        wait = conn.options.request_timeout_ms if timeout_ms is None else timeout_ms
        rid = self._observe(fields, inputs, awaited=True)
        deadline = time.monotonic() + max(0.0, wait) / 1000.0
        router = conn._router
        while True:
            conn._drain()
            got = router.take_awaited(rid)
            if got is not None:
                if isinstance(got, Exception):
                    raise got
                return got.raise_for_status()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timed_out(rid, wait)
            conn._poll(remaining)
