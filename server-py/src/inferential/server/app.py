"""The server: wires transport, protocol, registry, scheduler, backend and metrics.

Every observation that arrives ends in exactly one reply. The ledger
(``self._pending``) holds each admitted request until its reply is sent; any
path that answers a request (result, model error, expiry, shedding, shutdown)
goes through ``_answer``, which pops it, so a second answer is impossible.
Nothing polls: the dispatcher sleeps until a request arrives, a batch finishes,
or the earliest timer (TTL, batching wait, silence) is due.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
import threading
import time
from collections import defaultdict, deque
from typing import Any, Callable, Mapping, Optional, Sequence

from inferential._proto import inferential_pb2 as pb
from inferential.config.schema import InferentialConfig, SchedulingConfig
from inferential.dispatch.base import Backend, ModelInfo
from inferential.metrics.store import MetricsStore
from inferential.scheduler import InferenceRequest, Scheduler, create_scheduler, derive_deadline_ns
from inferential.server.protocol import Rejection, ReplyTiming, decode_request, encode_reply
from inferential.server.registry import ClientRegistry
from inferential.server.transport import RouterTransport
from inferential.wire import Limits, status_name

logger = logging.getLogger("inferential.server")

_SHED_STATUS = {
    "QUEUE_FULL": pb.QUEUE_FULL,
    "EXPIRED": pb.EXPIRED,
    "SUPERSEDED": pb.SUPERSEDED,
    "DEADLINE_UNMEETABLE": pb.DEADLINE_UNMEETABLE,
    "CANCELLED": pb.CANCELLED,
    "SHUTTING_DOWN": pb.SHUTTING_DOWN,
}
_SHED_METRIC = {pb.QUEUE_FULL: "queue_full_drops", pb.EXPIRED: "requests_expired"}


def _labels(req: InferenceRequest) -> dict[str, str]:
    """The (robot, model) labels of a request's metrics, made once per request."""
    labels = getattr(req, "_labels", None)
    if labels is None:
        labels = req._labels = {"client": req.client_id, "model": req.model_id}  # type: ignore[attr-defined]
    return labels


