"""The dispatch engine: batches from the scheduler to the backend and back.

It launches every batch a free model can take, finishes them (results to the
ledger, failures to a retry or MODEL_ERROR), runs the timers (the scheduler's
wakeups, the server's own TTL, the sweep of silent robots) and unregisters robots.
Nothing polls: :meth:`Engine.run` sleeps until something arrives, a batch
finishes, or the earliest timer is due.

Inline batches (a local model measured to run in microseconds) complete during
``submit``; :meth:`Engine.launch_ready` finishes them in a loop instead of
recursing, and starts the next batch before replying to a finished one, so the
executor is never idle while replies go out.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import defaultdict, deque
from typing import Any, Callable, Optional

from inferential.config.schema import InferentialConfig, SchedulingConfig
from inferential.dispatch.base import BACK_NS, Backend, ModelInfo, Ran
from inferential.metrics.store import MetricsStore
from inferential.scheduler import InferenceRequest, QueueFullError, Scheduler, create_scheduler
from inferential.scheduler.interface import takes_ready_models
from inferential.server.chunking import predict_batch, valid_until_ns
from inferential.server.ledger import Ledger, request_labels
from inferential.server.protocol import ReplyTiming
from inferential.server.registry import ClientRegistry
from inferential.server.transport import RouterTransport
from inferential.wire import Status

logger = logging.getLogger("inferential.server")

# Plain ints for the per-request replies (an IntEnum member is slow to read on 3.11).
_OK, _MODEL_ERROR = int(Status.OK), int(Status.MODEL_ERROR)

Completed = tuple[str, list[InferenceRequest], int, Optional[list[Any]], Optional[BaseException]]


def withholds_late(cfg: SchedulingConfig) -> bool:
    """Whether results ready after their deadline are withheld: with ``late_results:
    withhold`` and ``admission: reject``. The other admission modes do not enforce
    deadlines (``off`` ignores them, ``deprioritize`` runs what is late after the rest
    and answers it), so their late results are sent."""
    return cfg.late_results == "withhold" and cfg.admission == "reject"


def _thread_demand_ns() -> Optional[int]:
    """CPU time the calling thread has used plus the time it waited for a CPU while
    runnable (Linux schedstat), ns; None where the kernel does not say. On a shared
    machine the wait counts: the loop is just as late whether it computes or queues."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            run, wait, _ = f.read().split(None, 2)
        return int(run) + int(wait)
    except (OSError, ValueError):
        return None


