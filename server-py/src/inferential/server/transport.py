"""The server's socket: one ZMQ ROUTER. Knows frames, not messages."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Optional

import zmq

from inferential.config.schema import TransportConfig
from inferential.liveness import keepalive_options
from inferential.server.connections import ConnectionWatch
from inferential.server.curve import CurveKeys, curve_server_options

logger = logging.getLogger("inferential.transport")

# The hot path calls libzmq through pyzmq's backend methods with plain int flags:
# the convenience layer (flag enums, option checks per frame) costs more than the
# system calls themselves for small replies.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_poll = zmq.backend.zmq_poll  # [(socket, POLLIN)], 0: the cheapest "is a message waiting?"
_POLLIN = int(zmq.POLLIN)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_EAGAIN, _EHOSTUNREACH = zmq.EAGAIN, zmq.EHOSTUNREACH
_monotonic_ns = time.monotonic_ns


class _TimedSelector:
    """The event loop's selector, with the times of its last waits recorded.

    A message cannot have waited in the server's receive queue while the loop was
    blocked in ``select``: the descriptor would have woken it. So the time since the
    loop last woke (plus the time it was busy before that wait, see
    :meth:`RouterTransport.backlog_bound_ns`) bounds how long any message read now has
    been waiting for the server: a measured basis, where the robot's timestamp is only
    a claim.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.began = 0  # start of the latest call
        self.woke = 0  # its end
        #: Whether the latest call could wait (a timeout of 0 only looks: the loop had
        #: callbacks ready, e.g. a drain that left messages queued, and proves nothing)
        self.blocking = False

    def select(self, timeout: Optional[float] = None) -> Any:
        self.began = _monotonic_ns()
        self.blocking = timeout is None or timeout > 0
        try:
            return self.inner.select(timeout)
        finally:
            self.woke = _monotonic_ns()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RouterTransport:
    """Receives ``[identity, b"", envelope, *payload]`` and sends replies without blocking.

    Receiving is driven by the event loop watching the socket's file descriptor:
    when it signals, every waiting message is handed to ``on_message`` in one
    go, with no future or task per message. ZMQ's descriptor is edge-triggered,
    so ``drain()`` must also run after sends (the server does so after each
    burst of replies). Sends never wait: a reply to a robot that is gone (EHOSTUNREACH, thanks to
    ROUTER_MANDATORY) or that stopped reading (its send queue at SNDHWM) is
    reported as undeliverable instead of growing memory or stalling everyone.
    """

    #: messages handled per drain before yielding to other callbacks on the loop
    BURST = 256
    #: ... or this much time (ns), whichever comes first: a batch that finished meanwhile
    #: waits at most about this long for the loop (admission plans with that bound)
    SLICE_NS = 2_000_000

    def __init__(
        self, config: TransportConfig, context: Optional[zmq.Context] = None, curve: Optional[CurveKeys] = None
    ) -> None:
        self.config = config
        # Without one given, a server gets a context of its own: its I/O thread serves its
        # robots alone, whatever else the process does with ZMQ, and a ZAP handler (CURVE
        # keys, the connection cap), one per context, is its own.
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self._curve = curve
        self._watch: Optional[ConnectionWatch] = None
        #: called with each connection event's name (connections.EVENTS, refusals, handovers)
        #: from the watch thread; the server counts them as metrics
        self.count: Callable[[str], None] = lambda event: None
        self._sock: Optional[zmq.Socket] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._on_message: Optional[Callable[[list[Any]], None]] = None
        self._on_burst_end: Optional[Callable[[], None]] = None
        self._draining = False
        self._sent = False
        # The drain queued on the loop to run later (at most one: see _drain_later).
        self._later: Optional[asyncio.Handle] = None
        self._selector: Optional[_TimedSelector] = None
        #: monotonic ns when a read last found the receive queue empty
        self.empty_ns = _monotonic_ns()
        self.endpoint: str = ""

    def bind(self) -> str:
        c = self.config
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A 1.x robot's routing identity is its client_id. "handover": one that reconnects
        # under it takes over the old connection instead of being refused until heartbeats
        # expire (and so can anyone claiming it); "reject": the first connection keeps it.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1 if c.duplicate_identity == "handover" else 0)
        sock.setsockopt(zmq.RCVHWM, c.recv_hwm)
        sock.setsockopt(zmq.SNDHWM, c.send_hwm)
        # Per frame; a peer sending more is disconnected by libzmq before we see it.
        sock.setsockopt(zmq.MAXMSGSIZE, c.max_message_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HANDSHAKE_IVL, c.handshake_timeout_ms)
        if self._curve is not None:
            curve_server_options(sock, self._curve)
        # Before bind, so that no connection escapes the count, the cap or the key check.
        self._watch = ConnectionWatch(
            sock,
            count=lambda event: self.count(event),
            max_message_bytes=c.max_message_bytes,
            max_connections=c.max_connections,
            curve=self._curve,
        )
        self._watch.start()
        # Dead peers are found by TCP keepalive, not by ZMTP PINGs from this socket: a
        # PING timer can abort the process in libzmq 4.3.x (see inferential.liveness;
        # test_transport_survives_peer_hangup_at_hwm).
        keepalive_options(sock, c.heartbeat_ivl_ms, c.heartbeat_timeout_ms)
        sock.bind(c.bind)
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        logger.info("listening on %s", self.endpoint)
        return self.endpoint

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[list[Any]], None],
        on_burst_end: Callable[[], None],
    ) -> None:
        """Start delivering messages on ``loop``."""
        assert self._sock is not None
        self._loop = loop
        self._on_message = on_message
        self._on_burst_end = on_burst_end
        # Only the default selector loops have one to time; elsewhere (another loop
        # implementation) the bound falls back to the time since the queue was empty.
        inner = getattr(loop, "_selector", None)
        if isinstance(inner, _TimedSelector):
            self._selector = inner
        elif inner is not None and hasattr(inner, "select"):
            self._selector = loop._selector = _TimedSelector(inner)  # type: ignore[attr-defined]
        loop.add_reader(self._sock.fileno(), self.drain)
        loop.call_soon(self.drain)  # anything that arrived before we watched

    def drain(self) -> None:
        """Hand every waiting message to ``on_message``, then call ``on_burst_end``.

        Replies sent meanwhile can consume the descriptor's edge for input that
        arrived in the same instant, so after a burst that sent anything the socket
        is read again until a pass finds nothing.
        """
        sock = self._sock
        if sock is None or self._draining:
            return
        self._draining = True
        on_message = self._on_message
        burst = self.BURST
        polled = [(sock, _POLLIN)]
        watch = self._watch
        until = _monotonic_ns() + self.SLICE_NS
        try:
            while True:
                self._sent = False
                handled = 0
                while handled < burst:
                    if handled and _monotonic_ns() > until:
                        burst = handled  # the slice is used up: yield like a full burst
                        break
                    if not _poll(polled, 0):
                        self.empty_ns = _monotonic_ns()
                        break
                    try:
                        frame = _recv(sock, _NOBLOCK, False)
                    except zmq.Again:
                        self.empty_ns = _monotonic_ns()
                        break
                    frames = [frame]
                    while frame.more:  # the rest of a message is already here: ZMQ delivers whole messages
                        frame = _recv(sock, 0, False)
                        frames.append(frame)
                    handled += 1
                    if watch is not None and len(frames) > 1:
                        identity = frames[0].bytes  # 0.25 us; frame.buffer[0] costs 1 us
                        if identity[:1] != b"\0":
                            # An identity the peer chose (libzmq's own start with a zero byte): a 1.x
                            # robot's client id, which another connection can take over.
                            watch.note_identity(identity, frames[1])
                    try:
                        on_message(frames)  # type: ignore[misc]
                    except Exception:  # the server never dies on input
                        logger.exception("unexpected error handling a message")
                if handled:
                    self._on_burst_end()  # type: ignore[misc]
                if handled >= burst:
                    self._drain_later()  # more waiting: continue after other callbacks
                    return
                if not self._sent:
                    return
        finally:
            self._draining = False

    def _drain_later(self) -> None:
        """Queue a drain on the loop unless one is queued already. One at most: each queued
        drain reads for a whole slice, and each that ends its slice with input waiting queued
        another, so under a flood (robots refused and sending again at once) they piled up,
        twenty at a time, and a finished batch's callback waited behind all of them, 50-140 ms
        for a 1 ms model: the model sat idle while the loop read only to refuse."""
        if self._later is None and self._loop is not None:
            self._later = self._loop.call_soon(self._drain_queued)

    def _drain_queued(self) -> None:
        self._later = None
        self.drain()

    def backlog_bound_ns(self, now_ns: Optional[int] = None) -> int:
        """The longest a message read now can have waited in the receive queue.

        The queue was empty at ``empty_ns``, so a message read now arrived after it.
        When the loop's latest ``select`` since then could wait, a message there before
        it would have ended it at once, and one arriving during it woke the loop: it
        waited at most since the loop woke, plus the time the loop was busy between
        finding the queue empty and that wait. A ``select`` that could not wait (the
        loop had callbacks ready) proves nothing: a drain that stopped at its burst
        leaves messages queued, and their edge of ZMQ's descriptor is already spent, so
        the bound is then the time since the queue was last empty. (Counting such calls
        as waits made the bound a burst's length while observations queued for a
        quarter of a second, which the server then took as fresh: docs/performance.md.)
        """
        now = _monotonic_ns() if now_ns is None else now_ns
        empty = self.empty_ns
        sel = self._selector
        if sel is None or sel.began < empty or not sel.blocking:
            return max(0, now - empty)
        return max(0, now - sel.woke) + max(0, sel.began - empty)

    def send(self, frames: list[Any]) -> Optional[str]:
        """Send now or never: None when handed to ZMQ, else why it could not be."""
        sock = self._sock
        assert sock is not None
        self._sent = True
        if not self._draining:
            # A send outside drain() (a timer, a worker's batch): look for input after it.
            self._drain_later()
        last = len(frames) - 1
        try:
            # Only the first frame can fail (ROUTER_MANDATORY checks the identity, HWM the
            # queue); once it is accepted ZMQ takes the rest of the message as a whole.
            for i, frame in enumerate(frames):
                _send(sock, frame, _NOBLOCK | _SNDMORE if i < last else _NOBLOCK, False)
            return None
        except zmq.ZMQError as err:
            if err.errno == _EHOSTUNREACH:
                return "peer disconnected"
            if err.errno == _EAGAIN:
                return "peer is not reading (send queue full)"
            raise

    @property
    def connections(self) -> Optional[ConnectionWatch]:
        """What the connection watch has seen (counts, live connections); None before bind."""
        return self._watch

    def close(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
                timed = self._selector
                if timed is not None and getattr(self._loop, "_selector", None) is timed:
                    self._loop._selector = timed.inner  # type: ignore[attr-defined,union-attr]
                self._selector = None
            # The monitor goes first, while the watch still reads it: libzmq sends monitor
            # events blocking, on the I/O thread, so an event (a robot hanging up during the
            # linger below) sent after the watch's reader closed would stall that thread, and
            # every socket of the context with it, for good.
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._sock.close(linger=200)  # let replies already queued go out
            self._sock = None
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._own_ctx:
            self._ctx.term()
            self._own_ctx = False
