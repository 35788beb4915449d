"""Early refusal on the Python transport (server/early.py): the native module's shedding
rule, applied by admission before an observation becomes a request."""

from __future__ import annotations

from server_helpers import running_server

from inferential._proto import inferential_pb2 as pb
from inferential.config.schema import InferentialConfig
from inferential.scheduler import InferenceRequest
from inferential.server.admission import admit
from inferential.server.early import EarlyRefusal
from inferential.server.native_transport import NativeTransport
from inferential.server.protocol import Decoded, Rejection
from inferential.server.registry import ClientRegistry
from inferential.wire import Status

MS = 1_000_000
WALL0 = 1_700_000_000 * 1_000_000_000


def _obs(budget_ms: float = 20.0, model: str = "m", priority: int = 1, **fields) -> pb.Observation:
    obs = pb.Observation(model_id=model, latency_budget_ms=budget_ms, priority=priority, request_id=3, **fields)
    obs.client.id = "r1"
    return obs


class Costs:
    """Engine.shed_costs stand-in: counts how often it is read."""

    def __init__(self, **models: tuple[float, float, float, float]) -> None:
        self.models = models
        self.reads = 0

    def __call__(self) -> dict:
        self.reads += 1
        return dict(self.models)


def test_the_rule_is_the_modules() -> None:
    """Waited past budget less base: refused, whatever the priority; past budget less base
    and the work ahead: refused unless more urgent than the default; a budget under the
    model's run time alone, an absolute deadline, an action queue, a chunk request or an
    unserved model: left to the plan. The texts are the module's."""
    early = EarlyRefusal(Costs(m=(3.0, 10.0, 1.0, 2.0)), urgent_below=1)
    assert early.judge(_obs(), 20.0, 1, 6 * MS, 0) is None  # 6 + 3 + 10 = 19 <= 20
    ahead = early.judge(_obs(), 20.0, 1, 8 * MS, 0)
    assert isinstance(ahead, Rejection) and ahead.status == Status.DEADLINE_UNMEETABLE
    assert ahead.message == (
        "cannot finish before its deadline given the work queued ahead (waited 8 ms before the "
        "server could read it, about 13 ms more to serve it, budget is 20 ms)"
    )
    assert early.judge(_obs(priority=0), 20.0, 0, 8 * MS, 0) is None  # urgent: base only
    base = early.judge(_obs(priority=0), 20.0, 0, 18 * MS, 0)
    assert isinstance(base, Rejection) and base.message == (
        "waited 18 ms before the server could read it and serving it takes about 3 ms more, budget is 20 ms"
    )
    assert early.judge(_obs(), 1.5, 1, 18 * MS, 0) is None  # under the floor (2 ms): the plan's
    assert early.judge(_obs(control_rate_hz=50.0), 20.0, 1, 18 * MS, 0) is None
    assert early.judge(_obs(deadline_ns=5), 20.0, 1, 18 * MS, 0) is None
    assert early.judge(_obs(actions_remaining=0), 20.0, 1, 18 * MS, 0) is None
    assert early.judge(_obs(model="other"), 20.0, 1, 18 * MS, 0) is None
    assert early.refused == 2


