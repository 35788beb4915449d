"""The ROUTER's connections, watched: what libzmq does to them without telling the server.

libzmq accepts, authenticates and drops connections on its own threads. Three things a
hostile or unlucky peer does there never reach the server as messages:

- a frame over ``transport.max_message_bytes`` (ZMQ_MAXMSGSIZE): libzmq closes the
  connection before the server sees a byte of it;
- too many connections: each holds a descriptor and queues of its own;
- a second connection claiming a 1.x robot's routing identity (ZMQ_ROUTER_HANDOVER).

:class:`ConnectionWatch` makes them visible. A thread of its own reads the socket's
monitor (ZMQ_EVENT_ACCEPTED, HANDSHAKE_*, DISCONNECTED), counts every event and logs the
unusual ones at most once per kind every 10 s; when a ZAP domain is needed (a connection
cap, CURVE) the same thread is the socket's ZAP handler, which libzmq asks about every
connection during its handshake (for the NULL mechanism too once a domain is set). The
server's loop thread only calls :meth:`note_identity` for messages of 1.x robots.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Optional

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from inferential.server.curve import ZAP_DOMAIN, CurveKeys

logger = logging.getLogger("inferential.transport")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # RFC 27: where libzmq looks for a context's ZAP handler

#: monitor event -> the ``event`` label of ``inferential_connection_events_total``
EVENTS: dict[int, str] = {
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_ACCEPT_FAILED: "accept_failed",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
    zmq.EVENT_DISCONNECTED: "disconnected",
}
_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_AUTH}
_MASK = 0
for _event in EVENTS:
    _MASK |= _event

#: why a disconnect may have happened: libzmq says no more
_DISCONNECT_WHY = (
    "closed by the robot, or by libzmq for a protocol error such as a frame over "
    "transport.max_message_bytes ({limit} bytes), which no reply can answer"
)

_ids = itertools.count(1)


class LogLimiter:
    """At most one log line per key every ``every_s``; the lines suppressed are counted into the next."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def log(self, level: int, key: str, message: str, *args: Any) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] += 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            message += f" (and {held} more in the last {self.every_s:g} s)"
        logger.log(level, message, *args)
        return True


