"""Early refusal on the Python transport: the native module's rule, judged in admission.

On the native transport the module refuses, as it takes observations off its queue, what
has already waited too long to be answered in time (server-native ``ShedPolicy``,
``NativeTransport.set_shedding``). Without the module, the same observations would each
become a request and be refused by the scheduler's plan, at nearly the cost of serving
one: under CPU overload the event loop spends itself refusing, its socket backlog grows,
and everything it reads is too old (the refusal storm of docs/performance.md). This is the
same rule, with the same costs (``Engine.shed_costs``) and error texts, applied by
:func:`admission.admit` before a request is built: an observation that has waited (in
socket buffers, as admission measures it) longer than its budget less ``base`` is refused,
and one of the default priority or lower also when it would finish past its budget behind
the work queued ahead (``ahead``, which grows by ``per_item`` with each request admitted
until the costs are read again, at most once per ``COSTS_EVERY_NS``).

Refusals teach the estimates nothing (only runs do), and refusing costs this loop a
request's worth of Python: a model whose estimate came out too high once (its completions
slowed by a loop busy refusing, say) could have every observation refused here for good,
the loop kept busy by the refusals themselves (robots that send again at once). So, as the
scheduler's admission does (``PROBE_NS``), a model with no batch for a second lets one
observation through to the plan, which runs it as its probe and learns from its time.

What it cannot decide as the plan would is left to the plan: an absolute deadline, an
action queue, a chunk request, a budget shorter than the model's run time alone. A robot
that states no budget is judged by the one the scheduler gave its stream's last
observation (``note_budget``, as the native transport is told), else the default.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

from inferential._proto import inferential_pb2 as pb
from inferential.scheduler.queued import PROBE_NS
from inferential.server.protocol import Rejection
from inferential.wire import Status

#: (base ms, ahead ms, per item ms, floor ms) per model: ``Engine.shed_costs``
Costs = dict[str, tuple[float, float, float, float]]
#: a stream of observations: (robot id, connection identity, model)
StreamKey = tuple[str, bytes, str]


def remember_budget(
    budgets: OrderedDict[StreamKey, float], key: StreamKey, budget_ms: float, limit: int, step: float = 0.0
) -> tuple[bool, Optional[StreamKey]]:
    """Keep ``budget_ms`` as ``key``'s budget unless the one kept is within ``step`` (a
    fraction of it); a new stream beyond ``limit`` forgets the oldest kept. Returns whether
    it was kept and the stream forgotten, if any (the native transport tells its module
    both; ``EarlyRefusal`` keeps its own)."""
    before = budgets.get(key)
    if before is not None and abs(budget_ms - before) <= step * before:
        return False, None
    budgets[key] = budget_ms
    if before is None and len(budgets) > limit:
        old, _ = budgets.popitem(last=False)
        return True, old
    return True, None


class EarlyRefusal:
    """The module's shedding rule for admission on the Python transport (see the module)."""

    #: the engine's costs are read at most this often; in between, ``ahead`` grows by
    #: ``per_item`` with each request admitted (as the module does)
    COSTS_EVERY_NS = 1_000_000
    #: streams whose budget is kept (the oldest noted is forgotten first)
    MAX_STREAMS = 4096

    def __init__(
        self, costs: Callable[[], Costs], urgent_below: int, last_run: Optional[Callable[[str], Optional[int]]] = None
    ) -> None:
        """``last_run(model)``: when the scheduler last handed out a batch of it (None, or
        no ``last_run``: no probes)."""
        self._costs_of = costs
        self.urgent_below = urgent_below
        self._last_run = last_run
        self._probed: dict[str, int] = {}
        self._costs: dict[str, list[float]] = {}
        self._costs_at: Optional[int] = None
        self._budgets: OrderedDict[StreamKey, float] = OrderedDict()
        #: observations refused here
        self.refused = 0

    def note_budget(self, client_id: str, identity: bytes, model_id: str, budget_ms: float) -> None:
        """The budget the scheduler gave an observation that stated none: the stream's next
        ones are judged by it."""
        remember_budget(self._budgets, (client_id, identity, model_id), budget_ms, self.MAX_STREAMS)

    def stream_budget(self, client_id: str, identity: bytes, model_id: str) -> Optional[float]:
        return self._budgets.get((client_id, identity, model_id))

    def _cost(self, model: str, now_ns: int) -> Optional[list[float]]:
        if self._costs_at is None or now_ns - self._costs_at >= self.COSTS_EVERY_NS:
            self._costs_at = now_ns
            self._costs = {m: list(c) for m, c in self._costs_of().items()}
        return self._costs.get(model)

    def _probe(self, model: str, now_ns: int) -> bool:
        """True (once per ``PROBE_NS``) when ``model`` has had no batch for that long: the
        observation about to be refused goes to the plan instead."""
        last_run = self._last_run(model) if self._last_run is not None else None
        if last_run is None:
            return False
        if now_ns - max(last_run, self._probed.get(model, 0)) < PROBE_NS:
            return False
        self._probed[model] = now_ns
        return True

    def queued(self, model: str) -> None:
        """A request of ``model`` was admitted: work ahead of the next one."""
        cost = self._costs.get(model)
        if cost is not None:
            cost[1] += cost[2]

    def judge(
        self, obs: pb.Observation, budget_ms: float, priority: int, waited_ns: int, now_ns: int
    ) -> Optional[Rejection]:
        """The refusal of ``obs`` (its budget ``budget_ms``, its priority as it will run,
        ``waited_ns`` in buffers before it was read), or None: the plan judges it."""
        if obs.control_rate_hz > 0 or obs.deadline_ns or obs.HasField("actions_remaining"):
            return None
        cost = self._cost(obs.model_id, now_ns)
        if cost is None:
            return None
        base, ahead, _, floor = cost
        if budget_ms < floor:
            return None  # late even on an idle server: the plan runs it after the rest
        waited_ms = waited_ns / 1e6
        late = waited_ms + base > budget_ms
        behind = priority >= self.urgent_below and waited_ms + base + ahead > budget_ms
        if not (late or behind) or self._probe(obs.model_id, now_ns):
            return None
        self.refused += 1
        if late:
            why = (
                f"waited {waited_ms:.0f} ms before the server could read it and serving it "
                f"takes about {base:.0f} ms more, budget is {budget_ms:.0f} ms"
            )
        else:
            why = (
                f"cannot finish before its deadline given the work queued ahead (waited "
                f"{waited_ms:.0f} ms before the server could read it, about {base + ahead:.0f} ms "
                f"more to serve it, budget is {budget_ms:.0f} ms)"
            )
        return Rejection(Status.DEADLINE_UNMEETABLE, why, obs)
