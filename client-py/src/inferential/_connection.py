"""What the sync and asyncio connections share: the DEALER and its options, identity,
the reply matcher, and the encoding of one observation by a model handle.

``client`` and ``aio`` are siblings built on these bases; each adds only its own I/O.
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
from zmq.utils.monitor import recv_monitor_message

from inferential._envelope import DEFAULT_LATENCY_BUDGET_MS, DEFAULT_PRIORITY, encode_describe, encode_observation
from inferential._matching import ConnectionStats, ReplyMatcher
from inferential.errors import ConnectionClosed, RequestTimeout, ServerUnavailable
from inferential.liveness import keepalive_options
from inferential.options import ClientOptions, ObservationHints, resolve_options
from inferential.wire.limits import check_text

DEFAULT_SERVER = "tcp://localhost:5555"

# Per request the connection calls libzmq through pyzmq's backend with plain int
# flags: its convenience layer (flag enums, a Poller per poll) costs more than
# the system calls themselves.
zsend = zmq.backend.Socket.send
zrecv = zmq.backend.Socket.recv
zpoll = zmq.backend.zmq_poll
POLLIN = int(zmq.POLLIN)
NOBLOCK, SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)


#: Replies read per pass before a waiting call looks at its clock again (or, asyncio,
#: lets other callbacks run): a flood of replies must not stretch a wait past its timeout.
DRAIN_CHUNK = 64


def waiting_messages(sock: zmq.Socket, limit: Optional[int] = None) -> Iterator[list[Any]]:
    """The messages already waiting on ``sock`` (at most ``limit``), each as its list of
    frames (zero-copy), without blocking. ZMQ's descriptor is edge-triggered: a caller
    that stops early must come back for the rest without waiting for the descriptor."""
    watch = [(sock, POLLIN)]
    count = 0
    while (limit is None or count < limit) and zpoll(watch, 0):
        count += 1
        frame = zrecv(sock, NOBLOCK, False)
        frames = [frame]
        while frame.more:  # the rest of a message is already here: ZMQ delivers whole messages
            frame = zrecv(sock, 0, False)
            frames.append(frame)
        yield frames


# The monitor events that tell a dead connection from one libzmq is re-establishing; the
# CONNECT_RETRIED of a network error follows its DISCONNECTED within the same io-thread turn.
_LINK_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED
_RETRY_GRACE_MS = 100

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
    check_text("client_id", text, max_bytes)
    return text


def configure_socket(sock: zmq.Socket, options: ClientOptions) -> None:
    """Apply the options to a DEALER before it connects. The routing id is left to ZMQ."""
    sock.setsockopt(zmq.LINGER, 0)
    # Queue nothing for a server that is not connected: a reconnect delivers no stale backlog.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)
    # A silent server is found by TCP keepalive, not ZMTP PINGs: a PING timer can abort
    # the robot's process in libzmq 4.3.x (inferential.liveness).
    keepalive_options(sock, options.heartbeat_ivl_ms, options.heartbeat_timeout_ms)
    sock.setsockopt(zmq.SNDHWM, options.send_hwm)
    sock.setsockopt(zmq.RCVHWM, options.recv_hwm)
    sock.setsockopt(zmq.SNDTIMEO, options.send_timeout_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, options.limits.max_message_bytes)
    if options.curve_server_key is not None:
        assert options.curve_public_key is not None and options.curve_secret_key is not None  # checked by options
        sock.setsockopt(zmq.CURVE_SERVERKEY, options.curve_server_key.encode())
        sock.setsockopt(zmq.CURVE_PUBLICKEY, options.curve_public_key.encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, options.curve_secret_key.encode())
    if options.zero_copy_min_bytes is not None:
        sock.copy_threshold = options.zero_copy_min_bytes


class ConnectionBase:
    """Identity, options, the DEALER and the reply matcher of one connection."""

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
        limits = self.options.limits
        self.client_id = _check_client_id(client_id, limits.max_id_bytes)
        if not isinstance(client_type, str):
            raise TypeError(f"client_type must be a str, got {type(client_type).__name__}")
        check_text("client_type", client_type, limits.max_id_bytes)
        self.client_type = client_type
        self._matcher = ReplyMatcher(limits)
        self._copy = self.options.zero_copy_min_bytes is None
        self._closed = False
        # One DEALER per connection, on a context of its own (sync and asyncio alike: the
        # asyncio connection watches the same socket's descriptor from its loop).
        self._ctx = zmq.Context(io_threads=1)
        try:
            self._open_socket()
        except Exception:
            self._ctx.term()
            raise

    # --- the socket and its recovery --------------------------------------------

    def _open_socket(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        try:
            configure_socket(sock, self.options)
            # Watched for a connection libzmq ends and never re-establishes (see _link_lost).
            monitor = sock.get_monitor_socket(_LINK_EVENTS)
            sock.connect(self.server)
        except Exception:
            sock.close(linger=0)
            raise
        self._socket, self._monitor = sock, monitor

    def _close_socket(self) -> None:
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=0)

    def _link_lost(self) -> bool:
        """True when libzmq dropped the connection for good.

        After a protocol error (a reply over ``max_message_bytes``, a peer speaking
        nonsense) libzmq closes the connection and, unlike after a network error, never
        reconnects: a DISCONNECTED event with no CONNECT_RETRIED after it. Read on each
        send (one non-blocking poll of the monitor).
        """
        monitor = self._monitor
        watch = [(monitor, POLLIN)]
        lost = False
        wait_ms = 0
        while zpoll(watch, wait_ms):
            try:
                event = recv_monitor_message(monitor, NOBLOCK)["event"]
            except zmq.ZMQError:
                break
            lost = event == zmq.EVENT_DISCONNECTED
            # After a DISCONNECTED, give the CONNECT_RETRIED of a network error its moment
            # (it is queued right after; a protocol error has none): once per disconnect.
            wait_ms = _RETRY_GRACE_MS if lost else 0
        return lost

    def _reset_socket(self) -> None:
        """A new DEALER for the same server, counted in ``stats.socket_resets``. Replies
        to what the old one sent are lost: their requests time out as they would have."""
        self._close_socket()
        self._open_socket()
        self._matcher.stats.socket_resets += 1

    @property
    def stats(self) -> ConnectionStats:
        """Live counters: sent, received, stale/unknown/malformed drops, replies by status."""
        return self._matcher.stats

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

    def _describe(self) -> tuple[int, list[Any]]:
        """A request id and the frames of a describe request (``server_info()``)."""
        self._check_open()
        rid = self._matcher.next_request_id()
        frames = encode_describe(
            client_id=self.client_id,
            client_type=self.client_type,
            request_id=rid,
            timestamp_ns=time.time_ns(),
            auth_token=self.options.auth_token,
        )
        return rid, frames

    def _describe_timed_out(self, request_id: int, wait: Any) -> RequestTimeout:
        self._matcher.abandon(request_id)
        return RequestTimeout(
            f"no describe reply from {self.server} within {wait} ms: a 1.x server, or none reachable",
            request_id=request_id,
            model_id="",
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}(server={self.server!r}, client_id={self.client_id!r}, {state})"


class ModelHandleBase:
    """A handle for one model over a connection: its defaults and the encoding of one observation."""

    def __init__(
        self,
        connection: Any,
        model_id: str,
        latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS,
        priority: int = DEFAULT_PRIORITY,
    ) -> None:
        self.connection = connection
        if not isinstance(model_id, str) or not model_id:
            raise ValueError(f"model_id must be a non-empty str, got {model_id!r}")
        check_text("model_id", model_id, connection.options.limits.max_id_bytes)
        self.model_id = model_id
        if not isinstance(latency_budget_ms, (int, float)) or not (
            math.isfinite(latency_budget_ms) and latency_budget_ms >= 0
        ):
            raise ValueError(f"latency_budget_ms must be a finite number >= 0, got {latency_budget_ms!r}")
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority must be an int >= 0 (0 is highest), got {priority!r}")
        self.latency_budget_ms = float(latency_budget_ms)
        self.priority = priority

    def _prepare(self, hints: ObservationHints, inputs: dict[str, Any]) -> tuple[int, list[Any]]:
        """A new request id and the frames of the observation carrying it.

        The id is taken here, before any await of the asyncio client: two tasks sending at
        once may hand their observations to the socket in the other order, so there ids
        increase per task, not always in send order.
        """
        conn = self.connection
        conn._check_open()
        rid = conn._matcher.next_request_id()
        opts = conn.options
        frames = encode_observation(
            client_id=conn.client_id,
            client_type=conn.client_type,
            model_id=self.model_id,
            request_id=rid,
            inputs=inputs,
            hints=hints,
            default_priority=self.priority,
            latency_budget_ms=self.latency_budget_ms,
            auth_token=opts.auth_token,
            timestamp_ns=time.time_ns(),
            limits=opts.limits,
            single_payload_frame=opts.single_payload_frame,
        )
        return rid, frames

    def _timed_out(self, request_id: int, wait: Any) -> RequestTimeout:
        """Forget a request() that got no reply in time; the error to raise for it."""
        self.connection._matcher.abandon(request_id)
        return RequestTimeout(
            f"no reply to request {request_id} from model '{self.model_id}' within {wait} ms",
            request_id=request_id,
            model_id=self.model_id,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.model_id!r}, latency_budget_ms={self.latency_budget_ms}, "
            f"priority={self.priority}, client_id={self.connection.client_id!r})"
        )