def _build_backend(config: InferentialConfig, local_objects: Mapping[str, Any]) -> Backend:
    if config.backend == "ray":
        from inferential.dispatch.ray_backend import RayBackend

        return RayBackend(config.models, config.ray, attach=config.ray.attach)
    from inferential.dispatch.local import LocalBackend

    return LocalBackend(config.models, local_objects, default_max_batch_size=config.scheduling.max_batch_size)


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
        self._clock = clock
        self.metrics = MetricsStore(config.metrics.ring_buffer_size)
        self._backend = backend or _build_backend(config, local_objects)
        self._registry = ClientRegistry(
            config.clients,
            config.auth,
            config.response_tracking.cadence_alpha,
            config.response_tracking.disconnect_timeout_s,
        )
        self._limits = Limits(max_message_bytes=config.transport.max_message_bytes)
        self._models: dict[str, ModelInfo] = {}
        self._scheduler: Scheduler = self._new_scheduler(config.scheduling)
        self._transport: Optional[RouterTransport] = None
        self._pending: dict[int, InferenceRequest] = {}
        self._inflight: dict[str, int] = defaultdict(int)
        self._held: dict[str, deque[list[InferenceRequest]]] = defaultdict(deque)
        self._tasks: set[asyncio.Task] = set()
        self._batches_running = 0
        self._batches_idle: Optional[asyncio.Event] = None
        self._timer_at: Optional[int] = None
        self._next_sweep_ns = 0
        self._replies_while_stopping = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._stopping = False
        self._stopped: Optional[asyncio.Event] = None
        self._ready = threading.Event()
        self._status_counts: dict[str, int] = defaultdict(int)
        # Inline batches (models that run in microseconds on the loop) complete
        # synchronously; _launch_ready finishes them in a loop instead of recursing.
        self._launching = False
        self._completed: deque[tuple[str, list[InferenceRequest], int, Optional[list[Any]], Optional[BaseException]]] = deque()
        self._run_inline: Optional[Callable[[str, list[Any]], Any]] = None
        self._model_labels: dict[str, dict[str, str]] = {}
        self._reply_labels: dict[tuple[str, int], dict[str, str]] = {}

    # -- public API ------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The bound address (with the real port when the config asked for port 0)."""
        return self._transport.endpoint if self._transport else ""

    @property
    def scheduler(self) -> Scheduler:
        return self._scheduler

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
        self._call_in_loop(self._swap_scheduler, new_config)

    def reconfigure(self, config: InferentialConfig) -> None:
        """Apply a new configuration's scheduling, client and auth sections live."""

        def apply() -> None:
            self.config.clients = config.clients
            self.config.auth = config.auth
            self._registry.reconfigure(config.clients, config.auth)
            if config.scheduling != self.config.scheduling:
                self._swap_scheduler(config.scheduling)

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
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._batches_idle = asyncio.Event()
        self._batches_idle.set()
        await self._backend.start()
        self._models = self._backend.models()
        self._run_inline = getattr(self._backend, "run_inline", None)
        # Everything alive now (libraries, models, Ray) lives as long as the server:
        # keep it out of the collector's scans, or each full collection walks the
        # whole heap and stalls every robot for tens of milliseconds.
        gc.collect()
        gc.freeze()
        for name, info in self._models.items():
            if hasattr(self._scheduler, "set_model_limits"):
                self._scheduler.set_model_limits(name, max_batch_size=min(info.max_batch_size, self.config.scheduling.max_batch_size), concurrency=info.concurrency)
        self._transport = RouterTransport(self.config.transport)
        self._transport.bind()
        self._transport.attach(self._loop, self._on_frames, self._after_change)
        self._spawn(self._dispatch_loop())
        self._ready.set()
        logger.info("serving models %s on %s", sorted(self._models), self.endpoint)
        return self.endpoint

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Stop: answer queued requests SHUTTING_DOWN, let running batches finish."""
        if self._stopping:
            if self._stopped is not None:
                await self._stopped.wait()
            return
        self._stopping = True
        logger.info("shutting down: %d requests pending", len(self._pending))
        for req in self._drain_scheduler():
            self._answer(req, pb.SHUTTING_DOWN, "server is shutting down")
        for batches in self._held.values():
            for batch in batches:
                for req in batch:
                    self._answer(req, pb.SHUTTING_DOWN, "server is shutting down")
        self._held.clear()
        if self._batches_running:
            assert self._batches_idle is not None
            try:
                await asyncio.wait_for(self._batches_idle.wait(), timeout=drain_timeout_s)
            except asyncio.TimeoutError:
                logger.warning("%d batches still running after %.0f s", self._batches_running, drain_timeout_s)
        for req in list(self._pending.values()):
            self._answer(req, pb.SHUTTING_DOWN, "server is shutting down")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            # Robots drop replies they have received but not yet read when the
            # connection ends (ZMQ_IMMEDIATE): give the last ones time to be read.
            if self._replies_while_stopping:
                await asyncio.sleep(self.config.transport.close_grace_ms / 1000.0)
            self._transport.close()
        await self._backend.stop()
        self.metrics.close()
        self._ready.clear()
        assert self._stopped is not None
        self._stopped.set()
        logger.info("stopped")

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "ready": self.ready,
            "models": {n: {"max_batch_size": i.max_batch_size, "concurrency": i.concurrency, "in_flight": self._inflight[n]} for n, i in self._models.items()},
            "pending": len(self._pending),
            "scheduler": self._scheduler.status(),
            "robots": len(self._registry.robots),
            "replies": dict(self._status_counts),
            "backend": self._backend.health(),
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

    # -- scheduler plumbing ----------------------------------------------------

    def _new_scheduler(self, cfg: SchedulingConfig) -> Scheduler:
        sched = create_scheduler(cfg, clock=self._clock)
        # Built-ins take the set of models with a free executor; README-style custom ones do not.
        self._takes_ready = "ready_models" in inspect.signature(sched.next_batch).parameters
        if hasattr(sched, "on_shed"):
            sched.on_shed = self._on_shed
        for name, info in self._models.items():
            if hasattr(sched, "set_model_limits"):
                sched.set_model_limits(name, max_batch_size=min(info.max_batch_size, cfg.max_batch_size), concurrency=info.concurrency)
        return sched

    def _swap_scheduler(self, cfg: SchedulingConfig) -> None:
        new = self._new_scheduler(cfg)
        queued = self._drain_scheduler()
        if hasattr(new, "adopt"):
            new.adopt(queued)
        else:
            for req in queued:
                new.submit(req)
        self._scheduler = new
        self.config.scheduling = cfg
        logger.info("scheduler is now %s (%d requests carried over)", cfg.strategy, len(queued))
        self._poke()

    def _drain_scheduler(self) -> list[InferenceRequest]:
        if hasattr(self._scheduler, "drain"):
            return [r for r in self._scheduler.drain() if r.seq in self._pending]
        # A custom scheduler without drain(): take what it will give.
        out: list[InferenceRequest] = []
        while self._scheduler.queue_len():
            batch = self._scheduler.next_batch()
            if not batch:
                break
            out.extend(r for r in batch if r.seq in self._pending)
        return out

    def _on_shed(self, req: InferenceRequest, status: str, reason: str) -> None:
        self._answer(req, _SHED_STATUS.get(status, pb.QUEUE_FULL), reason)

    def _call_in_loop(self, fn: Callable, *args: Any) -> None:
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
        else:
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

    # -- receiving ---------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_frames(self, frames: list[Any]) -> None:
        now = self._clock()
        wall = time.time_ns()
        try:
            identity, decoded = decode_request(frames, self._limits)
        except Rejection as rej:
            identity = bytes(frames[0].buffer) if frames else b""
            self._reject(identity, rej, wall)
            return
        obs = decoded.obs
        client_id = obs.client.id
        if self._stopping:
            self._reject(identity, Rejection(pb.SHUTTING_DOWN, "server is shutting down", obs), wall)
            return
        denied = self._registry.check_access(client_id, obs.auth_token)
        if denied is not None:
            self._reject(identity, Rejection(pb.UNAUTHENTICATED, denied, obs), wall)
            return
        if obs.model_id not in self._models:
            served = ", ".join(sorted(self._models)) or "none"
            self._reject(identity, Rejection(pb.UNKNOWN_MODEL, f"model '{obs.model_id}' is not served (served: {served})", obs), wall)
            return
        sched_cfg = self.config.scheduling
        budget_ms = self._registry.budget_for(client_id, obs.latency_budget_ms)
        # Under overload observations queue in socket buffers, unseen by the scheduler:
        # date them from when they arrived, and answer at once those already too late,
        # rather than spend the server's time scheduling what cannot be on time.
        waited_ns = self._registry.buffer_wait_ns(client_id, wall, obs.timestamp_ns)
        waited_ms = waited_ns / 1e6
        if waited_ms > sched_cfg.request_ttl_ms:
            why = f"waited {waited_ms:.0f} ms before the server could read it, TTL is {sched_cfg.request_ttl_ms:.0f} ms"
            self._reject(identity, Rejection(pb.EXPIRED, why, obs), wall)
            return
        if sched_cfg.admission == "reject" and waited_ms > budget_ms:
            why = f"waited {waited_ms:.0f} ms before the server could read it, budget is {budget_ms:.0f} ms"
            self._reject(identity, Rejection(pb.DEADLINE_UNMEETABLE, why, obs), wall)
            return
        arrival = now - waited_ns

        robot, is_new, expected_ms, gap_ms = self._registry.on_observation(
            client_id, obs.client.type, obs.model_id, identity, arrival
        )
        if is_new:
            logger.info("robot %s connected (%s)", client_id, obs.client.type or "no type")
            self.metrics.record("active_clients", len(self._registry.robots))
        req = InferenceRequest(
            client_id=client_id,
            model_id=obs.model_id,
            inputs=decoded.inputs,
            request_id=obs.request_id,
            client_type=obs.client.type,
            urgency=min(1.0, obs.urgency),
            priority=self._registry.priority_for(client_id, obs.priority, sched_cfg.max_priority),
            steps_remaining=obs.steps_remaining if obs.HasField("steps_remaining") else None,
            arrival_ns=arrival,
            latency_budget_ms=budget_ms,
            observation_timestamp_ns=obs.timestamp_ns,
            actions_remaining=obs.actions_remaining if obs.HasField("actions_remaining") else None,
            control_rate_hz=obs.control_rate_hz,
            expected_interval_ms=expected_ms,
            since_previous_ms=gap_ms,
            identity=identity,
            protocol_version=obs.protocol_version,
            payload_bytes=decoded.payload_bytes,
        )
        req.deadline_ns = derive_deadline_ns(
            arrival_ns=arrival,
            wall_now_ns=wall - waited_ns,
            deadline_wall_ns=obs.deadline_ns,
            actions_remaining=req.actions_remaining,
            control_rate_hz=req.control_rate_hz,
            latency_budget_ms=budget_ms,
        )
        if req.deadline_ns is not None:
            # The reply still has to cross the network after the server is done with it.
            req.deadline_ns -= int(sched_cfg.deadline_margin_ms * 1e6)
        labels = _labels(req)
        if obs.timestamp_ns:
            self.metrics.record("observation_staleness_ms", (wall - obs.timestamp_ns) / 1e6, labels)
        self.metrics.record("payload_size_bytes", decoded.payload_bytes, labels)
        self._pending[req.seq] = req
        try:
            self._scheduler.submit(req)
        except Exception as err:  # QueueFullError from a reject_newest queue or a custom scheduler
            if req.seq in self._pending:
                status = pb.QUEUE_FULL if type(err).__name__ == "QueueFullError" else pb.INVALID_REQUEST
                self._answer(req, status, str(err) or "queue is full")

    def _reject(self, identity: bytes, rej: Rejection, wall_ns: int) -> None:
        obs = rej.obs
        client_id = obs.client.id if obs is not None else ""
        model_id = obs.model_id if obs is not None else ""
        logger.debug("rejected observation from %r: %s", client_id or identity, rej)
        self.metrics.increment("observation_errors", {"status": status_name(rej.status)})
        if not identity:
            return
        frames = encode_reply(
            identity=identity,
            client_id=client_id,
            model_id=model_id,
            request_id=obs.request_id if obs is not None else 0,
            protocol_version=obs.protocol_version if obs is not None else 2,
            status=rej.status,
            error=rej.message,
            observation_timestamp_ns=obs.timestamp_ns if obs is not None else 0,
            now_ns=wall_ns,
        )
        self._send(frames, identity, model_id, rej.status)

    # -- dispatching -------------------------------------------------------------

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _after_change(self) -> None:
        """Something arrived or finished: dispatch what can run, re-arm the timer."""
        if self._stopping:
            return
        self._launch_ready()
        self._arm_timer()

    async def _dispatch_loop(self) -> None:
        assert self._wake is not None and self._loop is not None
        while True:
            self._wake.clear()
            self._scheduler.tick()
            self._expire_stragglers()
            self._sweep_silent()
            self._launch_ready()
            self._arm_timer()
            await self._wake.wait()

    def _arm_timer(self) -> None:
        assert self._loop is not None
        candidates = []
        wake = getattr(self._scheduler, "next_wakeup_ns", None)
        if wake is not None:
            t = wake()
            if t is not None:
                candidates.append(t)
        if self._pending:
            oldest = next(iter(self._pending.values()))
            candidates.append(oldest.arrival_ns + int(self.config.scheduling.request_ttl_ms * 1e6) + 1)
        if self._registry.robots:
            candidates.append(self._next_sweep_ns)
        at = min(candidates) if candidates else None
        if self._timer is not None and at is not None and self._timer_at is not None and self._timer_at <= at:
            # Already due no later: when it fires, the dispatch loop re-arms for what is
            # then the earliest time. Not re-arming on every arrival saves a timer each.
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            delay = max(0.0, (at - self._clock()) / 1e9)
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._poke()

    def _expire_stragglers(self) -> None:
        """The server's own TTL guarantee, whatever the scheduler does."""
        ttl_ns = int(self.config.scheduling.request_ttl_ms * 1e6)
        now = self._clock()
        expired = []
        for req in self._pending.values():  # oldest first: stop at the first one still in time
            if now - req.arrival_ns <= ttl_ns:
                break
            if not getattr(req, "_running", False):
                expired.append(req)
        for req in expired:
            waited = (now - req.arrival_ns) / 1e6
            self._answer(req, pb.EXPIRED, f"waited {waited:.0f} ms, TTL is {self.config.scheduling.request_ttl_ms:.0f} ms")

    def _sweep_silent(self) -> None:
        """Unregister robots silent for longer than the timeout.

        Runs on a coarse schedule (a quarter of the timeout), not per request:
        a robot is unregistered between 1 and 1.25 timeouts after it went quiet.
        """
        now = self._clock()
        if now < self._next_sweep_ns:
            return
        self._next_sweep_ns = now + self._registry.timeout_ns // 4
        for client_id in self._registry.silent(now):
            self._unregister(client_id, "silent for longer than disconnect_timeout_s")

    def _unregister(self, client_id: str, why: str) -> None:
        robot = self._registry.unregister(client_id)
        if robot is None:
            return
        logger.info("robot %s unregistered: %s", client_id, why)
        self.metrics.record("active_clients", len(self._registry.robots))
        # Only this robot's queued requests: the others keep their place untouched.
        for r in self._scheduler.cancel_client(client_id):
            self._answer(r, pb.CANCELLED, f"robot unregistered: {why}")
        for r in [r for r in self._pending.values() if r.client_id == client_id and not getattr(r, "_running", False)]:
            self._answer(r, pb.CANCELLED, f"robot unregistered: {why}")  # held by a custom scheduler

    def _launch_ready(self) -> None:
        """Start every batch that can run; finish those that completed inline."""
        if self._launching:
            return  # the call below us loops until nothing more can start
        self._launching = True
        try:
            completed = self._completed
            while True:
                self._launch_some()
                if not completed:
                    return
                while completed:
                    self._finish_batch(*completed.popleft())
        finally:
            self._launching = False

    def _launch_some(self) -> None:
        takes_ready = self._takes_ready
        while True:
            free = {m for m, info in self._models.items() if self._inflight[m] < info.concurrency}
            if not free:
                return
            launched = False
            for model in list(free):
                if self._held[model]:
                    self._launch(model, self._held[model].popleft())
                    launched = True
            if launched:
                continue
            pulled = self._scheduler.next_batch(ready_models=free) if takes_ready else self._scheduler.next_batch()
            if not pulled:
                return  # nothing ready (a scheduler may hold requests back, e.g. to fill a batch)
            batch = [r for r in pulled if r.seq in self._pending]
            if not batch:
                continue  # all already answered (expired, cancelled): pull again
            by_model: dict[str, list[InferenceRequest]] = defaultdict(list)
            for r in batch:
                by_model[r.model_id].append(r)
            for model, reqs in by_model.items():
                if model in free and self._inflight[model] < self._models[model].concurrency:
                    self._launch(model, reqs)
                else:
                    self._held[model].append(reqs)

    def _launch(self, model: str, batch: list[InferenceRequest]) -> None:
        batch = [r for r in batch if r.seq in self._pending]
        if not batch:
            return
        self._inflight[model] += 1
        for r in batch:
            r._running = True  # type: ignore[attr-defined]
        labels = self._model_labels.get(model)
        if labels is None:
            labels = self._model_labels[model] = {"model": model}
        self.metrics.record("batch_size", len(batch), labels)
        self.metrics.record("queue_depth", self._scheduler.queue_len(), labels)
        self._batches_running += 1
        assert self._batches_idle is not None
        if self._batches_running == 1:
            self._batches_idle.clear()
        inputs = [r.inputs for r in batch]
        if self._run_inline is not None:
            start = self._clock()
            outcome = self._run_inline(model, inputs)
            if outcome is not None:  # ran here and now: finished by _launch_ready's loop
                self._completed.append((model, batch, start, *outcome))
                return
        start = self._clock()

        def done(outcomes: Optional[list[Any]], error: Optional[BaseException]) -> None:
            self._finish_batch(model, batch, start, outcomes, error)

        try:
            self._backend.submit(model, inputs, done)
        except Exception as err:  # a backend that fails to even start the batch
            asyncio.get_running_loop().call_soon(done, None, err)

    def _finish_batch(
        self,
        model: str,
        batch: list[InferenceRequest],
        start: int,
        outcomes: Optional[list[Any]],
        error: Optional[BaseException],
    ) -> None:
        self._inflight[model] -= 1
        self._batches_running -= 1
        if self._batches_running == 0 and self._batches_idle is not None:
            self._batches_idle.set()
        end = self._clock()
        infer_ms = (end - start) / 1e6
        labels = {"model": model}
        if error is None and outcomes is None:
            error = RuntimeError("backend returned no outcomes")
        if error is not None:
            self.metrics.increment("dispatch_errors", labels)
            logger.warning("batch of %d for %s failed: %s", len(batch), model, error)
            for r in batch:
                r._running = False  # type: ignore[attr-defined]
                if r.seq not in self._pending:
                    continue
                if self._stopping or not self._requeue(r):
                    attempts = self.config.scheduling.max_retries + 1
                    self._answer(r, pb.MODEL_ERROR, f"backend failed on all {attempts} attempts: {error}")
                else:
                    self.metrics.increment("dispatch_retries", labels)
            self._after_batch()
            return
        assert outcomes is not None
        if hasattr(self._scheduler, "record_service_time"):
            self._scheduler.record_service_time(model, len(batch), infer_ms)
        if not self._stopping:
            self._launch_ready()  # keep the executor busy: start the next batch before replying
        for r, out in zip(batch, outcomes):
            # Per request, labelled by robot as the published README's callbacks expect.
            self.metrics.record("inference_latency_ms", infer_ms, _labels(r))
            timing = ReplyTiming(
                queue_wait_ms=(start - r.arrival_ns) / 1e6,
                inference_ms=infer_ms,
                batch_size=len(batch),
            )
            if isinstance(out, BaseException):
                self._answer(r, pb.MODEL_ERROR, f"{type(out).__name__}: {out}", timing=timing)
            else:
                self._answer(r, pb.OK, outputs=out, timing=timing)
        self._after_batch()

    def _after_batch(self) -> None:
        self._after_change()
        if self._transport is not None:
            self._transport.drain()  # sends can hide readable input from an edge-triggered fd

    def _requeue(self, req: InferenceRequest) -> bool:
        max_retries = self.config.scheduling.max_retries
        if hasattr(self._scheduler, "requeue"):
            return bool(self._scheduler.requeue(req))
        if req.retries >= max_retries:
            return False
        req.retries += 1
        self._scheduler.submit(req)
        return True

    # -- replying ------------------------------------------------------------------

    def _answer(
        self,
        req: InferenceRequest,
        status: int,
        error: str = "",
        outputs: Optional[Mapping[str, Any]] = None,
        timing: Optional[ReplyTiming] = None,
    ) -> None:
        if self._pending.pop(req.seq, None) is None:
            return  # already answered: exactly one reply per observation
        now = self._clock()
        timing = timing or ReplyTiming()
        timing.total_ms = (now - req.arrival_ns) / 1e6
        common = dict(
            identity=req.identity,
            client_id=req.client_id,
            model_id=req.model_id,
            request_id=req.request_id,
            protocol_version=req.protocol_version,
            timing=timing,
            observation_timestamp_ns=req.observation_timestamp_ns,
            now_ns=time.time_ns(),
        )
        try:
            frames = encode_reply(status=status, error=error, outputs=outputs, **common)
        except (TypeError, ValueError) as err:  # an output the wire cannot carry
            status, error = pb.MODEL_ERROR, f"model output cannot be sent: {err}"
            frames = encode_reply(status=status, error=error, **common)
        self._send(frames, req.identity, req.model_id, status, req.client_id)
        # Bookkeeping after the reply is on its way.
        labels = _labels(req)
        metrics = self.metrics
        metric = _SHED_METRIC.get(status)
        if metric:
            metrics.increment(metric, labels)
        if status == pb.OK:
            metrics.record("scheduling_wait_ms", timing.queue_wait_ms, labels)
            metrics.record("e2e_latency_ms", timing.total_ms, labels)
        if status != pb.SUPERSEDED:  # a superseded request's robot got a fresher answer
            met = status == pb.OK and timing.total_ms <= req.latency_budget_ms
            metrics.record("slo_met", 1.0 if met else 0.0, labels)
        robot = self._registry.robots.get(req.client_id)
        if robot is not None:
            robot.last_status = status_name(status)

    def _send(self, frames: list[Any], identity: bytes, model_id: str, status: int, client_id: str = "") -> None:
        assert self._transport is not None
        if self._stopping:
            self._replies_while_stopping += 1
        failure = self._transport.send(frames)
        name = status_name(status)
        self._status_counts[name] += 1
        labels = self._reply_labels.get((model_id, status))
        if labels is None:
            labels = self._reply_labels[(model_id, status)] = {"model": model_id, "status": name}
        self.metrics.increment("replies", labels)
        if failure is None:
            return
        self.metrics.increment("replies_undeliverable", {"model": model_id, "reason": failure})
        logger.info("reply %s for %s undeliverable: %s", name, client_id or identity, failure)
        if failure == "peer disconnected":
            for cid in self._registry.by_identity(identity):
                robot = self._registry.robots.get(cid)
                if robot is not None:
                    robot.identities.discard(identity)
                    if not robot.identities:
                        self._unregister(cid, "connection closed")
