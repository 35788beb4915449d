"""The built-in strategies. Each only decides which batch goes next; the queue
mechanics live in :class:`~inferential.scheduler.queued.QueuedScheduler`."""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable, Mapping, Optional

from inferential.config.schema import SchedulingConfig
from inferential.scheduler.deadlines import effective_deadline_ns
from inferential.scheduler.interface import Clock, Policy
from inferential.scheduler.queued import QueuedScheduler, View, arrival_order
from inferential.scheduler.registry import get_policy, register_scheduler
from inferential.scheduler.request import InferenceRequest


def _best_model_batch(
    view: View, key: Callable[[InferenceRequest], Any], limit_of: Callable[[str], int]
) -> list[InferenceRequest]:
    """The request with the smallest ``key``, then the next smallest of its model."""
    top = min((min(queue.values(), key=key) for queue in view.values()), key=key)
    return heapq.nsmallest(limit_of(top.model_id), view[top.model_id].values(), key=key)


@register_scheduler("fifo")
class FifoScheduler(QueuedScheduler):
    """Oldest first; the batch is the oldest request and the next oldest of its model."""

    def _select(self, view: View, now_ns: int) -> list[InferenceRequest]:
        return _best_model_batch(view, arrival_order, self.max_batch_size)


@register_scheduler("priority_tiered")
class PriorityTieredScheduler(QueuedScheduler):
    """Strict tiers by priority (0 first), FIFO within a tier. A batch is filled
    from its model's best tiers first."""

    def _select(self, view: View, now_ns: int) -> list[InferenceRequest]:
        return _best_model_batch(view, _tier_order, self.max_batch_size)


def _tier_order(request: InferenceRequest) -> tuple[int, int, int]:
    return (request.priority, request.arrival_ns, request.seq)


@register_scheduler("round_robin")
class RoundRobinScheduler(QueuedScheduler):
    """Fair rotation across robots: the robot served least recently goes first,
    and a batch takes one request per robot per round (each robot's oldest)."""

    def __init__(self, config: Optional[SchedulingConfig] = None, *, clock: Optional[Clock] = None) -> None:
        super().__init__(config, clock=clock)
        self._served = 0
        # When each robot was last served (a serial number); never served = first.
        # Robots with nothing queued are forgotten once the table outgrows the
        # queue, which only bounds memory: they would be first in line anyway.
        self._last_served: dict[str, int] = {}

    def _select(self, view: View, now_ns: int) -> list[InferenceRequest]:
        per_client: dict[str, list[InferenceRequest]] = {}
        for queue in view.values():
            for r in queue.values():
                per_client.setdefault(r.client_id, []).append(r)
        for requests in per_client.values():
            requests.sort(key=arrival_order)
        rotation = sorted(per_client, key=lambda c: (self._last_served.get(c, -1), arrival_order(per_client[c][0])))
        model = per_client[rotation[0]][0].model_id
        limit = self.max_batch_size(model)
        lanes = [[r for r in per_client[c] if r.model_id == model] for c in rotation]
        batch: list[InferenceRequest] = []
        depth = 0
        while len(batch) < limit:
            round_ = [lane[depth] for lane in lanes if depth < len(lane)]
            if not round_:
                break
            batch.extend(round_[: limit - len(batch)])
            depth += 1
        return batch

    def _dispatched(self, batch: list[InferenceRequest], now_ns: int) -> None:
        for r in batch:
            self._served += 1
            self._last_served[r.client_id] = self._served
        if len(self._last_served) > 2 * len(self._by_client) + 64:
            self._last_served = {c: n for c, n in self._last_served.items() if c in self._by_client}


@register_scheduler("batch_optimized")
class BatchOptimizedScheduler(QueuedScheduler):
    """Per model, wait until ``max_batch_size`` requests are queued or the oldest
    has waited ``max_wait_ms``, then send them as one batch, oldest first."""

    def _select(self, view: View, now_ns: int) -> list[InferenceRequest]:
        wait_ns = int(self.config.max_wait_ms * 1e6)
        due: list[tuple[tuple[int, int], str]] = []
        for model, queue in view.items():
            oldest = min(queue.values(), key=arrival_order)
            if len(queue) >= self.max_batch_size(model) or now_ns - oldest.arrival_ns >= wait_ns:
                due.append((arrival_order(oldest), model))
        if not due:
            return []
        model = min(due)[1]
        return heapq.nsmallest(self.max_batch_size(model), view[model].values(), key=arrival_order)

    def _wakeup_after(self, now_ns: int) -> Optional[int]:
        wait_ns = int(self.config.max_wait_ms * 1e6)
        times = []
        for model, queue in self._view(None).items():
            if len(queue) < self.max_batch_size(model):
                flush = min(r.arrival_ns for r in queue.values()) + wait_ns
                if flush > now_ns:
                    times.append(flush)
        return min(times, default=None)


