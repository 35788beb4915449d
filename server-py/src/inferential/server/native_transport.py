"""The server's socket on a native I/O thread: ``inferential_native`` (server-native/).

The socket is made, configured and bound exactly as :class:`RouterTransport` does it
(this class is one: its ``bind`` is the Python transport's, with every option, CURVE and
the connection watch), then handed to the extension module, which calls the same libzmq
pyzmq loaded and from then on owns the socket. Its I/O thread receives every message, checks
it with the Rust crate's wire rules (the rules of :func:`protocol.decode_request`) and
queues it; the event loop is woken through an eventfd only when the queue goes from
empty to non-empty, and takes a whole burst with one call. An accepted observation
arrives checked: here it only becomes a parsed envelope and numpy views over the
received frames (no copy). Anything the check refuses arrives as raw frames and takes
the Python path (``on_message``), so every refusal keeps the status and text the Python
decoder gives it. Replies are handed to the socket at once, from this thread, with the
same "send now or never" result as :class:`RouterTransport`.

``transport.native``: ``off`` is :class:`RouterTransport`; ``on`` this transport (an
error when the module is not built); ``auto`` this one when the module imports (and has
CURVE when CURVE is configured), else the Python one. The environment variable
``INFERENTIAL_TRANSPORT`` (``native`` or ``python``) overrides ``auto`` only: the test
suite runs both paths with it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Optional

import numpy as np
import zmq

from inferential._proto import inferential_pb2 as pb
from inferential.config.schema import TransportConfig
from inferential.server.curve import CurveKeys
from inferential.server.early import StreamKey, remember_budget
from inferential.server.protocol import Decoded, response_id_prefix
from inferential.server.transport import RouterTransport
from inferential.wire import DTYPE_TO_NUMPY

logger = logging.getLogger("inferential.transport")

try:
    import inferential_native as _native
except ImportError:  # not built: the pure-Python path serves
    _native = None

ENV_VAR = "INFERENTIAL_TRANSPORT"
#: how to get the native transport (in the errors and the line logged when ``auto`` cannot use it)
INSTALL_HINT = 'pip install "inferential[server-native]", or make setup-native in a checkout'
_monotonic_ns = time.monotonic_ns
_parse = pb.Observation.FromString
_ndarray = np.ndarray


@functools.lru_cache(maxsize=1)
def libzmq_path() -> Optional[str]:
    """The file of the libzmq pyzmq loaded (the module calls that one), or None."""
    zmq.zmq_version()  # the backend, and so libzmq, is loaded
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if line.strip() else ""
                if "/libzmq" in path and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def native_available(curve: bool = False) -> bool:
    """True when the module is built and can find pyzmq's libzmq (CURVE is pyzmq's: the same)."""
    return _native is not None and libzmq_path() is not None


def _unavailable() -> str:
    """Why ``native_available`` is False, as the error and the fallback's log line word it."""
    return "is not installed" if _native is None else "cannot find pyzmq's libzmq"


def wants_native(config: TransportConfig, curve: bool = False) -> bool:
    """Whether ``config`` (and ``INFERENTIAL_TRANSPORT`` for ``auto``) selects the native path."""
    mode = getattr(config, "native", "auto")
    if mode == "off":
        return False
    if mode == "on":
        if not native_available(curve):
            raise RuntimeError(
                f"transport.native is on but the inferential_native module {_unavailable()} ({INSTALL_HINT})"
            )
        return True
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced == "python":
        return False
    if forced == "native" and not native_available(curve):
        raise RuntimeError(f"{ENV_VAR}=native but the inferential_native module is not usable")
    return native_available(curve)


def make_transport(config: TransportConfig, curve: Optional[CurveKeys] = None) -> RouterTransport:
    """The transport ``config.native`` selects. When ``auto`` falls back to the Python
    transport because the module is missing, that is logged once with how to install it:
    an operator should know which path serves (docs/performance.md, "The native path")."""
    if wants_native(config, curve is not None):
        return NativeTransport(config, curve=curve)
    if getattr(config, "native", "auto") == "auto" and not native_available(curve is not None):
        logger.info(
            "serving on the Python transport: the native one (inferential_native) %s (%s)", _unavailable(), INSTALL_HINT
        )
    return RouterTransport(config, curve=curve)


