"""Queue mechanics shared by every built-in strategy.

:class:`QueuedScheduler` owns the queue: bounds and overflow, the per-robot cap,
TTL, coalescing, admission control, retries, the service-time estimate and the
shed reports. A strategy is a subclass that only chooses the next batch
(:meth:`QueuedScheduler._select`) from a stable view of what is queued.

Rules, in the order ``submit`` applies them:

1. Sanitising. ``arrival_ns`` 0 means "now". ``urgency`` is clamped to [0, 1]
   (NaN or non-numbers become 0: a bad hint must not outrank honest ones);
   ``priority`` is clamped to [0, ``max_priority``].
2. TTL. A request ``request_ttl_ms`` or more past its arrival is shed EXPIRED:
   at submit, by ``tick()``, and before every ``next_batch()``, so none is ever
   returned late. ``next_wakeup_ns()`` gives the exact time of the next expiry.
3. Coalescing (``coalesce``; None = the strategy's default, on for ``edf`` only).
   A newer observation for the same robot, connection and model
   (``InferenceRequest.stream``) supersedes the queued one, which is shed
   SUPERSEDED: its robot gets the newer one's reply on the same connection. Two
   connections sharing a client id never supersede each other's observations.
4. Admission control (``admission``). The request is placed among the queued
   requests of its model in deadline order and the batches ahead of it are
   costed with the service-time estimate, starting when the model's executor is
   expected to be free. Batches are planned full (a tight request of a busy
   model is not admitted on the hope of a small batch), except one led by a
   request that outranks others in it, which is cut for it as ``edf`` does.
   For strategies that do not serve in deadline order this underestimates the
   wait. When some request in that plan would finish after its
   ``deadline_ns``, the least important request up to that point (largest
   priority number, then the newest) is taken out, and so on until the plan
   fits: under overload the lowest priority gives way first, and among equals
   the newcomer. What is taken out is shed DEADLINE_UNMEETABLE (``"reject"``)
   or deprioritized (``"deprioritize"``). ``next_batch`` applies the same test
   at dispatch to each request of the batch (could it still finish if run
   alone, now?). Both tests use the mean service time, not the planning margin
   (:class:`~inferential.scheduler.service_time.ServiceTimeModel`): a rejection
   is final, so only what will almost surely be late is rejected. Without a
   service-time estimate for the model yet, nothing is judged unmeetable.
   Requests without ``deadline_ns`` are never judged.
5. Per-robot cap (``per_client_queue_cap``). A robot already holding that many
   requests loses its own oldest one (``drop_oldest``) or has the new one
   refused (``reject_newest``): one robot's burst cannot push out the others.
   The share is counted per robot *and connection* (client id, routing identity):
   a client id is only a claim, so another connection using it cannot make this
   one's requests QUEUE_FULL.
6. Queue bound (``max_queue_size``). ``drop_oldest`` evicts the oldest queued
   request, deprioritized ones first; ``reject_newest`` refuses the new one.
   Both are shed QUEUE_FULL.

Deprioritized requests of a model are served only when none of its other
requests is queued (per model: each model has its own executor).

Every shed goes through ``on_shed(request, status, reason)``; the server
replaces it to answer the robot. A request shed QUEUE_FULL or DEADLINE_UNMEETABLE
carries a hint in ``retry_after_ms``: the estimated time for the work ahead of it on
that model (batches running, then what is queued, in full batches over the model's
concurrency) to clear, rounded up to whole ms and at least 1; 0 (no hint) until
the model's service time has been measured. ``submit``/``requeue``/``adopt`` never raise
for a shed. Not thread-safe: one event loop drives it.
"""

from __future__ import annotations

import heapq
import math
import operator
import time
import weakref
from collections import Counter, deque
from typing import Any, ClassVar, Iterable, Mapping, Optional

from inferential.config.schema import SchedulingConfig
from inferential.scheduler.interface import (
    DEADLINE_UNMEETABLE,
    EXPIRED,
    QUEUE_FULL,
    SHED_STATUSES,
    SUPERSEDED,
    Clock,
    Scheduler,
)
from inferential.scheduler.request import InferenceRequest
from inferential.scheduler.service_time import ServiceTimeModel
from inferential.wire import Status