class ConnectionWatch:
    """Counts and logs the ROUTER's connection events; caps live connections; checks CURVE keys.

    Create it on the socket before ``bind`` (so no connection escapes it), then ``start``.
    ``count(event)`` is called from the watch thread for every event it sees (see EVENTS,
    plus ``refused_over_cap``, ``refused_curve_key``, ``identity_handover`` and ``identity_moved``).
    """

    #: a ZAP approval counts as a live connection until its handshake's success is seen
    #: (normally within a millisecond) or for this long if the handshake failed after it
    PENDING_S = 2.0
    #: identities of 1.x robots remembered with their connection (least recently seen go first)
    MAX_IDENTITIES = 16384

    def __init__(
        self,
        sock: zmq.Socket,
        *,
        count: Callable[[str], None],
        max_message_bytes: int,
        max_connections: Optional[int] = None,
        curve: Optional[CurveKeys] = None,
    ) -> None:
        self._count = count
        self.max_connections = max_connections
        self._curve = curve
        self._limit = max_message_bytes
        self._log = LogLimiter()
        ctx = sock.context
        # libzmq sends monitor events blocking, holding a lock its I/O thread needs: a full
        # monitor queue (1,000 events unread: a connection storm while this thread waits for
        # the GIL) would stall every connection. An unbounded receive side never fills (an
        # inproc pipe is unbounded when either end's HWM is 0).
        address = f"inproc://inferential-monitor-{os.getpid()}-{next(_ids)}"
        sock.monitor(address, _MASK)
        self._monitor = ctx.socket(zmq.PAIR)
        self._monitor.setsockopt(zmq.RCVHWM, 0)
        self._monitor.connect(address)
        self._zap: Optional[zmq.Socket] = None
        if max_connections is not None or curve is not None:
            zap = ctx.socket(zmq.REP)
            zap.setsockopt(zmq.LINGER, 0)
            zap.bind(ZAP_ENDPOINT)  # one per context: a transport with a handler owns its context
            self._zap = zap
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        wake = f"inproc://inferential-watch-{os.getpid()}-{next(_ids)}"
        self._wake_r = ctx.socket(zmq.PAIR)
        self._wake_r.bind(wake)
        self._wake_w = ctx.socket(zmq.PAIR)
        self._wake_w.setsockopt(zmq.LINGER, 0)
        self._wake_w.connect(wake)
        self._thread: Optional[threading.Thread] = None
        # Live connections past their handshake: succeeded - (disconnected - failed), since
        # every connection ends in one DISCONNECTED and a failed handshake emits one failure
        # first (libzmq 4.3's HANDSHAKE_SUCCEEDED carries no descriptor to track).
        self.succeeded = 0
        self.failed = 0
        self.disconnected = 0
        self._pending: collections.deque[float] = collections.deque()
        self.counts: collections.Counter[str] = collections.Counter()
        # 1.x identity -> (descriptor, its generation, peer address) of the connection it last
        # came from; a descriptor's generation counts its accepts, since libzmq reuses numbers
        self._identities: collections.OrderedDict[bytes, tuple[int, int, Any]] = collections.OrderedDict()
        self._generation: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inferential-connections", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close its sockets (before the ROUTER's context is terminated)."""
        if self._thread is not None:
            self._wake_w.send(b"")
            self._thread.join(5)
            self._thread = None
        for s in (self._monitor, self._zap, self._wake_r, self._wake_w):
            if s is not None:
                s.close(linger=0)

    def live(self) -> int:
        """Connections past their handshake now, plus ZAP approvals whose handshake is finishing."""
        now = time.monotonic()
        pending = self._pending
        while pending and now - pending[0] > self.PENDING_S:
            pending.popleft()
        return max(0, self.succeeded - (self.disconnected - self.failed)) + len(pending)

    # -- the watch thread ------------------------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        while True:
            try:
                ready = dict(poller.poll())
                if self._wake_r in ready:
                    return
                # Events first: the ZAP decision must see the connections that ended before it.
                self._read_monitor()
                if self._zap is not None and self._zap in ready:
                    self._answer_zap()
            except zmq.ZMQError as err:
                if err.errno in (zmq.ETERM, zmq.ENOTSOCK):  # the context or a socket is going away
                    return
                logger.exception("connection watch: unexpected error")  # reading on keeps libzmq unblocked
            except Exception:  # the watch must not die on one odd event
                logger.exception("connection watch: unexpected error")

    def _tally(self, event: str) -> None:
        self.counts[event] += 1
        self._count(event)

    def _read_monitor(self) -> None:
        monitor = self._monitor
        while monitor.poll(0):
            message = parse_monitor_message(monitor.recv_multipart())
            event, value = int(message["event"]), int(message["value"])
            name = EVENTS.get(event)
            if name is None:
                continue
            if event == zmq.EVENT_ACCEPTED:
                self._generation[value] = self._generation.get(value, 0) + 1
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded += 1
                if self._pending:
                    self._pending.popleft()
            elif event in _FAILED:
                self.failed += 1
                if event != zmq.EVENT_HANDSHAKE_FAILED_AUTH:  # refusals are logged where decided
                    self._log.log(logging.INFO, name, "a connection failed its handshake (%s)", name)
            elif event == zmq.EVENT_DISCONNECTED:
                self.disconnected += 1
                self._log.log(logging.INFO, name, "a connection ended: " + _DISCONNECT_WHY.format(limit=self._limit))
            elif event == zmq.EVENT_ACCEPT_FAILED:
                self._log.log(logging.WARNING, name, "could not accept a connection: %s", os.strerror(value))
            self._tally(name)

    def _answer_zap(self) -> None:
        zap = self._zap
        assert zap is not None
        while zap.poll(0):
            request = zap.recv_multipart()
            request_id = request[1] if len(request) > 1 else b""
            # A REP socket must answer before it can read again, or every later handshake
            # would wait forever: whatever happens here, a reply goes out.
            try:
                if len(request) < 6:
                    code, text, user = b"500", b"malformed ZAP request", b""
                else:
                    code, text, user = self._decide(request[3], request[5], request[6:])
            except Exception:
                logger.exception("connection watch: ZAP decision failed")
                code, text, user = b"500", b"internal error", b""
            if code == b"200":
                self._pending.append(time.monotonic())
            zap.send_multipart([b"1.0", request_id, code, text, user, b""])

    def _decide(self, address: bytes, mechanism: bytes, credentials: list[bytes]) -> tuple[bytes, bytes, bytes]:
        cap = self.max_connections
        if cap is not None and self.live() >= cap:
            self._tally("refused_over_cap")
            self._log.log(
                logging.WARNING,
                "refused_over_cap",
                "refused a connection from %s: %d connections open, transport.max_connections is %d",
                address.decode(errors="replace"),
                self.live(),
                cap,
            )
            return b"400", b"over transport.max_connections", b""
        user = b""
        if self._curve is not None:
            if mechanism != b"CURVE" or not credentials:
                return b"400", b"CURVE required", b""
            key = z85.encode(credentials[0])
            client_id = self._curve.by_key.get(key)
            if client_id is None:
                self._tally("refused_curve_key")
                self._log.log(
                    logging.INFO,
                    "refused_curve_key",
                    "CURVE handshake refused: key %s is not in clients.known",
                    key.decode(errors="replace"),
                )
                return b"400", b"unknown key", b""
            user = client_id.encode()
        return b"200", b"OK", user

    # -- the loop thread: who speaks under a 1.x identity ---------------------------------------

    def note_identity(self, identity: bytes, frame: Any) -> None:
        """For a message under a routing identity the peer chose (1.x robots: their client id),
        notice a second connection taking it over (ZMQ_ROUTER_HANDOVER): count it, log it, and
        close the connection that lost it, so that robot sees its connection end (and
        reconnects) instead of sending into one libzmq no longer reads."""
        try:
            fd = frame.get(zmq.SRCFD)
        except zmq.ZMQError:
            return
        generation = self._generation.get(fd, 0)
        known = self._identities.get(identity)
        peer = _peer_of(fd)
        if known is not None:
            self._identities.move_to_end(identity)
            # Same descriptor and same TCP peer: the same connection (a robot that reconnects
            # can get its old descriptor number, never its old peer address while that is
            # open). The generation, which comes from monitor events the watch thread may
            # not have read yet, decides only where there is no peer address (not TCP).
            if known[0] == fd and known[2] == peer and (peer is not None or known[1] == generation):
                return
        self._identities[identity] = (fd, generation, peer)
        if len(self._identities) > self.MAX_IDENTITIES:
            self._identities.popitem(last=False)
        if known is None:
            return
        old_fd, _, old_peer = known
        # The old connection is still open when its descriptor still has its peer. (Not its
        # generation: the monitor event of the old connection's own accept may be read after
        # its first message, which would make a live connection look ended.)
        alive = old_fd != fd and old_peer is not None and _peer_of(old_fd) == old_peer
        if not alive:
            # The old connection is gone (its descriptor closed or reused): a robot that
            # reconnected, or, with duplicate_identity "reject", a newcomer libzmq kept
            # waiting until the first connection ended.
            self._tally("identity_moved")
            self._log.log(
                logging.INFO,
                "identity_moved",
                "routing identity %r now speaks from %s (its previous connection ended)",
                identity[:64],
                _address(peer),
            )
            return
        self._tally("identity_handover")
        self._log.log(
            logging.WARNING,
            "identity_handover",
            "routing identity %r moved from the connection of %s to one from %s "
            "(transport.duplicate_identity: handover); the old connection is closed",
            identity[:64],
            _address(old_peer),
            _address(peer),
        )
        _shut(old_fd)


def _peer_of(fd: int) -> Any:
    """The TCP peer (host, port) of a descriptor libzmq owns, or None (closed, not TCP)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        with socket.socket(fileno=dup) as s:
            return s.getpeername()
    except OSError:
        return None


def _shut(fd: int) -> None:
    """End the connection on ``fd`` without closing libzmq's descriptor: libzmq sees it end."""
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        with socket.socket(fileno=dup) as s:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _address(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