@register_scheduler("deadline_aware")
class DeadlineAwareScheduler(QueuedScheduler):
    """Highest score first; the batch is the top request plus the next best of its model.

    score = cadence_weight * cadence + urgency_weight * urgency + age_weight * age
          + steps_weight * steps + priority_weight * priority, each factor in [0, 1]
    and computed when the batch is chosen (:func:`score_factors`). A policy named
    by ``config.policy`` (``@register_policy``) replaces the weighted sum.
    """

    scores_requests = True

    def __init__(self, config: Optional[SchedulingConfig] = None, *, clock: Optional[Clock] = None) -> None:
        super().__init__(config, clock=clock)
        self.policy: Policy = get_policy(self.config.policy) if self.config.policy else self.weighted_score

    def weighted_score(self, request: InferenceRequest) -> float:
        c = self.config
        cadence, urgency, age, steps, priority = score_factors(request, c.max_priority, c.request_ttl_ms)
        return (
            c.cadence_weight * cadence
            + c.urgency_weight * urgency
            + c.age_weight * age
            + c.steps_weight * steps
            + c.priority_weight * priority
        )

    def _select(self, view: View, now_ns: int) -> list[InferenceRequest]:
        scored = {r.seq: _finite(self.policy(r)) for queue in view.values() for r in queue.values()}

        def rank(r: InferenceRequest) -> tuple[float, int]:
            return (-scored[r.seq], r.seq)

        return _best_model_batch(view, rank, self.max_batch_size)


def _finite(score: float) -> float:
    """A policy's NaN would make the ranking arbitrary: it ranks last instead."""
    score = float(score)
    return -math.inf if math.isnan(score) else score


def score_factors(
    request: InferenceRequest, max_priority: int, ttl_ms: float
) -> tuple[float, float, float, float, float]:
    """(cadence, urgency, age, steps, priority), each in [0, 1], from the
    request's live fields (call ``request.refresh(now)`` first).

    - cadence: how overdue the robot is against its own interval EMA.
    - age: time waited over the request's time allowance (deadline - arrival,
      else its latency budget, else the TTL), saturating at 1.
    - steps: 1 / (1 + steps_remaining / 2): 1 at the end of a trajectory; 0 when unknown.
    - priority: 1 - priority / max_priority (priority 0 is the highest).
    """
    if request.deadline_ns is not None and request.deadline_ns > request.arrival_ns:
        allowance_ms = (request.deadline_ns - request.arrival_ns) / 1e6
    elif request.latency_budget_ms > 0:
        allowance_ms = request.latency_budget_ms
    else:
        allowance_ms = ttl_ms
    age = min(1.0, request.age_ms / allowance_ms)
    steps = 0.0 if request.steps_remaining is None else 1.0 / (1.0 + max(0, request.steps_remaining) / 2.0)
    priority = 1.0 - request.priority / max_priority if max_priority > 0 else 1.0
    return (request.cadence_lateness, request.urgency, age, steps, priority)