# Sheds after which a fresh observation may succeed once the backlog clears.
_HINTED = (QUEUE_FULL, DEADLINE_UNMEETABLE)
# An idle model that admission has refused everything for this long gets one request
# through, so that its estimates can learn they were wrong (see _admission).
PROBE_NS = 1_000_000_000
#: A batch's booking of its executor outlives its predicted end by at most this much:
#: later it is forgotten (a safety net: batches that end remove theirs, through
#: record_service_time or batch_ended).
FORGET_BUSY_NS = 5_000_000_000

View = Mapping[str, Mapping[int, InferenceRequest]]
"""Per model, its queued requests by ``seq``. Only models with something to serve."""

# Admission's plan order (earliest deadline, then arrival) and which request of a missed
# prefix gives way (the least important: largest priority number, then the latest).
_PLAN_ORDER = operator.attrgetter("deadline_ns", "seq")
_GIVES_WAY = operator.attrgetter("priority", "seq")


def arrival_order(request: InferenceRequest) -> tuple[int, int]:
    return (request.arrival_ns, request.seq)


class QueuedScheduler(Scheduler):
    """Base of the built-in strategies; subclasses implement :meth:`_select`."""

    strategy_name: ClassVar[str] = "queued"
    #: Whether a newer observation of a (robot, model) replaces the queued one
    #: when the config leaves ``coalesce`` unset.
    coalesce_by_default: ClassVar[bool] = False
    #: Refresh the live fields of every candidate before ``_select`` (scoring strategies).
    scores_requests: ClassVar[bool] = False

    def __init__(self, config: Optional[SchedulingConfig] = None, *, clock: Optional[Clock] = None) -> None:
        self.config = config if config is not None else SchedulingConfig()
        self.clock: Clock = clock or time.monotonic_ns
        self.shed_log: deque = deque(maxlen=self.shed_log_size)
        self.shed_counts: Counter[Status] = Counter()
        self.max_retries = self.config.max_retries
        self.coalesce = self.config.coalesce if self.config.coalesce is not None else self.coalesce_by_default
        self._ttl_ns = int(self.config.request_ttl_ms * 1e6)
        self._queued: dict[int, InferenceRequest] = {}
        self._normal: dict[str, dict[int, InferenceRequest]] = {}
        self._late: dict[str, dict[int, InferenceRequest]] = {}
        self._by_client: dict[str, dict[int, InferenceRequest]] = {}
        self._by_owner: dict[tuple[str, bytes], dict[int, InferenceRequest]] = {}
        self._latest: dict[tuple[str, bytes, str], InferenceRequest] = {}
        self._expiry: list[tuple[int, int, InferenceRequest]] = []
        self._batch_limits: dict[str, int] = {}
        self._concurrency: dict[str, int] = {}
        self._service: dict[str, ServiceTimeModel] = {}
        # Per model, when the batches handed out are expected to finish.
        self._busy_until: dict[str, list[int]] = {}
        # When each model last had a batch launched (admission's probe, see _admission).
        self._last_run: dict[str, int] = {}
        # The server's own time on top of the model's (set_server_costs): the event loop's
        # expected wait before it handles a finished batch, and its time per reply sent.
        self._lag_ns = 0.0
        self._reply_ns = 0.0
        # Streams (robot, connection, model) seen with two observations waiting at once:
        # robots that send on their own clock, whose replies go stale at the next one.
        self._open_loop: dict[tuple[str, bytes, str], None] = {}
        # The latest request of each such stream not yet known to be open loop (weakly held:
        # a settled request's inputs must not stay in memory for this).
        self._previous: dict[tuple[str, bytes, str], weakref.ref] = {}

    # --- the strategy's part ----------------------------------------------------

    def _select(self, view: View, now_ns: int) -> list[InferenceRequest]:
        """The next batch: requests of one model from ``view``, best first, or []
        to wait. The base trims it to the model's batch limit."""
        raise NotImplementedError

    def _wakeup_after(self, now_ns: int) -> Optional[int]:
        """A strategy's own timer: the earliest time after ``now_ns`` at which
        ``_select`` would return something it does not return now."""
        return None

    def _dispatched(self, batch: list[InferenceRequest], now_ns: int) -> None:
        """Called with each batch handed out."""

    def _arrived(self, request: InferenceRequest) -> None:
        """Called with each new observation (``submit``), before the queue rules."""

    # --- submitting ---------------------------------------------------------------

    def submit(self, request: InferenceRequest) -> bool:  # type: ignore[override]
        """Queue ``request``. False when it was shed instead (already reported)."""
        now = self.clock()
        self._sanitize(request, now)
        request.deprioritized = False
        if not request.budget_stated:
            self._cadence_deadline(request)  # before the strategy sees it (edf foresees with it)
        self._arrived(request)
        return self._admit(request, now)

    def requeue(self, request: InferenceRequest) -> bool:
        """Put back a request whose dispatch failed, counting a retry.

        False when it has used up ``max_retries``: the caller answers it
        (MODEL_ERROR). True when it is queued again or was shed (and reported)
        by the usual rules.
        """
        request.retries += 1
        if request.retries > self.max_retries:
            return False
        request.deprioritized = False
        self._admit(request, self.clock())
        return True

    def put_back(self, requests: Iterable[InferenceRequest]) -> None:
        """Queue again, as they were, requests handed out in a batch that never ran (the
        engine took back a batch handed ahead, to form it again with what arrived since).
        No retry is counted and admission does not judge them twice; a robot's newer
        observation queued meanwhile supersedes its older one, as on arrival."""
        now = self.clock()
        for request in requests:
            if self.coalesce:
                newer = self._latest.get(request.stream)
                if newer is not None and arrival_order(newer) > arrival_order(request):
                    self._shed(request, SUPERSEDED, "a newer observation of this robot and model is queued", now)
                    continue
            self._insert(request, request.deprioritized)

    def adopt(self, requests: Iterable[InferenceRequest]) -> int:  # type: ignore[override]
        """Queue requests drained from another scheduler; returns how many were
        kept (the others were shed and reported under this scheduler's rules)."""
        now = self.clock()
        requests = list(requests)
        for request in requests:
            self._sanitize(request, now)
            request.deprioritized = False
            self._admit(request, now)
        return sum(1 for r in requests if self._queued.get(r.seq) is r)

    def _sanitize(self, request: InferenceRequest, now: int) -> None:
        if request.arrival_ns <= 0:
            request.arrival_ns = now
        try:
            urgency = float(request.urgency)
        except (TypeError, ValueError):
            urgency = 0.0
        request.urgency = 0.0 if math.isnan(urgency) else min(1.0, max(0.0, urgency))
        try:
            priority = int(request.priority)
        except (TypeError, ValueError, OverflowError):
            priority = self.config.max_priority
        request.priority = min(self.config.max_priority, max(0, priority))

    def _admit(self, request: InferenceRequest, now: int) -> bool:
        waited_ns = now - request.arrival_ns
        if waited_ns >= self._ttl_ns:
            self._shed(request, EXPIRED, f"waited {waited_ns / 1e6:.1f} ms, TTL {self.config.request_ttl_ms:g} ms", now)
            return False
        if self.coalesce:
            queued = self._latest.get(request.stream)
            if queued is not None and queued is not request:
                if arrival_order(queued) > arrival_order(request):
                    self._shed(request, SUPERSEDED, "a newer observation of this robot and model is queued", now)
                    return False
                self._shed(queued, SUPERSEDED, "replaced by a newer observation of this robot and model", now)
        late = self._admission(request, now)
        if late is None:
            return False
        cap = self.config.per_client_queue_cap
        mine = self._by_owner.get((request.client_id, request.identity))
        if cap is not None and mine is not None and len(mine) >= cap:
            reason = f"robot {request.client_id!r} already has {len(mine)} queued (per_client_queue_cap {cap})"
            if not self._make_room(request, late, mine.values(), reason, now):
                return False
        if len(self._queued) >= self.config.max_queue_size:
            reason = f"queue full ({len(self._queued)} queued, max_queue_size {self.config.max_queue_size})"
            if not self._make_room(request, late, self._queued.values(), reason, now):
                return False
        self._insert(request, late)
        return True

    #: open-loop streams remembered (oldest forgotten first; a forgotten one is re-learnt
    #: at its next overlap)
    MAX_OPEN_LOOP = 4096

    def _cadence_deadline(self, request: InferenceRequest) -> None:
        """Tighten the default deadline of a robot that stated none to its cadence.

        A robot that sends on its own clock (open loop) acts on its next observation's
        reply once it has one: a reply after that is stale, so its deadline is its next
        observation (as ``edf`` orders requests without a deadline), planned a tenth of
        an interval early as robots jitter (as ``edf`` foresees arrivals): ``arrival +
        0.9 x cadence interval``, less the margin, when that is sooner than the default. Such a robot shows itself by
        sending an observation of a model before its previous one was settled (queued or
        running: ``settled`` is set by the server's ledger); one that waits for each reply
        before sending again (closed loop) never does, and its "cadence" is only the
        server's own latency, so it keeps the default budget. Once seen, a stream stays
        open loop (bounded memory, oldest forgotten first).
        """
        stream = request.stream
        if stream not in self._open_loop:
            ref = self._previous.pop(stream, None)
            previous = ref() if ref is not None else None
            if previous is None or previous is request or previous.settled:
                self._previous[stream] = weakref.ref(request)
                if len(self._previous) > self.MAX_OPEN_LOOP:
                    del self._previous[next(iter(self._previous))]
                return
            self._open_loop[stream] = None
            if len(self._open_loop) > self.MAX_OPEN_LOOP:
                del self._open_loop[next(iter(self._open_loop))]
            if previous.running:
                # The observation that showed it: its batch runs, and its reply will reach a
                # robot that has sent a newer one, stale as every later late one would be.
                # It gets their deadline, so the ledger withholds it if it is ready after
                # that, where the default budget let it go out late (once per open-loop
                # stream, at the onset of a backlog). A queued one is left to the queue's
                # rules (coalescing supersedes it), whose order its deadline is part of.
                self._tighten_to_cadence(previous, previous.expected_interval_ms or request.expected_interval_ms)
        self._tighten_to_cadence(request, request.expected_interval_ms)

    def _tighten_to_cadence(self, request: InferenceRequest, interval_ms: Optional[float]) -> None:
        if not interval_ms or request.deadline_ns is None:
            return
        due = request.arrival_ns + int((0.9 * interval_ms - self.config.deadline_margin_ms) * 1e6)
        if due < request.deadline_ns:
            request.deadline_ns = due
            request.latency_budget_ms = interval_ms

    def _make_room(
        self, request: InferenceRequest, late: bool, queued: Iterable[InferenceRequest], reason: str, now: int
    ) -> bool:
        """Apply the overflow policy; True when ``request`` may go in."""
        if self.config.overflow_policy == "reject_newest":
            self._shed(request, QUEUE_FULL, reason, now)
            return False
        candidates = list(queued) + [request]
        deprioritized = [r for r in candidates if r.deprioritized or (r is request and late)]
        victim = min(deprioritized or candidates, key=arrival_order)
        self._shed(victim, QUEUE_FULL, reason + "; the oldest is dropped", now)
        return victim is not request

    # --- admission control --------------------------------------------------------

    def _admission(self, request: InferenceRequest, now: int) -> Optional[bool]:
        """None: shed; True: queue deprioritized; False: queue normally."""
        mode = self.config.admission
        if mode == "off" or request.deadline_ns is None or request.chunked:
            # A chunk past its runway is late, not useless (it ends the robot's hold, and its
            # valid_until_ns says for how long its actions hold): it is never rejected.
            return False
        model = request.model_id
        alone_ms = self.estimate_service_ms(model, 1, margin=False)
        if alone_ms is None:
            return False
        if request.deadline_ns < request.arrival_ns + alone_ms * 1e6:
            # Late even on an idle server: the budget is shorter than the model's run
            # time, a mismatch of configuration rather than load. Rejecting would make
            # the model unusable for this robot, so it runs, after work that can be on time.
            return True
        ahead = [r for r in self._normal.get(model, {}).values() if r.deadline_ns is not None]
        plan = ahead + [request]
        plan.sort(key=_PLAN_ORDER)
        start = self._free_at(model, now)
        out: list[InferenceRequest] = []
        # Where each batch of the last pass began (index, executor time before it). A batch
        # is formed from the ``limit`` requests from where it begins (a priority among them
        # can cut it), so when a request leaves the plan, the batches whose window ended
        # before it are unchanged (same members, same start) and the next pass resumes at
        # the first batch whose window reached it, instead of at the first batch. Each pass
        # is O(batches) unless a batch can miss (see _first_miss).
        limit = self.max_batch_size(model)
        marks: list[tuple[int, float]] = []
        first, before = 0, 0.0
        while True:
            miss = self._first_miss(plan, model, start, first, before, marks)
            if miss is None:
                break
            if plan[miss].chunked:
                # A late chunk still helps: it runs, late, and pushes nobody out to be on time.
                gone_at = miss
                del plan[miss]
            else:
                victim = max((r for r in plan[: miss + 1] if not r.chunked), key=_GIVES_WAY)
                gone_at = plan.index(victim)  # identity: requests compare by identity
                del plan[gone_at]
                out.append(victim)
            keep = len(marks)
            while keep and marks[keep - 1][0] + limit > gone_at:
                keep -= 1
            first, before = marks[keep]  # the pass that found the miss reached gone_at's batch
            del marks[keep:]
        for victim in out:
            if victim is request:
                continue
            if mode == "reject":
                reason = "cannot finish before its deadline once more urgent work is served"
                self._shed(victim, DEADLINE_UNMEETABLE, reason, now)
            else:
                self._deprioritize(victim)
        if request in out and not ahead and start <= now and now - self._last_run.get(model, 0) >= PROBE_NS:
            # The executor idle, nothing queued, and no batch for a while: the estimates
            # that refuse this request (the model's mean, the loop's lag) learn only from
            # runs, and refusals produce none. One request goes through as a probe, so a
            # few slow early batches cannot refuse every request for good. It is queued
            # deprioritized (the dispatch-time check would refuse it again; with nothing
            # else queued it runs at once), and if it still comes late its result is
            # withheld, never sent as a late OK.
            self._last_run[model] = now
            return True
        if request in out:
            if mode == "reject":
                finish = "cannot finish before its deadline given the work queued ahead"
                self._shed(request, DEADLINE_UNMEETABLE, finish, now)
                return None
            return True
        return False

    def _first_miss(
        self,
        plan: list[InferenceRequest],
        model: str,
        start: int,
        first: int = 0,
        before: float = 0.0,
        marks: Optional[list[tuple[int, float]]] = None,
    ) -> Optional[int]:
        """Index of the first request in ``plan`` that finishes after its deadline
        when ``plan`` runs in order from ``start`` in full batches (the model's
        limit), except that a batch led by a request that outranks others in it
        is cut so that request makes it, as ``edf`` does.

        ``first``/``before``: begin at the batch that starts at index ``first`` with
        ``before`` of executor time used by the batches ahead of it; ``marks`` gets
        each batch's ``(first, before)`` as the pass reaches it."""
        limit = self.max_batch_size(model)
        concurrency = self._concurrency.get(model, 1)
        lag, reply = self._lag_ns, self._reply_ns
        costs: dict[int, float] = {}  # the estimate per batch size, asked once per pass

        def cost(size: int) -> float:
            known = costs.get(size)
            if known is None:
                known = costs[size] = self._cost_ns(model, size)
            return known

        count = len(plan)
        while first < count:
            if marks is not None:
                marks.append((first, before))
            chunk = plan[first : first + limit]
            size = len(chunk)
            head = chunk[0]
            head_priority, head_deadline = head.priority, head.deadline_ns
            assert head_deadline is not None  # admission plans only requests with a deadline
            for r in chunk:
                if r.priority > head_priority:
                    answer_one = self.server_ns(1)
                    while size > 1 and start + before + cost(size) + answer_one > head_deadline:
                        size -= 1
                    break
            cost_ns = cost(size)
            done = start + before + cost_ns + lag
            # Replies go out one after another: the last of a batch is answered last. The
            # plan is in deadline order, so the head's is the batch's earliest: when it
            # meets the batch's last reply, every member meets its own.
            if head_deadline < done + size * reply:
                for offset in range(size):
                    if plan[first + offset].deadline_ns < done + (offset + 1) * reply:  # type: ignore[operator]
                        return first + offset
            first += size
            before += cost_ns / concurrency
        return None

    def _cost_ns(self, model: str, size: int) -> float:
        # The mean: rejecting is final, so admission only rejects what will almost surely be late.
        return self.estimate_service_ms(model, size, margin=False) * 1e6  # type: ignore[operator]

    def _unmeetable_now(self, batch: list[InferenceRequest], now: int) -> bool:
        """Dispatch-time admission: take out of ``batch`` what could not finish
        even alone, starting now. True when anything was taken out."""
        if self.config.admission == "off":
            return False
        alone_ms = self.estimate_service_ms(batch[0].model_id, 1, margin=False)
        if alone_ms is None:
            return False
        finish = now + alone_ms * 1e6 + self.server_ns(1)
        changed = False
        for r in batch:
            if r.deprioritized or r.deadline_ns is None or r.deadline_ns >= finish or r.chunked:
                continue
            changed = True
            mismatch = r.deadline_ns < r.arrival_ns + alone_ms * 1e6  # late even on an idle server
            if self.config.admission == "reject" and not mismatch:
                late_by = (finish - r.deadline_ns) / 1e6
                reason = f"would finish {late_by:.1f} ms after its deadline even if run now"
                self._shed(r, DEADLINE_UNMEETABLE, reason, now)
            else:
                self._deprioritize(r)
        return changed

    # --- dispatching --------------------------------------------------------------

    def next_batch(self, ready_models: Optional[Iterable[str]] = None) -> list[InferenceRequest]:
        """The next batch: requests of one model, at most its batch limit, from
        ``ready_models`` when given (models whose executor is free). [] when
        nothing is ready."""
        now = self.clock()
        self._expire(now)
        ready = None if ready_models is None else set(ready_models)
        # A batch handed out while its model's executor is still busy (the engine's
        # dispatch ahead) starts when the executor is expected free: it is planned from then.
        at = now
        if ready:
            free, first = min((self._free_at(m, now), m) for m in ready)
            if free > now:
                # The executor frees when the running batch ends, booked at its mean run
                # time: plan from its bad case (the model's planning margin), as for this
                # batch's own run.
                at = free + self._margin_ns(first)
        while True:
            view = self._view(ready)
            if not view:
                return []
            if self.scores_requests:
                for queue in view.values():
                    for r in queue.values():
                        r.refresh(now)
            batch = self._select(view, at)
            if not batch:
                return []
            model = batch[0].model_id
            batch = [r for r in batch if r.model_id == model][: self.max_batch_size(model)]
            if self._unmeetable_now(batch, at):
                continue
            for r in batch:
                self._remove(r)
                r.refresh(now)
            self._mark_busy(model, len(batch), now)
            self._dispatched(batch, now)
            return batch

    def _view(self, ready: Optional[set[str]]) -> dict[str, Mapping[int, InferenceRequest]]:
        models = self._normal.keys() | self._late.keys() if ready is None else ready
        view: dict[str, Mapping[int, InferenceRequest]] = {}
        for model in models:
            queue = self._normal.get(model) or self._late.get(model)
            if queue:
                view[model] = queue
        return view

    # --- time ---------------------------------------------------------------------

    def tick(self) -> int:  # type: ignore[override]
        """Shed what has outlived the TTL; returns how many."""
        return self._expire(self.clock())

    def next_wakeup_ns(self) -> Optional[int]:
        """When ``tick``/``next_batch`` next has something to do without a new
        submit: the next TTL expiry (may be <= now: call ``tick`` at once) or the
        strategy's own timer (always > now). None: sleep until the next event."""
        now = self.clock()
        self._drop_stale_expiry()
        times = [t for t in (self._expiry[0][0] if self._expiry else None, self._wakeup_after(now)) if t is not None]
        return min(times) if times else None

    def _expire(self, now: int) -> int:
        expired = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, seq, request = heapq.heappop(self._expiry)
            if self._queued.get(seq) is request:
                waited = (now - request.arrival_ns) / 1e6
                self._shed(request, EXPIRED, f"waited {waited:.1f} ms, TTL {self.config.request_ttl_ms:g} ms", now)
                expired += 1
        return expired

    def _drop_stale_expiry(self) -> None:
        while self._expiry and self._queued.get(self._expiry[0][1]) is not self._expiry[0][2]:
            heapq.heappop(self._expiry)

    # --- service-time model -------------------------------------------------------

    def record_service_time(self, model_id: str, batch_size: int, ms: float) -> None:
        model = self._service.get(model_id)
        if model is None:
            model = self._service[model_id] = ServiceTimeModel()
        model.record(batch_size, ms)
        busy = self._busy_until.get(model_id)
        if busy:
            heapq.heappop(busy)

    def batch_ended(self, model_id: str, *, last: bool = False) -> None:
        """A batch handed out for the model ended without a run time to record (it
        failed, or nothing in it was left to run): its booking of the executor is over.
        ``last``: it is the latest booked (a batch handed ahead, taken back unrun)."""
        busy = self._busy_until.get(model_id)
        if not busy:
            return
        if last:
            busy.remove(max(busy))
            heapq.heapify(busy)
        else:
            heapq.heappop(busy)

    def estimate_service_ms(self, model_id: str, batch_size: int, *, margin: bool = True) -> Optional[float]:
        """Estimated run time of a batch, with a safety margin for planning unless
        ``margin=False`` (the mean); None before any measurement."""
        model = self._service.get(model_id)
        return None if model is None else model.estimate(batch_size, margin=margin)

    def set_server_costs(self, lag_ms: float, reply_ms: float) -> None:
        """The server's own time around each batch, as it measures it (the engine calls
        this): ``lag_ms``, the event loop's expected wait before it handles a finished
        batch (it grows as the server's CPU saturates); ``reply_ms``, its time to answer
        one request. Admission and ``edf``'s batch sizing plan with them, so that what the
        server itself cannot answer in time is shed at once rather than answered late."""
        self._lag_ns = max(0.0, lag_ms) * 1e6
        self._reply_ns = max(0.0, reply_ms) * 1e6

    def server_ns(self, replies: int) -> float:
        """The server's time, on top of the model's, until the ``replies``-th reply of a
        finished batch is sent."""
        return self._lag_ns + replies * self._reply_ns

    def last_run_ns(self, model: str) -> int:
        """When a batch of ``model`` was last handed out (or admission last let a probe
        through, see _admission), on the scheduler's clock; 0 before any."""
        return self._last_run.get(model, 0)

    def _mark_busy(self, model: str, size: int, now: int) -> None:
        self._last_run[model] = now
        # One booking per batch handed out (also before any estimate, so that bookings and
        # batches stay one to one), removed when it ends; a batch handed out ahead runs
        # after the one it waits for.
        cost = self.estimate_service_ms(model, size, margin=False) or 0.0
        start = self._free_at(model, now)
        heapq.heappush(self._busy_until.setdefault(model, []), start + int(cost * 1e6))

    def free_at_ns(self, model: str, now: int) -> int:
        """When the model's executor is expected to take a new batch (``now`` if it is
        free): the engine hands a batch ahead from ``dispatch_ahead_ms`` before then."""
        return self._free_at(model, now)

    def _margin_ns(self, model: str) -> int:
        """The planning margin of the model's service-time estimate (ns; 0 before any)."""
        service = self._service.get(model)
        return 0 if service is None else int(service.margin_ms * 1e6)

    def _free_at(self, model: str, now: int) -> int:
        """When the model's executor is expected to take a new batch."""
        busy = self._busy_until.get(model)
        if not busy:
            return now
        # One entry per batch running, removed when it ends (record_service_time). A batch
        # past its predicted end is still running (it frees the executor "now", not
        # earlier); entries long past are batches that failed, which record no time.
        while busy and busy[0] < now - FORGET_BUSY_NS:
            heapq.heappop(busy)
        concurrency = self._concurrency.get(model, 1)
        if len(busy) < concurrency:
            return now
        if len(busy) == concurrency:
            return max(now, busy[0])
        # More batches than slots (one handed ahead): the slot it waits for frees last.
        return max(now, heapq.nsmallest(len(busy) - concurrency + 1, busy)[-1])

    def _queued_work(self, model: str, now: int) -> Optional[tuple[int, float, int, int]]:
        """(batch limit, executor time of a full batch in ns, requests queued, ns until the
        executor is free) for ``model``; None before it is measured. O(1)."""
        limit = self.max_batch_size(model)
        full_batch_ms = self.estimate_service_ms(model, limit, margin=False)
        if full_batch_ms is None:
            return None
        full_batch_ns = full_batch_ms * 1e6 / self._concurrency.get(model, 1)
        queued = len(self._normal.get(model, ())) + len(self._late.get(model, ()))
        return limit, full_batch_ns, queued, self._free_at(model, now) - now

    def ahead_ms(self, model: str, now: int) -> tuple[float, float]:
        """The plan's work ahead of a request of ``model`` queued now behind everything else
        (the executor's booking, then the queued requests in full batches, with the server's
        own time per batch), and what each further request adds, both in ms; (0, 0) before
        the model is measured. O(1): the native transport asks before its bursts."""
        work = self._queued_work(model, now)
        if work is None:
            return 0.0, 0.0
        limit, full_batch_ns, queued, free_in_ns = work
        batch_ns = full_batch_ns + self.server_ns(limit)
        ahead_ns = free_in_ns + (queued // limit) * batch_ns
        return max(0.0, ahead_ns) / 1e6, batch_ns / limit / 1e6

    def _backlog_ms(self, model: str, now: int) -> int:
        """When the work ahead on ``model`` should have cleared, in whole ms from now
        (0: not measured yet). O(1): sheds are frequent exactly when the queue is long."""
        work = self._queued_work(model, now)
        if work is None:
            return 0
        limit, full_batch_ns, queued, free_in_ns = work
        batches = -(-queued // limit)
        return max(1, math.ceil((free_in_ns + batches * full_batch_ns) / 1e6))

    # --- limits -------------------------------------------------------------------

    def set_model_limits(
        self, model_id: str, max_batch_size: Optional[int] = None, concurrency: Optional[int] = None
    ) -> None:
        if max_batch_size is not None:
            if max_batch_size < 1:
                raise ValueError("max_batch_size must be >= 1")
            self._batch_limits[model_id] = int(max_batch_size)
        if concurrency is not None:
            if concurrency < 1:
                raise ValueError("concurrency must be >= 1")
            self._concurrency[model_id] = int(concurrency)

    def max_batch_size(self, model_id: str) -> int:
        return self._batch_limits.get(model_id, self.config.max_batch_size)

    # --- inspection and hand-over -------------------------------------------------

    def queue_len(self) -> int:
        return len(self._queued)

    def status(self) -> dict:
        depth: Counter[str] = Counter()
        for pools in (self._normal, self._late):
            for model, queue in pools.items():
                depth[model] += len(queue)
        return {
            "strategy": self.strategy_name,
            "queue_len": len(self._queued),
            "max_queue_size": self.config.max_queue_size,
            "models": dict(depth),
            "deprioritized": sum(len(q) for q in self._late.values()),
            "clients": len(self._by_client),
            "shed": {status.name: self.shed_counts[status] for status in SHED_STATUSES},
            "coalesce": self.coalesce,
            "admission": self.config.admission,
            "server_lag_ms": round(self._lag_ns / 1e6, 3),
            "server_reply_ms": round(self._reply_ns / 1e6, 4),
            "open_loop_streams": len(self._open_loop),
        }

    def drain(self) -> list[InferenceRequest]:
        """Remove and return everything queued, oldest first (nothing is shed)."""
        out = sorted(self._queued.values(), key=arrival_order)
        for pools in (self._queued, self._normal, self._late, self._by_client, self._by_owner, self._latest):
            pools.clear()
        self._expiry.clear()
        return out

    def cancel_client(self, client_id: str) -> list[InferenceRequest]:
        """Remove and return a robot's queued requests, oldest first (the server
        answers them CANCELLED)."""
        out = sorted(self._by_client.get(client_id, {}).values(), key=arrival_order)
        for r in out:
            self._remove(r)
        return out

    # --- bookkeeping --------------------------------------------------------------

    def _insert(self, request: InferenceRequest, late: bool) -> None:
        seq = request.seq
        request.deprioritized = late
        self._queued[seq] = request
        (self._late if late else self._normal).setdefault(request.model_id, {})[seq] = request
        self._by_client.setdefault(request.client_id, {})[seq] = request
        self._by_owner.setdefault((request.client_id, request.identity), {})[seq] = request
        if self.coalesce:
            self._latest[request.stream] = request
        heapq.heappush(self._expiry, (request.arrival_ns + self._ttl_ns, seq, request))
        if len(self._expiry) > 2 * len(self._queued) + 64:
            self._expiry = [e for e in self._expiry if self._queued.get(e[1]) is e[2]]
            heapq.heapify(self._expiry)

    def _remove(self, request: InferenceRequest) -> None:
        seq = request.seq
        if self._queued.pop(seq, None) is None:
            return
        _discard(self._late if request.deprioritized else self._normal, request.model_id, seq)
        _discard(self._by_client, request.client_id, seq)
        _discard(self._by_owner, (request.client_id, request.identity), seq)
        if self._latest.get(request.stream) is request:
            del self._latest[request.stream]

    def _deprioritize(self, request: InferenceRequest) -> None:
        if request.deprioritized:
            return
        _discard(self._normal, request.model_id, request.seq)
        request.deprioritized = True
        self._late.setdefault(request.model_id, {})[request.seq] = request

    def _shed(self, request: InferenceRequest, status: Status, reason: str, now: int) -> None:
        self._remove(request)
        request.refresh(now)
        if status in _HINTED:
            request.retry_after_ms = self._backlog_ms(request.model_id, now)
        self.shed_counts[status] += 1
        self.on_shed(request, status, reason)


def _discard(index: dict[Any, dict[int, InferenceRequest]], key: Any, seq: int) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(seq, None)
        if not bucket:
            del index[key]
