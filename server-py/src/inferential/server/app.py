"""The server: wires transport, protocol, admission, engine, ledger, backend and metrics.

A message's path: the transport hands frames to :meth:`Server._on_frames`, which
decodes them (``protocol``), admits or rejects the observation (``admission``),
enters the request in the ``ledger`` and gives it to the ``engine``'s scheduler;
the engine launches batches on the backend and answers through the ledger. This
module keeps the wiring, the lifecycle (start, signals, stop) and the calls made
from other threads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Sequence

from inferential.config.schema import InferentialConfig, SchedulingConfig
from inferential.dispatch.base import Backend
from inferential.dispatch.registry import create_backend
from inferential.metrics.store import MetricsStore
from inferential.scheduler import Scheduler
from inferential.server.admission import admit
from inferential.server.curve import CurveKeys, user_id
from inferential.server.early import EarlyRefusal
from inferential.server.engine import Engine, apply_gil_switch_interval
from inferential.server.ledger import Ledger
from inferential.server.native_transport import NativeTransport, make_transport
from inferential.server.protocol import (
    Decoded,
    Describe,
    Rejection,
    decode_request,
    describe_reply,
    encode_reply,
    response_id_prefix,
    server_name,
)
from inferential.server.ratelimit import DROP, RateLimiter
from inferential.server.registry import ClientRegistry
from inferential.server.transport import RouterTransport
from inferential.wire import Limits, Status
from inferential.wire.limits import buffer

# The SDKs' default priority (docs/protocol.md): a robot more urgent than it may be put first
# by the plan, so the native transport refuses it only for its own lateness.
DEFAULT_PRIORITY = 1

logger = logging.getLogger("inferential.server")

_SHUTTING_DOWN = "server is shutting down"


def raise_descriptor_limit() -> None:
    """Raise the soft limit on open descriptors to the hard one.

    Every robot connection is a descriptor, and so is every HTTP scrape. At the usual
    soft limit of 1,024, a thousand idle connections leave libzmq unable to accept (it
    retries in a loop, spinning a core) and the HTTP endpoint unable to answer. The hard
    limit is the operator's to set; the soft one is ours to use.
    """
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        logger.info("open descriptor limit raised from %d to %d", soft, target)
    except (ValueError, OSError) as err:
        logger.warning("could not raise the open descriptor limit from %d: %s", soft, err)


class Server:
    """An Inferential server.

    ``models`` may be a list of Ray Serve application names to attach to (the
    published README's form), or a mapping of model name to a Model, a callable
    or a "module:Attr" target to run locally. ``config`` gives everything else.
    """

    def __init__(
        self,
        bind: Optional[str] = None,
        models: Optional[Sequence[str] | Mapping[str, Any]] = None,
        config: Optional[InferentialConfig] = None,
        backend: Optional[Backend] = None,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        config = (config or InferentialConfig()).model_copy(deep=True)
        if bind is not None:
            config.transport.bind = bind
        local_objects: dict[str, Any] = {}
        if isinstance(models, Mapping):
            local_objects = dict(models)
        elif models:
            config.backend = "ray"
            config.ray.attach = list(dict.fromkeys([*config.ray.attach, *models]))
        self.config = config
        self.clock = clock
        self.metrics = MetricsStore(config.metrics.ring_buffer_size)
        self._backend = backend or create_backend(config, local_objects)
        self._registry = ClientRegistry(
            config.clients,
            config.auth,
            config.response_tracking.cadence_alpha,
            config.response_tracking.disconnect_timeout_s,
        )
        self._limits = Limits(max_message_bytes=config.transport.max_message_bytes)
        secret = config.auth.curve_secret_key
        self._curve = CurveKeys(secret, config.clients) if secret else None
        t = config.transport
        self._rate = RateLimiter(t.rate_limit_per_s, t.rate_limit_burst) if t.rate_limit_per_s else None
        self._server_name = server_name()
        self._ledger = Ledger(self.metrics, self._registry, clock)
        self._ledger.limits = self._limits
        self._engine = Engine(config, self._backend, self._ledger, self._registry, self.metrics, clock)
        self._transport: Optional[RouterTransport] = None
        self._tasks: set[asyncio.Task] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stopping = False
        #: NativeTransport.note_budget while the native transport sheds (on the Python
        #: transport EarlyRefusal.note_budget while admission applies its rule), else None
        self._note_budget: Optional[Callable[[str, bytes, str, float], None]] = None
        #: the native module's shedding rule for admission on the Python transport
        self._early: Optional[EarlyRefusal] = None
        self._stopped: Optional[asyncio.Event] = None
        self._switch_before: Optional[float] = None  # Python's GIL switch interval before start
        self._ready = threading.Event()

    # -- public API ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The bound address (with the real port when the config asked for port 0)."""
        return self._transport.endpoint if self._transport else ""

    @property
    def scheduler(self) -> Scheduler:
        return self._engine.scheduler

    @property
    def registry(self) -> ClientRegistry:
        return self._registry

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._stopping

    def on_metric(self, callback: Callable[[str, float, dict], Any]) -> Callable:
        """Register ``callback(name, value, labels)``; it runs off the event loop."""
        return self.metrics.on_metric(callback)

    def use_scheduler(self, name: str, policy: Optional[str] = None, **options: Any) -> None:
        """Switch strategy (and weights or queue options) without losing queued requests."""
        data = self.config.scheduling.model_dump()
        data.update(options)
        data["strategy"] = name
        if policy is not None:
            data["policy"] = policy
        new_config = SchedulingConfig.model_validate(data)

        def swap() -> None:
            self._engine.swap_scheduler(new_config)
            self._push_shedding()  # admission may have changed

        self._call_in_loop(swap)

    def reconfigure(self, config: InferentialConfig) -> None:
        """Apply a new configuration's scheduling, client and auth sections live."""

        def apply() -> None:
            self.config.clients = config.clients
            self.config.auth = config.auth
            self._registry.reconfigure(config.clients, config.auth)
            if self._curve is not None:
                self._curve.update(config.clients)
            if config.auth.curve_secret_key != (self._curve.secret_key if self._curve else None):
                logger.warning("auth.curve_secret_key changed: it takes effect at the next start")
            if config.scheduling != self.config.scheduling:
                self._engine.swap_scheduler(config.scheduling)
            self._push_shedding()

        self._call_in_loop(apply)

    async def run(self) -> None:
        """Serve until ``stop()`` or SIGINT/SIGTERM, then shut down cleanly."""
        await self.start()
        loop = asyncio.get_running_loop()
        installed = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.stop()))
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):
                    pass
        try:
            assert self._stopped is not None
            await self._stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def start(self) -> str:
        """Load models, bind, and start serving in the background; returns the endpoint."""
        raise_descriptor_limit()
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        await self._backend.start()
        self._engine.start(self._loop, self._backend.models())
        self._ledger.models = self._engine.models
        # Everything alive now (libraries, models, Ray) lives as long as the server:
        # keep it out of the collector's scans, or each full collection walks the
        # whole heap and stalls every robot for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self._switch_before = sys.getswitchinterval()  # restored at stop (a reload may change it)
        apply_gil_switch_interval(self.config.scheduling)
        # transport.native: the socket on a native I/O thread when the module is built.
        self._transport = make_transport(self.config.transport, self._curve)
        if isinstance(self._transport, NativeTransport):
            self._transport.on_request = self._on_request
            self._transport.on_refusals = self._ledger.count_refused
            self._transport.on_arrivals = self._registry.observe_refused
            self._transport.costs = self._engine.shed_costs
        # What libzmq does to connections unseen (drops, refusals, handovers), counted.
        self._transport.count = lambda event: self.metrics.increment("connection_events", {"event": event})
        self._transport.bind()
        self._ledger.transport = self._transport
        if isinstance(self._transport, NativeTransport):
            native = self._transport.native_reply()
            if native is not None:
                self._ledger.native_reply, self._ledger.native_check = native
        self._push_shedding()
        self._transport.attach(self._loop, self._on_frames, self._engine.after_change)
        self._spawn(self._engine.run())
        self._warn_if_exposed()
        self._ready.set()
        logger.info("serving models %s on %s", sorted(self._engine.models), self.endpoint)
        return self.endpoint

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop: answer queued requests SHUTTING_DOWN, let running batches finish."""
        if self._stopping:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._stopping = self._engine.stopping = self._ledger.stopping = True
        self._push_shedding()  # from here every observation is answered SHUTTING_DOWN
        engine, ledger = self._engine, self._ledger
        logger.info("shutting down: %d requests pending", len(ledger.pending))
        for req in engine.drain_scheduler() + engine.held():
            ledger.answer(req, Status.SHUTTING_DOWN, _SHUTTING_DOWN)
        if engine.batches_running:
            assert engine.batches_idle is not None
            try:
                await asyncio.wait_for(engine.batches_idle.wait(), timeout=drain_timeout_s)
            except asyncio.TimeoutError:
                logger.warning("%d batches still running after %.0f s", engine.batches_running, drain_timeout_s)
        for req in list(ledger.pending.values()):
            ledger.answer(req, Status.SHUTTING_DOWN, _SHUTTING_DOWN)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        engine.cancel_timer()
        if self._transport is not None:
            # Robots drop replies they have received but not yet read when the
            # connection ends (ZMQ_IMMEDIATE): give the last ones time to be read.
            if ledger.replies_while_stopping:
                await asyncio.sleep(self.config.transport.close_grace_ms / 1000.0)
            self._transport.close()
        await self._backend.stop()
        if self._switch_before is not None:
            sys.setswitchinterval(self._switch_before)
            self._switch_before = None
        self.metrics.close()
        self._ready.clear()
        assert self._stopped is not None
        self._stopped.set()
        logger.info("stopped")

    def _push_shedding(self) -> None:
        """Hand the native transport what admission decides by, so that it refuses itself
        what has already waited too long (``NativeTransport.set_shedding``): while
        ``admission`` is ``reject``, without a rate limit (its drops come first), unless
        ``transport.native_shedding`` is off, and until the server stops. Called on start, reconfiguration and a scheduler switch.
        On the Python transport, admission applies the same rule itself (``EarlyRefusal``)."""
        transport = self._transport
        sched = self.config.scheduling
        off = not self.config.transport.native_shedding or sched.admission != "reject" or self._rate is not None
        if not isinstance(transport, NativeTransport):
            if self._stopping or off or transport is None:
                self._early = None
                self._note_budget = None
            elif self._early is None:
                engine = self._engine
                self._early = EarlyRefusal(
                    engine.shed_costs, urgent_below=DEFAULT_PRIORITY, last_run=engine.last_run_ns
                )
                self._note_budget = self._early.note_budget
            return
        if self._stopping or off:
            self._note_budget = None
            transport.set_shedding(None)
            return
        registry = self._registry
        clients = registry.clients
        self._note_budget = transport.note_budget
        transport.set_shedding(
            self._engine.shed_costs(),
            ttl_ms=sched.request_ttl_ms,
            known={
                k.id: (k.latency_budget_ms, k.auth_token, k.priority if k.pin_priority else None) for k in clients.known
            },
            urgent_below=DEFAULT_PRIORITY,
            accept_unknown=clients.accept_unknown,
            default_token=registry.auth.token,
            curve=self._curve is not None,
            response_prefix=response_id_prefix("n"),
            default_budget_ms=clients.defaults.latency_budget_ms,
        )

    def _warn_if_exposed(self) -> None:
        """A server reachable beyond this host with no way to tell robots apart says so."""
        auth, clients = self.config.auth, self.config.clients
        if auth.curve_secret_key or auth.token or any(k.auth_token for k in clients.known):
            return
        endpoint = self.endpoint
        if not endpoint.startswith("tcp://"):
            return  # ipc:// and inproc:// stay on this host
        host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
        if host in ("localhost", "::1") or host.startswith("127."):
            return
        logger.warning(
            "listening on %s without authentication: anyone who reaches it can speak as any robot. "
            "Set auth.curve_secret_key with clients.known[].curve_public_key (inferential keys generate), "
            "or at least auth.token (docs/security.md)",
            endpoint,
        )

    def status(self) -> dict[str, Any]:
        engine = self._engine
        return {
            "endpoint": self.endpoint,
            "ready": self.ready,
            "models": {
                n: {"max_batch_size": i.max_batch_size, "concurrency": i.concurrency, "in_flight": engine.inflight[n]}
                for n, i in engine.models.items()
            },
            "pending": len(self._ledger.pending),
            # Batches handed to a busy model ahead of time, and of those taken back to be
            # formed again (scheduling.dispatch_ahead_ms).
            "dispatch_ahead": {"handed": engine.dispatched_ahead, "taken_back": engine.revised},
            "scheduler": engine.scheduler.status(),
            "robots": len(self._registry.robots),
            "replies": dict(self._ledger.status_counts),
            "backend": self._backend.health().as_dict(),
        }

    def status_threadsafe(self, timeout_s: float = 1.0) -> dict[str, Any]:
        """status() computed on the server's loop, callable from any thread."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return self.status()
        result: dict[str, Any] = {}
        done = threading.Event()

        def collect() -> None:
            try:
                result.update(self.status())
            finally:
                done.set()

        loop.call_soon_threadsafe(collect)
        done.wait(timeout_s)
        return result

    def loop_alive(self, timeout_s: float = 1.0) -> bool:
        """True when the event loop runs callbacks promptly (liveness probe)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return False
        done = threading.Event()
        loop.call_soon_threadsafe(done.set)
        return done.wait(timeout_s)

    # -- threads and tasks -----------------------------------------------------------

    def _call_in_loop(self, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` on the server's loop and wait for it (any thread)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            fn(*args)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
            return
        done = threading.Event()
        error: list[BaseException] = []

        def call() -> None:
            try:
                fn(*args)
            except BaseException as err:  # re-raised in the caller's thread
                error.append(err)
            finally:
                done.set()

        loop.call_soon_threadsafe(call)
        done.wait(10)
        if error:
            raise error[0]

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- receiving -------------------------------------------------------------------

    def _rate_limited(self, identity: bytes, decoded: Any, wait_ms: int, wall: int) -> None:
        limit = self.config.transport.rate_limit_per_s
        obs = decoded.obs
        frames = encode_reply(
            identity=identity,
            client_id=obs.client.id,
            model_id=obs.model_id,
            request_id=obs.request_id,
            protocol_version=obs.protocol_version,
            status=Status.QUEUE_FULL,
            error=f"this connection sends over transport.rate_limit_per_s ({limit:g}/s)",
            observation_timestamp_ns=obs.timestamp_ns,
            now_ns=wall,
            retry_after_ms=wait_ms,
        )
        self.metrics.increment("observation_errors", {"status": "RATE_LIMITED"})
        self._ledger.send(frames, identity, "", Status.QUEUE_FULL)

    def _on_frames(self, frames: list[Any]) -> None:
        now = self.clock()
        wall = time.time_ns()
        ledger = self._ledger
        wait_ms = None
        if self._rate is not None and frames:
            wait_ms = self._rate.take(bytes(buffer(frames[0])), now)
            if wait_ms == DROP:
                self.metrics.increment("observation_errors", {"status": "RATE_LIMITED_DROPPED"})
                return
        try:
            identity, decoded = decode_request(frames, self._limits)
        except Rejection as rej:
            ledger.reject(bytes(buffer(frames[0])) if frames else b"", rej, wall)
            return
        except Describe as ask:
            identity = bytes(buffer(frames[0]))
            reply = describe_reply(identity, ask.obs, self._limits, self._server_name, wall)
            ledger.send(reply, identity, "", Status.OK, ask.obs.client.id)
            return
        speaker = user_id(frames[-1]) if self._curve is not None else None
        self._on_decoded(identity, decoded, speaker, now, wall, wait_ms)

    def _on_request(self, identity: bytes, decoded: Decoded, speaker: Optional[str]) -> None:
        """An observation the native transport received and checked (its rules are
        decode_request's); ``speaker`` is the CURVE id of its connection."""
        now = self.clock()
        wall = time.time_ns()
        wait_ms = None
        if self._rate is not None:
            wait_ms = self._rate.take(identity, now)
            if wait_ms == DROP:
                self.metrics.increment("observation_errors", {"status": "RATE_LIMITED_DROPPED"})
                return
        self._on_decoded(identity, decoded, speaker, now, wall, wait_ms)

    def _on_decoded(
        self, identity: bytes, decoded: Decoded, speaker: Optional[str], now: int, wall: int, wait_ms: Optional[int]
    ) -> None:
        ledger = self._ledger
        if self._stopping:
            ledger.reject(identity, Rejection(Status.SHUTTING_DOWN, _SHUTTING_DOWN, decoded.obs), wall)
            return
        if self._curve is not None:
            if speaker != decoded.obs.client.id:
                why = f"this connection's CURVE key is bound to client '{speaker}', not '{decoded.obs.client.id}'"
                ledger.reject(identity, Rejection(Status.UNAUTHENTICATED, why, decoded.obs), wall)
                return
        if wait_ms is not None:
            self._rate_limited(identity, decoded, wait_ms, wall)
            return
        registry = self._registry
        robots = len(registry.robots)
        engine = self._engine
        backlog = self._transport.backlog_bound_ns() if self._transport is not None else None
        req = admit(decoded, identity, registry, engine.models, self.config.scheduling, now, wall, backlog, self._early)
        metrics = self.metrics
        if len(registry.robots) != robots:  # registered even when refused for lateness
            obs = decoded.obs
            logger.info("robot %s connected (%s)", obs.client.id, obs.client.type or "no type")
            metrics.record("active_clients", len(registry.robots))
        if isinstance(req, Rejection):
            ledger.reject(identity, req, wall)
            return
        labels = req.labels
        if req.observation_timestamp_ns:
            metrics.record("observation_staleness_ms", (wall - req.observation_timestamp_ns) / 1e6, labels)
        metrics.record("payload_size_bytes", req.payload_bytes, labels)
        ledger.pending[req.seq] = req
        try:
            if engine.ahead:
                engine.note_arrival(req)  # may take back a batch handed ahead, to form it again
            engine.scheduler.submit(req)
        except Exception as err:  # only a custom scheduler raises; the built-ins shed instead
            engine.refused(req, err)
        note = self._note_budget
        if note is not None and not req.budget_stated and req.deadline_ns is not None:
            # The budget the scheduler gave it (tightened to its cadence when it sends on its
            # own clock), in the terms of the module's rule: the margin is in its costs.
            budget_ms = (req.deadline_ns - req.arrival_ns) / 1e6 + self.config.scheduling.deadline_margin_ms
            note(req.client_id, identity, req.model_id, budget_ms)