@register_scheduler("edf")
class EdfScheduler(QueuedScheduler):
    """Earliest deadline first, by latest start time: ``deadline - estimated
    service time`` (:func:`~inferential.scheduler.deadlines.effective_deadline_ns`
    when a request has no deadline).

    The earliest request leads the batch; the rest of the batch is filled with
    its model's requests by priority, then deadline. The batch grows only while
    it still finishes before every deadline in it that can still be met. It also
    leaves room for better-priority work that will be waiting when it ends
    (queued now, or due by the robots' cadence): the batch is cut until that work,
    run right after it, still meets its deadlines. A batch cannot be interrupted,
    so waiting behind one is the critical robots' main risk.
    Coalesces by default: a robot's newest observation is the one worth answering.
    """

    coalesce_by_default = True
    #: extra planning margins for priority 0 in batch sizing (see _batch_size)
    CRITICAL_MARGIN = 1

    def __init__(self, config: Optional[SchedulingConfig] = None, *, clock: Optional[Clock] = None) -> None:
        super().__init__(config, clock=clock)
        # Per (robot, model): (next arrival, interval, deadline after arrival, priority), all ns.
        self._expected: dict[tuple[str, str], tuple[int, int, int, int]] = {}

    def _arrived(self, request: InferenceRequest) -> None:
        interval_ms = request.expected_interval_ms or request.since_previous_ms
        if not interval_ms or request.deadline_ns is None:
            self._expected.pop(request.key, None)
            return
        interval = int(interval_ms * 1e6)
        window = request.deadline_ns - request.arrival_ns
        self._expected[request.key] = (request.arrival_ns + interval, interval, window, request.priority)

    def _select(self, view: View, now_ns: int) -> list[InferenceRequest]:
        if len(view) == 1:
            (queue,) = view.values()
            if len(queue) == 1:
                # One request waiting, the usual case below saturation: it is the batch
                # (what follows would find it the head and a batch of one needs no sizing).
                return list(queue.values())
        alone_ns = {m: (self.estimate_service_ms(m, 1) or 0.0) * 1e6 for m in view}

        def latest_start(r: InferenceRequest) -> tuple[float, int]:
            return (effective_deadline_ns(r) - alone_ns[r.model_id], r.seq)

        head = min((min(queue.values(), key=latest_start) for queue in view.values()), key=latest_start)
        queue = view[head.model_id]

        def fill_order(r: InferenceRequest) -> tuple[int, float, int]:
            return (r.priority, *latest_start(r))

        others = (r for r in queue.values() if r is not head)
        candidates = [head] + heapq.nsmallest(self.max_batch_size(head.model_id) - 1, others, key=fill_order)
        size = self._batch_size(candidates, now_ns)
        return candidates[: self._leave_room(candidates, size, queue, now_ns)]

    def _batch_size(self, candidates: list[InferenceRequest], now_ns: int) -> int:
        """Largest prefix of ``candidates`` that finishes before every deadline in
        it that one request alone could still meet."""
        model = candidates[0].model_id
        alone = self.estimate_service_ms(model, 1)
        if alone is None:
            return len(candidates)
        earliest_meetable = now_ns + alone * 1e6 + self.server_ns(1)
        # The top priority (0) gets twice the planning margin: a batch that runs a little
        # long costs those robots a late action, the others only a smaller batch.
        extra = self._margin_ns(model) * self.CRITICAL_MARGIN
        deadlines = [effective_deadline_ns(r) - (extra if r.priority == 0 else 0) for r in candidates]
        for size in range(len(candidates), 1, -1):
            # The server's own time counts too: the last reply of the batch goes out last.
            finish = now_ns + self.estimate_service_ms(model, size) * 1e6 + self.server_ns(size)  # type: ignore[operator]
            if all(d >= finish for d in deadlines[:size] if d >= earliest_meetable):
                return size
        return 1

    def _leave_room(
        self, candidates: list[InferenceRequest], size: int, queued: Mapping[int, InferenceRequest], now_ns: int
    ) -> int:
        """Cut the batch until the better-priority work that will be waiting when
        it ends (queued now, or due to arrive by the robots' cadence) still meets
        its deadlines when run right after it."""
        if size <= 1:
            return size  # nothing to cut (the robots' expected arrivals are tidied on the next real batch)
        model = candidates[0].model_id
        # Only work of a better priority than the batch's worst can be cut for (and the
        # worst only improves as the batch shrinks): in a fleet of one priority nothing is.
        worst = max(r.priority for r in candidates[:size])
        expected = []  # (arrival, deadline, priority) of better-priority robots of this model
        for key, (due, interval, window, priority) in list(self._expected.items()):
            if due + interval < now_ns:  # a whole interval overdue: it stopped or slowed down
                del self._expected[key]
            elif priority < worst and key[1] == model:
                # Arrivals jitter: plan for one a tenth of an interval early.
                early = max(now_ns, due - interval // 10)
                expected.append((early, early + window, priority))
        better = [r for r in queued.values() if r.priority < worst]
        if (not expected and not better) or self.estimate_service_ms(model, 1) is None:
            return size
        while size > 1:
            worst = max(r.priority for r in candidates[:size])
            chosen = {r.seq for r in candidates[:size]}
            waiting = [(now_ns, effective_deadline_ns(r)) for r in better if r.priority < worst and r.seq not in chosen]
            waiting += [(due, deadline) for due, deadline, priority in expected if priority < worst]
            if not waiting:
                break
            finish = now_ns + self.estimate_service_ms(model, size) * 1e6 + self.server_ns(size)  # type: ignore[operator]
            if self._fits_after(model, sorted(waiting), finish):
                break
            size -= 1
        return size

    def _fits_after(self, model: str, waiting: list[tuple[int, int]], free_ns: float) -> bool:
        """Whether ``waiting`` (arrival, deadline), sorted by arrival, all meet their
        deadlines when each group that arrived while the executor was busy runs
        as one batch as soon as it is free."""
        start = 0
        while start < len(waiting) and waiting[start][0] < free_ns:
            end = start
            while end < len(waiting) and waiting[end][0] < free_ns:
                end += 1
            free_ns += self.estimate_service_ms(model, end - start) * 1e6  # type: ignore[operator]
            if free_ns > min(deadline for _, deadline in waiting[start:end]):
                return False
            start = end
        return True