class LoopLoad:
    """The server's own CPU, measured on the event loop's thread, for admission control.

    Every ``window_ns`` of wall time (sampled when a batch finishes: no timer of its own)
    it reads how much of that window the loop's thread was busy or waiting for a CPU
    (``busy``, in [0, 1]) and its CPU per observation (received, scheduled and
    answered). From them, the expected wait of anything queued for the loop, such as a
    finished batch waiting to be answered, as a single-server queue: busy / (1 - busy)
    observations' worth of work. ``reply_ms`` is the measured time to answer one request of a
    batch. Both are smoothed (EMA) and handed to the scheduler, whose admission control
    then plans with the server's time as well as the model's.
    """

    ALPHA = 0.3
    MAX_BUSY = 0.98  # the wait formula diverges at 1; past this the loop is saturated anyway
    # A window with fewer observations says little about the CPU each costs (start-up
    # work, a timer's sweep): it updates ``busy`` only.
    MIN_OBSERVATIONS = 10

    def __init__(
        self, clock: Callable[[], int], window_ns: int = 50_000_000, demand: Optional[Callable[[], int]] = None
    ) -> None:
        """``demand``: the loop thread's CPU demand so far, ns (default: schedstat, else
        its CPU time); injected with ``clock`` by tests."""
        self.clock = clock
        self.window_ns = window_ns
        self.busy = 0.0
        self.obs_ms = 0.0
        self.reply_ms = 0.0
        self._read = demand
        self._schedstat = demand is None and _thread_demand_ns() is not None
        self._t0 = clock()
        self._cpu0 = self._demand()
        self._events0 = 0
        # The first window is only a baseline: it holds whatever ran before serving began.
        self._primed = False

    def _demand(self) -> int:
        if self._read is not None:
            return self._read()
        demand = _thread_demand_ns() if self._schedstat else None
        return demand if demand is not None else time.thread_time_ns()

    def replied(self, count: int, elapsed_ns: int) -> None:
        if count > 0:
            ms = elapsed_ns / count / 1e6
            self.reply_ms = ms if self.reply_ms == 0.0 else self.ALPHA * ms + (1 - self.ALPHA) * self.reply_ms

    def due(self) -> bool:
        """Whether the window is over (``sample`` would close it): a clock reading, so the
        caller counts the observations only when they are needed."""
        return self.clock() - self._t0 >= self.window_ns

    def sample(self, events: int) -> bool:
        """Close the window if it is over (``events``: observations received so far);
        True when the estimates changed."""
        now = self.clock()
        wall = now - self._t0
        if wall < self.window_ns:
            return False
        cpu = self._demand()
        if cpu < self._cpu0 or not self._primed:  # a baseline (or another thread's counter): start again
            self._t0, self._cpu0, self._events0, self._primed = now, cpu, events, True
            return False
        busy = min(1.0, (cpu - self._cpu0) / wall)
        n = events - self._events0
        self.busy = self.ALPHA * busy + (1 - self.ALPHA) * self.busy
        if n >= self.MIN_OBSERVATIONS:
            per_obs = (cpu - self._cpu0) / n / 1e6
            self.obs_ms = per_obs if self.obs_ms == 0.0 else self.ALPHA * per_obs + (1 - self.ALPHA) * self.obs_ms
        self._t0, self._cpu0, self._events0 = now, cpu, events
        return True

    #: The longest the loop keeps a finished batch waiting however busy it is: the
    #: transport yields after a slice of reading (SLICE_NS), then the batch's callback
    #: runs, so a saturated loop delays it by about a slice (plus a millisecond for the
    #: burst's own end), not by a queue that grows without bound as the single-server
    #: formula would have it.
    MAX_LAG_MS = RouterTransport.SLICE_NS / 1e6 + 1.0

    @property
    def lag_ms(self) -> float:
        busy = min(self.busy, self.MAX_BUSY)
        return min(busy / (1.0 - busy) * self.obs_ms, self.MAX_LAG_MS)


def apply_gil_switch_interval(cfg: SchedulingConfig) -> None:
    """Set Python's GIL switch interval to ``cfg.gil_switch_interval_ms`` (None: leave it);
    the server restores Python's own at stop."""
    if cfg.gil_switch_interval_ms is not None:
        sys.setswitchinterval(cfg.gil_switch_interval_ms / 1000.0)


def _rank(r: InferenceRequest) -> tuple[int, float]:
    return (r.priority, r.deadline_ns if r.deadline_ns is not None else float("inf"))


class _Ahead:
    """A batch handed ahead to a backend that queues it, while it may be taken back."""

    __slots__ = ("batch", "revoke")

    def __init__(self, batch: list[InferenceRequest], revoke: Callable[[], bool]) -> None:
        self.batch = batch
        self.revoke = revoke