class NativeTransport(RouterTransport):
    """:class:`RouterTransport` (bind, attach, drain, send, backlog_bound_ns, close) with the
    socket served by the native module; ``on_request`` is the hook for checked observations."""

    def __init__(
        self, config: TransportConfig, context: Optional[zmq.Context] = None, curve: Optional[CurveKeys] = None
    ) -> None:
        if _native is None:
            raise RuntimeError("the inferential_native module is not built")
        super().__init__(config, context=context, curve=curve)
        self._router: Any = None
        self._fd = -1
        #: called with (identity, Decoded, CURVE user id or None) for a checked observation
        self.on_request: Optional[Callable[[bytes, Decoded, Optional[str]], None]] = None
        self._ref_ns = _monotonic_ns()
        #: checked observations handed to the Python decoder after all (this protobuf runtime
        #: refused an envelope the Rust check took): 0 in normal operation
        self.rechecked = 0
        #: called with the refusals the module answered itself (see set_shedding), after a burst
        self.on_refusals: Optional[Callable[[list, list, list], None]] = None
        #: called with [(robot id, identity, model, when read)] of the refused observations
        #: that stated no budget, before the observations taken with them are handled
        self.on_arrivals: Optional[Callable[[list], None]] = None
        #: the engine's current costs per model (Engine.shed_costs), stated to the module
        #: before each burst is taken while a shedding policy is set
        self.costs: Optional[Callable[[], dict]] = None
        self._shedding = False
        #: (robot id, connection, model) -> the budget last stated to the module (note_budget)
        self._budgets: OrderedDict[StreamKey, float] = OrderedDict()
        self._costs_at = 0
        self._refused_seen = 0

    def bind(self) -> str:
        endpoint = super().bind()  # every socket option, CURVE and the watch: the Python transport's
        assert _native is not None and self._sock is not None
        # From here on only the module uses the socket (pyzmq's object keeps it open).
        self._router = _native.Router(libzmq_path(), self._sock.underlying, self.config.max_message_bytes)
        if hasattr(self._router, "set_reply_prefix"):
            self._router.set_reply_prefix(response_id_prefix("r"))  # ids unique among the server's replies
        logger.info("native transport serving %s", endpoint)
        return endpoint

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[list[Any]], None],
        on_burst_end: Callable[[], None],
    ) -> None:
        """Start delivering messages on ``loop``."""
        assert self._router is not None
        self._loop = loop
        self._on_message = on_message
        self._on_burst_end = on_burst_end
        # The eventfd is level-triggered: readable while messages wait, so a burst cut
        # short by BURST or SLICE_NS is continued by the loop itself.
        self._fd = self._router.fileno()
        loop.add_reader(self._fd, self.drain)
        loop.call_soon(self.drain)

    #: messages taken from the module at a time, between checks of the drain's time slice
    TAKE = 32
    #: the engine's costs are stated to the module at most this often (a few µs each time;
    #: a drain per request would pay them per request)
    COSTS_EVERY_NS = 1_000_000

    def drain(self) -> None:
        """Hand up to BURST waiting messages (or SLICE_NS worth) over, then call ``on_burst_end``."""
        router = self._router
        if router is None or self._draining:
            return
        self._draining = True
        try:
            if self._shedding and self.costs is not None:
                now = _monotonic_ns()
                if now - self._costs_at >= self.COSTS_EVERY_NS:
                    # The plan as it is now: what it has queued. In between, the module adds
                    # each request it hands over to the work ahead itself.
                    self._costs_at = now
                    router.set_costs(self.costs())
            items = router.take(self.TAKE)
            self._count_refusals(router)  # what take refused arrived before what it handed over
            if not items:
                return
            on_message, on_request = self._on_message, self.on_request
            watch = getattr(self, "_watch", None)  # the connection watch, when the transport has one
            curve = self._curve is not None
            until = _monotonic_ns() + self.SLICE_NS
            taken = len(items)
            while True:
                for item in items:
                    self._handle(item, on_message, on_request, watch, curve)
                if taken >= self.BURST or _monotonic_ns() > until:
                    break  # the eventfd stays readable: the loop calls drain again
                items = router.take(self.TAKE)
                self._count_refusals(router)
                if not items:
                    break
                taken += len(items)
            self._on_burst_end()  # type: ignore[misc]
        finally:
            self._draining = False

    def _count_refusals(self, router: Any) -> None:
        refused = router.refused
        if refused != self._refused_seen:
            self._refused_seen = refused
            replies, undeliverable, gone = router.take_refusals()
            if self.on_refusals is not None:
                self.on_refusals(replies, undeliverable, gone)
            arrivals = router.take_arrivals()
            if arrivals and self.on_arrivals is not None:
                self.on_arrivals(arrivals)

    def set_shedding(self, costs: Optional[dict[str, tuple[float, float, float, float]]], **policy: Any) -> None:
        """Let the module refuse, as it takes them off its queue, observations that can no
        longer be answered in time: they have already waited longer than their budget less
        what serving them still takes (``costs``: per served model, ``Engine.shed_costs``).
        Each costs it a few microseconds instead of a request's worth of the event loop, so
        an overloaded server spends its CPU on what it can answer in time rather than on
        refusing the rest. ``policy``: what admission decides by (``ttl_ms``, ``known``: id ->
        (budget ms, token, pinned priority), ``accept_unknown``, ``default_token``, ``curve``,
        ``urgent_below``, ``default_budget_ms``) and ``response_prefix``. An observation
        that states no budget and whose robot has none configured (a 1.x robot) is judged by
        the budget the scheduler gave its stream's last observation (``note_budget``; the
        scheduler tightens it to the robot's cadence), else by ``default_budget_ms``; without
        that it goes to the loop. None: every observation goes to the loop."""
        if self._router is not None:
            self._router.set_shedding(costs, **policy)
            self._shedding = costs is not None
            self._budgets.clear()  # the module forgot them with its previous policy

    #: streams whose budget the module is told (the oldest told is forgotten first; its
    #: next observation states it again)
    MAX_STREAMS = 4096
    #: a stream's budget is stated again when it moves by more than this fraction
    BUDGET_STEP = 0.05

    def note_budget(self, client_id: str, identity: bytes, model_id: str, budget_ms: float) -> None:
        """The budget the scheduler gave an observation that stated none: the module judges
        the stream's next ones by it (see ``set_shedding``). Stated to the module only when it
        is new or has moved by more than ``BUDGET_STEP``, so a steady robot costs a dict
        lookup per observation."""
        router = self._router
        if router is None or not self._shedding:
            return
        key = (client_id, identity, model_id)
        kept, forgotten = remember_budget(self._budgets, key, budget_ms, self.MAX_STREAMS, self.BUDGET_STEP)
        if kept:
            router.set_stream_budget(*key, budget_ms)
        if forgotten is not None:
            router.set_stream_budget(*forgotten, None)

    def _handle(self, item: tuple, on_message: Any, on_request: Any, watch: Any, curve: bool) -> None:
        """One item the module took off the socket: a checked observation, or frames the
        Python decoder must word the refusal of."""
        try:
            identity = item[0]
            if identity is None:  # refused by the check: the Python decoder words why
                self._ref_ns = item[2]
                frames = item[1]
                if watch is not None and len(frames) > 1 and frames[0].bytes[:1] not in (b"", b"\0"):
                    watch.note_identity(frames[0].bytes, frames[1])
                on_message(frames)
                return
            self._ref_ns = item[5]
            envelope = item[1]
            if watch is not None and identity[:1] != b"\0":
                # An identity the peer chose (libzmq's own start with a zero byte): a
                # 1.x robot's client id, which another connection can take over.
                watch.note_identity(identity, envelope)
            decoded = self._decode(item)
            if decoded is None or on_request is None:
                self.rechecked += 1
                on_message([identity, b"", envelope, *item[2]])
            else:
                on_request(identity, decoded, envelope.get("User-Id") or None if curve else None)
        except Exception:  # the server never dies on input
            logger.exception("unexpected error handling a message")

    @staticmethod
    def _decode(item: tuple) -> Optional[Decoded]:
        """The Decoded of a checked observation: its envelope parsed, numpy views over
        its frames. None when this protobuf runtime refuses an envelope the check took."""
        _, envelope, payload, tensors, payload_bytes, _ = item
        try:
            obs = _parse(memoryview(envelope))  # the envelope is a Frame: protobuf wants a buffer
        except Exception:  # DecodeError: the Python path words the rejection
            return None
        arrays: dict[str, Any] = {}
        for key, code, shape, frame, offset, _count in tensors:
            dt = DTYPE_TO_NUMPY[code]
            if frame < 0:  # zero-size: needs no bytes
                arrays[key] = np.empty(shape, dtype=dt)
                continue
            # A view over the frame (the check put count elements there): the constructor
            # builds it in one call, 2-3x quicker than frombuffer and a reshape.
            arrays[key] = _ndarray(shape, dt, payload[frame], offset)
        metadata = obs.metadata
        if metadata:
            inputs: dict[str, Any] = dict(metadata)
            inputs.update(arrays)
        else:
            inputs = arrays
        return Decoded(obs=obs, inputs=inputs, payload_bytes=payload_bytes)

    def backlog_bound_ns(self, now_ns: Optional[int] = None) -> int:
        """The longest the message being handled can have waited for the server.

        The I/O thread found the receive queue empty at ``ref_ns`` before reading it, so
        it arrived after that; the thread reads as soon as input is signalled.
        """
        now = _monotonic_ns() if now_ns is None else now_ns
        return max(0, now - self._ref_ns)

    def native_reply(self) -> Optional[tuple[Any, Any]]:
        """The module's ``Router.reply`` (a reply encoded and sent without Python; see
        ``Ledger.answer``) and ``Router.check_input`` (after replies sent without the input
        check), None when the module does not have them or is not bound."""
        router = self._router
        if router is None or not hasattr(router, "reply"):
            return None
        return router.reply, router.check_input

    def send(self, frames: list[Any]) -> Optional[str]:
        """Send now or never: None when handed to ZMQ, else why it could not be."""
        router = self._router
        assert router is not None
        result: Optional[str] = router.send(frames)
        return result

    def close(self) -> None:
        if self._router is not None:
            if self._loop is not None and self._fd >= 0:
                self._loop.remove_reader(self._fd)
                self._fd = -1
            self._router.close()  # the I/O thread stops and lets go of the socket
            self._router = None
        super().close()  # closes the socket (queued replies get their linger) and the watch
