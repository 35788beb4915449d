"""The reference peer: a scripted ROUTER that records what a client puts on the wire.

It runs on its own thread with its own ZMQ context. Everything it receives is kept as a
`Received` record (routing identity, raw frames, the envelope decoded by `refwire`, the
arrival time); the runner then tells it what to send back: a reply to any received
observation (in any order, twice, late, for another model, malformed) or raw frames.
It can stop answering, close its port and reopen it, and it logs connection events from a
socket monitor, so reconnection and heartbeats can be timed.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import zmq
from zmq.utils.monitor import recv_monitor_message

import refwire


@dataclass
class Received:
    identity: bytes
    frames: list[bytes]  # as the ROUTER read them, identity removed: [delimiter, envelope, payload...]
    at: float  # time.monotonic()
    envelope: Optional[dict[str, Any]] = None
    error: str = ""  # why the envelope could not be read, when it could not

    @property
    def payload(self) -> list[bytes]:
        return self.frames[2:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PeerOptions:
    heartbeat_ivl_ms: int = 0
    heartbeat_timeout_ms: int = 0
    curve_secret_key: Optional[bytes] = None  # Z85: the peer is a CURVE server (any client key)


class ReferencePeer:
    def __init__(self, port: Optional[int] = None, options: Optional[PeerOptions] = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.options = options or PeerOptions()
        self.received: list[Received] = []
        self.events: list[tuple[float, str]] = []  # (monotonic time, zmq event name)
        self._lock = threading.Condition()
        self._ctx = zmq.Context()
        self._outbox: list[list[bytes]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._up = False
        # Called on the peer's thread for every message received (the runner's auto-replies).
        self.on_receive: Optional[Callable[[Received], None]] = None
        self.auto: Optional[dict[str, Any]] = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> "ReferencePeer":
        self._stop.clear()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="reference-peer")
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("reference peer did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._ctx.term()

    def restart(self, down_ms: float) -> None:
        """Close the port, keep it closed ``down_ms``, open it again (same port)."""
        self.stop()
        time.sleep(down_ms / 1000.0)
        self.start()

    # -- what the client sent --------------------------------------------------------

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Block until ``count`` messages have arrived in total; return them all."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"reference peer: {len(self.received)} of {count} messages arrived")
                self._lock.wait(left)
            return list(self.received)

    def wait_event(self, name: str, after: float, timeout_s: float) -> Optional[float]:
        """The time of the first monitor event ``name`` later than ``after``, or None."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                for at, event in self.events:
                    if event == name and at > after:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._lock.wait(left)

    # -- what the peer sends ---------------------------------------------------------

    def send(self, identity: bytes, frames: list[bytes]) -> None:
        with self._lock:
            self._outbox.append([identity, *frames])

    def reply(self, to: Received, fields: dict[str, Any], payload: list[bytes]) -> None:
        self.send(to.identity, [b"", refwire.encode("ModelResponse", fields), *payload])

    # -- the socket thread -----------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self.options.heartbeat_ivl_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, self.options.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.options.heartbeat_timeout_ms or self.options.heartbeat_ivl_ms * 3)
        if self.options.curve_secret_key:
            sock.curve_server = True
            sock.curve_secretkey = self.options.curve_secret_key
        monitor = sock.get_monitor_socket()
        for attempt in range(100):
            try:
                sock.bind(self.endpoint)
                break
            except zmq.ZMQError:
                if attempt == 99:
                    raise
                time.sleep(0.02)
        self._up = True
        ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                with self._lock:
                    outbox, self._outbox = self._outbox, []
                for frames in outbox:
                    try:
                        sock.send_multipart(frames, flags=zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass  # the connection is gone: the reply is lost, as on a real network
                events = dict(poller.poll(5))
                if monitor in events:
                    while True:
                        try:
                            msg = recv_monitor_message(monitor, flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        with self._lock:
                            self.events.append((time.monotonic(), zmq.Event(msg["event"]).name))
                            self._lock.notify_all()
                if sock in events:
                    while True:
                        try:
                            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._record(frames)
        finally:
            self._up = False
            sock.disable_monitor()
            monitor.close(0)
            sock.close(0)

    def _record(self, frames: list[bytes]) -> None:
        rec = Received(identity=frames[0], frames=frames[1:], at=time.monotonic())
        if len(rec.frames) < 2 or rec.frames[0] != b"":
            rec.error = "missing or non-empty delimiter"
        else:
            try:
                rec.envelope = refwire.decode("Observation", rec.frames[1])
            except refwire.DecodeError as exc:
                rec.error = str(exc)
        with self._lock:
            self.received.append(rec)
            self._lock.notify_all()
        if self.on_receive is not None:
            self.on_receive(rec)


@dataclass
class AcceptLog:
    """A bare TCP listener that accepts and at once closes every connection, logging when."""

    port: int = field(default_factory=free_port)
    accepted: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(64)
        self._sock.settimeout(0.01)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted.append(time.monotonic())
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