class Engine:
    """Launch, finish, retry and time the server's requests."""

    def __init__(
        self,
        config: InferentialConfig,
        backend: Backend,
        ledger: Ledger,
        registry: ClientRegistry,
        metrics: MetricsStore,
        clock: Callable[[], int],
    ) -> None:
        self.config = config
        self.backend = backend
        self.ledger = ledger
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.models: dict[str, ModelInfo] = {}
        self.inflight: dict[str, int] = defaultdict(int)
        self.stopping = False
        self.batches_running = 0
        self.batches_idle: Optional[asyncio.Event] = None
        self.scheduler: Scheduler = self._new_scheduler(config.scheduling)
        self._held: dict[str, deque[list[InferenceRequest]]] = defaultdict(deque)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at: Optional[int] = None
        self._next_sweep_ns = 0
        self._launching = False
        self._completed: deque[Completed] = deque()
        # Per model, the start time of the batch handed ahead and still waiting for a
        # worker (dispatch_ahead_ms; at most one): it becomes "now" when a batch of its
        # model ends.
        self._waiting: dict[str, list[int]] = {}
        self._ahead_at: Optional[int] = None  # when the next batch may be handed ahead
        # Per model, the batch handed ahead that a worker may not have started yet, while
        # it can still be taken back and formed again (see note_arrival).
        self.ahead: dict[str, _Ahead] = {}
        self._run_inline: Optional[Callable[[str, list[Any]], Optional[Ran]]] = None
        self._model_labels: dict[str, dict[str, str]] = {}
        self.loop_load = LoopLoad(clock)
        ledger.withhold_late = withholds_late(config.scheduling)
        self.dispatched_ahead = 0  # batches handed to a busy model's queue (dispatch_ahead_ms)
        self.revised = 0  # of those, taken back and formed again

    def start(self, loop: asyncio.AbstractEventLoop, models: dict[str, ModelInfo]) -> None:
        """The backend has started: take its models and serve on ``loop``."""
        self._loop = loop
        # Measured from the loop's own thread (the server may be built on another one).
        self.loop_load = LoopLoad(self.clock)
        self._wake = asyncio.Event()
        self.batches_idle = asyncio.Event()
        self.batches_idle.set()
        self.models = models
        # Only a backend that can run batches on the loop is asked each batch.
        overrides = type(self.backend).run_inline is not Backend.run_inline
        self._run_inline = self.backend.run_inline if overrides else None
        self._set_limits(self.scheduler, self.config.scheduling)

    # -- the scheduler -------------------------------------------------------------

    def _new_scheduler(self, cfg: SchedulingConfig) -> Scheduler:
        sched = create_scheduler(cfg, clock=self.clock)
        # Built-ins take the set of models with a free executor; README-style custom ones do not.
        self._takes_ready = takes_ready_models(type(sched))
        sched.on_shed = self.ledger.answer  # type: ignore[method-assign]
        sched.max_retries = cfg.max_retries
        self._set_limits(sched, cfg)
        self._server_costs = getattr(sched, "set_server_costs", None)  # built-ins plan with the server's time
        if self._server_costs is not None and hasattr(self, "loop_load"):
            self._server_costs(self._extra_lag_ms(), self.loop_load.reply_ms)
        return sched

    def _set_limits(self, sched: Scheduler, cfg: SchedulingConfig) -> None:
        for name, info in self.models.items():
            sched.set_model_limits(
                name, max_batch_size=min(info.max_batch_size, cfg.max_batch_size), concurrency=info.concurrency
            )

    def swap_scheduler(self, cfg: SchedulingConfig) -> None:
        """Switch to the scheduler ``cfg`` describes, carrying the queued requests over."""
        new = self._new_scheduler(cfg)
        queued = self.drain_scheduler()
        new.adopt(queued)
        self.scheduler = new
        self.config.scheduling = cfg
        self.ledger.withhold_late = withholds_late(cfg)
        apply_gil_switch_interval(cfg)
        logger.info("scheduler is now %s (%d requests carried over)", cfg.strategy, len(queued))
        self.poke()

    def drain_scheduler(self) -> list[InferenceRequest]:
        """Take everything queued, leaving out what was answered meanwhile."""
        pending = self.ledger.pending
        return [r for r in self.scheduler.drain() if r.seq in pending]

    def refused(self, req: InferenceRequest, err: Exception) -> None:
        """Answer an admitted request whose ``scheduler.submit`` raised (the server
        calls ``submit`` itself, on the receive path, to spare a call per request)."""
        if isinstance(err, QueueFullError):  # a custom scheduler refusing it
            self.ledger.answer(req, Status.QUEUE_FULL, str(err))
            return
        # A custom scheduler's bug must not cost the robot its reply.
        logger.error("scheduler %s failed to take a request: %r", type(self.scheduler).__name__, err)
        self.ledger.answer(req, Status.INVALID_REQUEST, f"{type(err).__name__}: {err}")

    # -- the loop and its timers -----------------------------------------------------

    def poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def after_change(self) -> None:
        """Something arrived or finished: dispatch what can run, re-arm the timer."""
        if self.stopping:
            return
        if self.ledger.gone:
            self.settle_gone()
        self.launch_ready()
        self.arm_timer()
        self._sample_load()

    async def run(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            self.scheduler.tick()
            self.expire_stragglers()
            self.sweep_silent()
            if self.ledger.gone:
                self.settle_gone()
            self.launch_ready()
            self.arm_timer()
            await self._wake.wait()

    def arm_timer(self) -> None:
        assert self._loop is not None
        candidates = []
        wake = self.scheduler.next_wakeup_ns()
        if wake is not None:
            candidates.append(wake)
        pending = self.ledger.pending
        if pending:
            oldest = next(iter(pending.values()))
            candidates.append(oldest.arrival_ns + int(self.config.scheduling.request_ttl_ms * 1e6) + 1)
        if self.registry.robots:
            candidates.append(self._next_sweep_ns)
        if self._ahead_at is not None:
            candidates.append(self._ahead_at)
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
            delay = max(0.0, (at - self.clock()) / 1e9)
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.poke()

    def cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def expire_stragglers(self) -> None:
        """The server's own TTL guarantee, whatever the scheduler does."""
        ttl_ms = self.config.scheduling.request_ttl_ms
        ttl_ns = int(ttl_ms * 1e6)
        now = self.clock()
        expired = []
        for req in self.ledger.pending.values():  # oldest first: stop at the first one still in time
            if now - req.arrival_ns <= ttl_ns:
                break
            if not req.running:
                expired.append(req)
        for req in expired:
            waited = (now - req.arrival_ns) / 1e6
            self.ledger.answer(req, Status.EXPIRED, f"waited {waited:.0f} ms, TTL is {ttl_ms:.0f} ms")

    # -- robots ----------------------------------------------------------------------

    def sweep_silent(self) -> None:
        """Unregister robots silent for longer than the timeout.

        Runs on a coarse schedule (a quarter of the timeout), not per request:
        a robot is unregistered between 1 and 1.25 timeouts after it went quiet.
        """
        now = self.clock()
        if now < self._next_sweep_ns:
            return
        self._next_sweep_ns = now + self.registry.timeout_ns // 4
        for client_id in self.registry.silent(now):
            self.unregister(client_id, "silent for longer than disconnect_timeout_s")

    def settle_gone(self) -> None:
        """Act on the ledger's report of disconnected peers: a robot with no
        connection left is unregistered, and its requests are settled without a
        reply (ZMQ has nowhere to send it)."""
        for identity in self.ledger.take_gone():
            for cid in self.registry.by_identity(identity):
                robot = self.registry.robots.get(cid)
                if robot is not None:
                    robot.identities.discard(identity)
                    if not robot.identities:
                        self.unregister(cid, "connection closed", reachable=False)

    def unregister(self, client_id: str, why: str, reachable: bool = True) -> None:
        """Forget a robot and settle its waiting requests: CANCELLED, or without a
        reply when it is not ``reachable``. Those running are answered when done."""
        robot = self.registry.unregister(client_id)
        if robot is None:
            return
        logger.info("robot %s unregistered: %s", client_id, why)
        self.metrics.record("active_clients", len(self.registry.robots))
        ledger = self.ledger
        # Only this robot's queued requests: the others keep their place untouched.
        waiting = self.scheduler.cancel_client(client_id)
        waiting += [
            r for r in ledger.pending.values() if r.client_id == client_id and not r.running
        ]  # held by a custom scheduler
        for r in waiting:
            if reachable:
                ledger.answer(r, Status.CANCELLED, f"robot unregistered: {why}")
            else:
                ledger.drop(r)

    # -- batches ---------------------------------------------------------------------

    def launch_ready(self) -> None:
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
        pending = self.ledger.pending
        held = self._held
        inflight = self.inflight
        while True:
            free = {m for m, info in self.models.items() if inflight[m] < info.concurrency}
            launched = False
            for model in list(free):
                if held[model]:
                    self._launch(model, held[model].popleft())
                    launched = True
            if launched:
                continue
            pulled = []
            if free:
                pulled = self.scheduler.next_batch(ready_models=free) if takes_ready else self.scheduler.next_batch()  # type: ignore[call-arg]
            if not pulled:
                ahead = self._pull_ahead()
                if ahead:
                    self._launch(ahead[0].model_id, ahead)
                    continue
                return  # nothing ready (a scheduler may hold requests back, e.g. to fill a batch)
            batch = [r for r in pulled if r.seq in pending]
            if not batch:
                self._ended_unrun(pulled[0].model_id)
                continue  # all already answered (expired, cancelled): pull again
            by_model: dict[str, list[InferenceRequest]] = defaultdict(list)
            for r in batch:
                by_model[r.model_id].append(r)
            for model, reqs in by_model.items():
                if model in free and inflight[model] < self.models[model].concurrency:
                    self._launch(model, reqs)
                else:
                    held[model].append(reqs)

    def note_arrival(self, req: InferenceRequest) -> None:
        """A request is about to be queued for a model with a batch handed ahead (the
        server calls this on the receive path, before ``scheduler.submit``): if it would
        change that batch (room left in it, or it outranks a member by priority, then
        deadline), the batch is taken back, unless a worker has started it, so that
        admission judges the newcomer with that batch still open and the next dispatch
        forms it again."""
        record = self.ahead.get(req.model_id)
        if record is None:
            return
        # Only a QueuedScheduler (one with put_back) has a batch handed ahead: it has the limit.
        limit = self.scheduler.max_batch_size(req.model_id)  # type: ignore[attr-defined]
        if len(record.batch) < limit or _rank(req) < max(map(_rank, record.batch)):
            self._take_back(req.model_id, record)

    def _take_back(self, model: str, record: "_Ahead") -> None:
        del self.ahead[model]
        if not record.revoke():
            return  # a worker has it: it runs as formed
        self._release(model)
        self._waiting.pop(model, None)
        self._ended_unrun(model, last=True)
        pending = self.ledger.pending
        back = [r for r in record.batch if r.seq in pending]
        for r in back:
            r.running = False
        self.scheduler.put_back(back)  # type: ignore[attr-defined]
        self.revised += 1

    def _pull_ahead(self) -> list[InferenceRequest]:
        """A batch for a model whose every executor is busy, when the batch running is
        expected to end within ``dispatch_ahead_ms`` and the backend queues batches: it is
        handed over now and starts the moment a worker frees, without a trip through the
        loop (at most one such batch per model). Otherwise [] and, when such a time is
        ahead, ``_ahead_at`` for the timer."""
        self._ahead_at = None
        lead = int(self.config.scheduling.dispatch_ahead_ms * 1e6)
        free_at = getattr(self.scheduler, "free_at_ns", None)
        estimate = getattr(self.scheduler, "estimate_service_ms", None)
        if lead <= 0 or free_at is None or estimate is None or not self._takes_ready:
            return []
        now = self.clock()
        soonest: Optional[int] = None
        for model, info in self.models.items():
            if info.concurrency < 1 or self.inflight[model] != info.concurrency:
                continue
            if estimate(model, 1) is None or not self.backend.queues_batches(model):
                continue  # no run time measured yet: no telling when the running batch ends
            at = free_at(model, now) - lead
            if at > now:
                soonest = at if soonest is None else min(soonest, at)
                continue
            held = self._held[model]
            batch = held.popleft() if held else self.scheduler.next_batch(ready_models={model})  # type: ignore[call-arg]
            if batch:
                return batch  # _launch drops what was answered meanwhile
        self._ahead_at = soonest
        return []

    def _launch(self, model: str, batch: list[InferenceRequest]) -> None:
        pending = self.ledger.pending
        batch = [r for r in batch if r.seq in pending]
        if not batch:
            self._ended_unrun(model)
            return
        self.inflight[model] += 1
        for r in batch:
            r.running = True
        labels = self._model_labels.get(model)
        if labels is None:
            labels = self._model_labels[model] = {"model": model}
        self.metrics.record("batch_size", len(batch), labels)
        self.metrics.record("queue_depth", self.scheduler.queue_len(), labels)
        self.batches_running += 1
        assert self.batches_idle is not None
        if self.batches_running == 1:
            self.batches_idle.clear()
        ahead = self.inflight[model] > self.models[model].concurrency  # handed ahead: waits for a worker
        self._predict(model, batch, ahead)
        inputs = [r.inputs for r in batch]
        if self._run_inline is not None and not ahead:
            began = self.clock()
            outcome = self._run_inline(model, inputs)
            if outcome is not None:  # ran here and now: finished by launch_ready's loop
                self._completed.append((model, batch, began, *outcome))
                return
        # The batch's run is timed from now, or, handed ahead, from when the batch it waits
        # for ends (set by _finish_batch): the service-time model learns run times, not waits.
        start = [self.clock()]
        if ahead:
            self._waiting[model] = start

        def done(outcomes: Optional[list[Any]], error: Optional[BaseException]) -> None:
            self._finish_batch(model, batch, start[0], outcomes, error, getattr(done, BACK_NS, 0))

        try:
            revoke = self.backend.submit(model, inputs, done)
        except Exception as err:  # a backend that fails to even start the batch
            asyncio.get_running_loop().call_soon(done, None, err)
            return
        if ahead:
            self.dispatched_ahead += 1
            if revoke is not None and hasattr(self.scheduler, "put_back"):
                self.ahead[model] = _Ahead(batch, revoke)

    def _predict(self, model: str, batch: list[InferenceRequest], ahead: bool = False) -> None:
        """Each request's delay, predicted now it is dispatched (server/chunking.py): the
        model gets it as ``inference_delay_steps`` to freeze that prefix of its chunk.
        A batch handed ahead is predicted from when its worker is expected free."""
        for r in batch:
            if r.control_rate_hz > 0:
                break
        else:
            return  # no chunked robot in this batch: nothing to predict (the common case)
        # A custom scheduler may keep no service-time estimate: the prediction is then
        # the wait and the margin.
        estimate = getattr(self.scheduler, "estimate_service_ms", None)
        service_ms = estimate(model, len(batch), margin=False) if estimate is not None else None
        now = self.clock()
        free_at = getattr(self.scheduler, "free_at_ns", None) if ahead else None
        if free_at is not None and service_ms is not None:
            # The scheduler has booked this batch already: it ends at free_at, starts one run earlier.
            now = max(now, free_at(model, now) - int(service_ms * 1e6))
        predict_batch(batch, now, service_ms, self.config.scheduling.deadline_margin_ms)

    def _release(self, model: str) -> None:
        """A batch of ``model`` no longer holds an executor (it ended, or was taken back)."""
        self.inflight[model] -= 1
        self.batches_running -= 1
        if self.batches_running == 0 and self.batches_idle is not None:
            self.batches_idle.set()

    def _ended_unrun(self, model: str, last: bool = False) -> None:
        """Tell the scheduler a batch it handed out ended without a run time (failed, or
        every request answered before it ran, or ``last``: the batch handed ahead, taken
        back): its executor booking is over."""
        ended = getattr(self.scheduler, "batch_ended", None)
        if ended is not None:
            ended(model, last=last)

    def _finish_batch(
        self,
        model: str,
        batch: list[InferenceRequest],
        start: int,
        outcomes: Optional[list[Any]],
        error: Optional[BaseException],
        back_ns: int = 0,
    ) -> None:
        """``back_ns``: from the end of the run on its executor to this call, when the backend
        says (``dispatch.base.BACK_NS``)."""
        self._release(model)
        end = self.clock()
        # The run ended before the loop heard of it. Up to deadline_margin_ms that wait is the
        # loop's usual way, counted in the model's measured time; what exceeds it is a loop short
        # of CPU, which the plan adds once per batch from the loop's own measure (_extra_lag_ms).
        # Counted here as well, it was counted twice, and for every batch queued ahead: a 1 ms
        # model measured at 30-90 ms once the Python transport refused a storm of observations
        # (admission then refused everything for good), and at 3.4 ms a batch at 64 closed-loop
        # robots, where its worker was busy 1.3 ms of it.
        ended = end - max(0, back_ns - int(self.config.scheduling.deadline_margin_ms * 1e6))
        # A worker is free: it has taken the batch handed ahead (or this was it), which
        # started about then.
        started = self._waiting.pop(model, None)
        if started is not None:
            started[0] = max(started[0], ended)
        self.ahead.pop(model, None)
        infer_ms = (end - start) / 1e6
        run_ms = (ended - start) / 1e6
        if error is None and outcomes is None:
            error = RuntimeError("backend returned no outcomes")
        if error is not None:
            self._failed(model, batch, error)
            return
        assert outcomes is not None
        self.scheduler.record_service_time(model, len(batch), run_ms)
        if not self.stopping:
            self.launch_ready()  # keep the executor busy: start the next batch before replying
        answer = self.ledger.answer
        record = self.metrics.record
        max_age_ms = self.config.scheduling.action_max_age_ms
        self._mark_mismatches(model, batch, run_ms)
        replies_from = self.clock()
        with self.ledger.replies():
            for r, out in zip(batch, outcomes, strict=False):  # lengths: the backend contract
                # Per request, labelled by robot as the published README's callbacks expect.
                record("inference_latency_ms", infer_ms, request_labels(r))
                timing = ReplyTiming(
                    queue_wait_ms=(start - r.arrival_ns) / 1e6,
                    inference_ms=infer_ms,
                    batch_size=len(batch),
                )
                if isinstance(out, BaseException):
                    answer(r, _MODEL_ERROR, f"{type(out).__name__}: {out}", timing=timing)
                else:
                    if r.control_rate_hz > 0 or max_age_ms is not None:
                        r.valid_until_ns = valid_until_ns(r, out, max_age_ms)
                    answer(r, _OK, outputs=out, timing=timing)
        self._measure_server(len(batch), self.clock() - replies_from)
        self._after_batch()

    def _mark_mismatches(self, model: str, batch: list[InferenceRequest], infer_ms: float) -> None:
        """Mark ``late_ok`` the requests whose whole allowance is shorter than the model's
        run time alone (admission's "mismatch"): their results are sent even when late."""
        estimate = getattr(self.scheduler, "estimate_service_ms", None)
        alone_ms = estimate(model, 1, margin=False) if estimate is not None else None
        # A custom scheduler keeps no estimate: this batch's own time bounds it from above.
        floor_ns = (alone_ms if alone_ms is not None else infer_ms) * 1e6
        for r in batch:
            if r.deadline_ns is not None and r.deadline_ns - r.arrival_ns < floor_ns:
                r.late_ok = True

    def _measure_server(self, replies: int, elapsed_ns: int) -> None:
        """Feed the server's own costs to the scheduler's admission (see LoopLoad)."""
        self.loop_load.replied(replies, elapsed_ns)
        self._sample_load()

    def _sample_load(self) -> None:
        """Close LoopLoad's window when it is over: after each batch and each burst of
        arrivals, so the estimate follows the load down too when admission sheds
        everything and no batch runs (no timer of its own)."""
        load = self.loop_load
        if not load.due():
            return  # called after every batch and burst: most calls end here
        ledger = self.ledger
        # What the loop handled: the native transport's own refusals cost it nothing, and
        # counted in they made the loop's CPU per observation look a fraction of what it is.
        observations = sum(ledger.status_counts.values()) + len(ledger.pending) - ledger.refused_natively
        if load.sample(observations) and self._server_costs is not None:
            self._server_costs(self._extra_lag_ms(), load.reply_ms)

    def shed_costs(self) -> dict[str, tuple[float, float, float, float]]:
        """Per served model, what a request taken off the socket now still needs, for the
        native transport's refusals (``NativeTransport.set_shedding``), in ms: ``base``, the
        least (the model's mean run time alone, 0 before it is measured, the loop's expected
        extra wait and reply time, and ``deadline_margin_ms`` for the way back); ``ahead``,
        the work the scheduler's plan has queued before it (0 for a scheduler without a
        plan); ``per_item``, what each further request adds to that; ``floor``, the model's
        run time alone plus the margin: a budget below it is late even on an idle server,
        which admission runs anyway (deprioritized), so the module leaves it to the loop. An observation that
        has already waited longer than its budget less ``base`` (less ``base + ahead`` for
        one of default priority or lower) cannot be answered in time: the plan would refuse
        it too, after the loop had spent a request's worth of time on it."""
        sched = self.scheduler
        estimate = getattr(sched, "estimate_service_ms", None)
        ahead_of = getattr(sched, "ahead_ms", None)
        margin = self.config.scheduling.deadline_margin_ms
        server_ms = self._extra_lag_ms() + self.loop_load.reply_ms + margin
        now = self.clock()
        costs = {}
        for model in self.models:
            alone = (estimate(model, 1, margin=False) if estimate is not None else None) or 0.0
            ahead, per_item = ahead_of(model, now) if ahead_of is not None else (0.0, 0.0)
            costs[model] = (alone + server_ms, ahead, per_item, alone + margin)
        return costs

    def last_run_ns(self, model: str) -> Optional[int]:
        """When the scheduler last handed out a batch of ``model`` (None: a scheduler that
        does not say), for the early refusal's probe (server/early.py)."""
        last = getattr(self.scheduler, "last_run_ns", None)
        return None if last is None else int(last(model))

    def _extra_lag_ms(self) -> float:
        """The loop's expected wait beyond what the plan already covers. The measured service
        times include the loop's usual delay in handling a finished batch, and
        ``deadline_margin_ms`` covers a reply's usual way to the robot; what exceeds the
        margin is a loop (and a process) short of CPU, which delays replies on their way
        out as well: that much more is planned."""
        return max(0.0, self.loop_load.lag_ms - self.config.scheduling.deadline_margin_ms)

    def _failed(self, model: str, batch: list[InferenceRequest], error: BaseException) -> None:
        self._ended_unrun(model)
        labels = {"model": model}
        self.metrics.increment("dispatch_errors", labels)
        logger.warning("batch of %d for %s failed: %s", len(batch), model, error)
        pending = self.ledger.pending
        for r in batch:
            r.running = False
            if r.seq not in pending:
                continue
            if self.stopping or not self._requeue(r):
                attempts = self.config.scheduling.max_retries + 1
                self.ledger.answer(r, Status.MODEL_ERROR, f"backend failed on all {attempts} attempts: {error}")
            else:
                self.metrics.increment("dispatch_retries", labels)
        self._after_batch()

    def _after_batch(self) -> None:
        if self._launching:
            # A batch that ran inline, finished inside launch_ready's loop: the loop goes on
            # to launch what is next, and its caller (after_change, or run) re-arms the timer
            # once the loop ends; what the replies found gone is settled now, as after_change would.
            if self.ledger.gone and not self.stopping:
                self.settle_gone()
        else:
            self.after_change()
        transport = self.ledger.transport
        if transport is not None:
            transport.drain()  # sends can hide readable input from an edge-triggered fd

    def _requeue(self, req: InferenceRequest) -> bool:
        try:
            return self.scheduler.requeue(req)
        except QueueFullError:
            return False  # no room to retry: answered MODEL_ERROR with the batch's error

    def held(self) -> list[InferenceRequest]:
        """Take every request pulled from the scheduler but not yet launched."""
        out = [req for batches in self._held.values() for batch in batches for req in batch]
        self._held.clear()
        return out