def test_costs_are_read_at_most_once_per_millisecond_and_grow_with_each_admitted() -> None:
    costs = Costs(m=(1.0, 0.0, 4.0, 0.0))
    early = EarlyRefusal(costs, urgent_below=1)
    assert early.judge(_obs(), 20.0, 1, 10 * MS, 0) is None  # 10 + 1 + 0
    early.queued("m")
    early.queued("m")  # 8 ms of work ahead now
    assert isinstance(early.judge(_obs(), 20.0, 1, 12 * MS, MS // 2), Rejection)  # 12 + 1 + 8 > 20
    assert costs.reads == 1
    assert early.judge(_obs(), 20.0, 1, 12 * MS, MS) is None  # read again: the plan's 0 ahead
    assert costs.reads == 2


def test_a_model_with_no_batch_for_a_second_lets_one_observation_through_each_second() -> None:
    """Refusals teach the estimates nothing: with no batch of the model for a second (the
    scheduler's PROBE_NS), the observation about to be refused goes to the plan instead,
    one per second, so an estimate that came out too high once cannot refuse everything
    for good. Without a scheduler that says when it last ran a batch: no probes."""
    sec = 1_000_000_000
    last = {"m": 10 * sec}
    early = EarlyRefusal(Costs(m=(30.0, 0.0, 1.0, 2.0)), urgent_below=1, last_run=lambda model: last.get(model))
    assert isinstance(early.judge(_obs(), 20.0, 1, 0, 10 * sec + sec // 2), Rejection)  # ran half a second ago
    assert early.judge(_obs(), 20.0, 1, 0, 11 * sec) is None  # a second without a batch: a probe
    assert isinstance(early.judge(_obs(), 20.0, 1, 0, 11 * sec + 1), Rejection)  # one per second
    assert isinstance(early.judge(_obs(), 20.0, 1, 0, 12 * sec - 1), Rejection)
    assert early.judge(_obs(), 20.0, 1, 0, 12 * sec) is None
    last["m"] = 12 * sec + 5  # the probe ran: the next waits a second from it
    assert isinstance(early.judge(_obs(), 20.0, 1, 0, 13 * sec), Rejection)
    assert early.judge(_obs(), 20.0, 1, 0, 13 * sec + 5) is None
    assert early.refused == 4
    no_probes = EarlyRefusal(Costs(m=(30.0, 0.0, 1.0, 2.0)), urgent_below=1, last_run=lambda model: None)
    assert isinstance(no_probes.judge(_obs(), 20.0, 1, 0, 100 * sec), Rejection)


def test_stream_budgets_are_bounded() -> None:
    early = EarlyRefusal(Costs(), urgent_below=1)
    early.MAX_STREAMS = 2
    for client in ("a", "b", "c"):
        early.note_budget(client, client.encode(), "m", 18.0)
    early.note_budget("b", b"b", "m", 9.0)
    assert early.stream_budget("a", b"a", "m") is None
    assert early.stream_budget("b", b"b", "m") == 9.0 and early.stream_budget("c", b"c", "m") == 18.0


def test_admission_applies_it_before_building_a_request() -> None:
    """A robot that states no budget is judged by its stream's (else the default 50 ms); one
    admitted adds its model's per-item cost to the work ahead of the next."""
    config = InferentialConfig()
    registry = ClientRegistry(config.clients, config.auth, 0.2, 5.0)
    early = EarlyRefusal(Costs(m=(2.0, 0.0, 5.0, 0.0)), urgent_below=1)

    def run(obs: pb.Observation, sent_ms: float, read_ms: float) -> object:
        obs.timestamp_ns = WALL0 + int(sent_ms * MS)
        decoded = Decoded(obs=obs, inputs={}, payload_bytes=0)
        # The monotonic clock stays within the millisecond the costs were read in.
        return admit(decoded, b"id", registry, {"m"}, config.scheduling, 0, WALL0 + int(read_ms * MS), None, early)

    # The first observation sets the connection's clock offset: it waited 0 ms.
    assert isinstance(run(_obs(budget_ms=0.0), 0, 0), InferenceRequest)  # admitted: 5 ms ahead now
    early.note_budget("r1", b"id", "m", 18.0)  # as the server does after the scheduler's tightening
    refused = run(_obs(budget_ms=0.0), 100, 112)  # waited 12 ms
    assert isinstance(refused, Rejection) and refused.message == (
        "cannot finish before its deadline given the work queued ahead (waited 12 ms before the "
        "server could read it, about 7 ms more to serve it, budget is 18 ms)"
    )
    assert isinstance(run(_obs(budget_ms=40.0), 200, 212), InferenceRequest)  # 12 + 2 + 5 <= 40


def test_a_server_on_the_python_transport_applies_it_by_default() -> None:
    with running_server(transport={"bind": "tcp://127.0.0.1:0", "native": "off"}) as (server, _):
        assert not isinstance(server._transport, NativeTransport)
        assert server._early is not None and server._note_budget == server._early.note_budget
    off = {"bind": "tcp://127.0.0.1:0", "native": "off", "native_shedding": False}
    with running_server(transport=off) as (server, _):
        assert server._early is None
    with running_server(transport={"bind": "tcp://127.0.0.1:0", "native": "off"}, scheduling={"admission": "off"}) as (
        server,
        _,
    ):
        assert server._early is None
