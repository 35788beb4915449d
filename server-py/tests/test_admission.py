"""Admission on a fake clock: observation + registry + clock -> request or rejection."""

from __future__ import annotations

from inferential._proto import inferential_pb2 as pb
from inferential.config.schema import InferentialConfig
from inferential.scheduler import InferenceRequest
from inferential.server.admission import admit
from inferential.server.protocol import Decoded, Rejection
from inferential.server.registry import ClientRegistry
from inferential.wire import Status

MS = 1_000_000
WALL0 = 1_700_000_000_000_000_000  # any wall clock: admission only uses differences
MODELS = {"policy"}


def _registry(config: InferentialConfig) -> ClientRegistry:
    return ClientRegistry(config.clients, config.auth, 0.2, 5.0)


def _decoded(model: str = "policy", timestamp_ns: int = 0, budget_ms: float = 0.0, token: str = "") -> Decoded:
    obs = pb.Observation(
        model_id=model, request_id=7, timestamp_ns=timestamp_ns, latency_budget_ms=budget_ms, auth_token=token
    )
    obs.client.id = "r1"
    obs.client.type = "arm"
    return Decoded(obs=obs, inputs={"x": 1}, payload_bytes=12)


def test_an_accepted_observation_becomes_a_request_dated_and_deadlined_on_the_server_clock():
    config = InferentialConfig()
    registry = _registry(config)
    now = 5_000 * MS
    req = admit(_decoded(budget_ms=40.0), b"id1", registry, MODELS, config.scheduling, now, WALL0)
    assert isinstance(req, InferenceRequest)
    assert (req.client_id, req.model_id, req.request_id, req.identity) == ("r1", "policy", 7, b"id1")
    assert req.arrival_ns == now and req.latency_budget_ms == 40.0
    margin_ns = int(config.scheduling.deadline_margin_ms * MS)
    assert req.deadline_ns == now + 40 * MS - margin_ns
    assert req.labels == {"client": "r1", "model": "policy"}
    assert "r1" in registry.robots and b"id1" in registry.robots["r1"].identities


def test_time_spent_in_socket_buffers_moves_the_arrival_back_and_past_the_ttl_expires():
    config = InferentialConfig()
    registry = _registry(config)
    now = 5_000 * MS
    # The first observation sets the robot's clock offset (here 0: read as soon as sent).
    first = admit(_decoded(timestamp_ns=WALL0), b"id1", registry, MODELS, config.scheduling, now, WALL0)
    assert isinstance(first, InferenceRequest) and first.arrival_ns == now
    # One read 3 ms after it was sent waited 3 ms in buffers.
    sent = WALL0 + 10 * MS
    late = admit(_decoded(timestamp_ns=sent), b"id1", registry, MODELS, config.scheduling, now + 13 * MS, sent + 3 * MS)
    assert isinstance(late, InferenceRequest) and late.arrival_ns == now + 10 * MS
    ttl_ms = config.scheduling.request_ttl_ms
    stale = admit(
        _decoded(timestamp_ns=sent), b"id1", registry, MODELS, config.scheduling, now, sent + int((ttl_ms + 1) * MS)
    )
    assert isinstance(stale, Rejection) and stale.status == Status.EXPIRED


def test_with_admission_reject_an_observation_that_waited_past_its_budget_is_unmeetable():
    config = InferentialConfig()
    config.scheduling.admission = "reject"
    registry = _registry(config)
    admit(_decoded(timestamp_ns=WALL0), b"id1", registry, MODELS, config.scheduling, 0, WALL0)
    waited_ms = 25.0
    assert waited_ms < config.scheduling.request_ttl_ms
    rej = admit(
        _decoded(timestamp_ns=WALL0, budget_ms=waited_ms - 5),
        b"id1",
        registry,
        MODELS,
        config.scheduling,
        0,
        WALL0 + int(waited_ms * MS),
    )
    assert isinstance(rej, Rejection) and rej.status == Status.DEADLINE_UNMEETABLE
    # Refused, it still counts in the robot's cadence: one sent 100 ms after the first, read
    # 25 ms later, arrived 100 ms after it.
    sent = WALL0 + 100 * MS
    late = _decoded(timestamp_ns=sent, budget_ms=waited_ms - 5)
    rej = admit(late, b"id1", registry, MODELS, config.scheduling, 125 * MS, sent + int(waited_ms * MS))
    assert isinstance(rej, Rejection) and rej.status == Status.DEADLINE_UNMEETABLE
    cadence = registry.robots["r1"].cadences[("policy", b"id1")]
    assert cadence.ema_interval_ms == 100.0 and cadence.last_arrival_ns == 100 * MS
    # The same wait for a chunk request (it states its control rate): a late chunk still ends
    # the robot's hold, so it is admitted (dated from when it arrived) rather than refused.
    chunk = _decoded(timestamp_ns=WALL0, budget_ms=waited_ms - 5)
    chunk.obs.control_rate_hz = 50.0
    chunk.obs.actions_remaining = 0
    req = admit(chunk, b"id1", registry, MODELS, config.scheduling, 0, WALL0 + int(waited_ms * MS))
    assert isinstance(req, InferenceRequest) and req.chunked and req.arrival_ns == -int(waited_ms * MS)


def test_unknown_models_and_wrong_tokens_are_rejected_without_registering_the_robot():
    config = InferentialConfig()
    config.auth.token = "secret"
    registry = _registry(config)
    wrong = admit(_decoded(token="guess"), b"id1", registry, MODELS, config.scheduling, 0, WALL0)
    assert isinstance(wrong, Rejection) and wrong.status == Status.UNAUTHENTICATED
    unknown = admit(_decoded(model="other", token="secret"), b"id1", registry, MODELS, config.scheduling, 0, WALL0)
    assert isinstance(unknown, Rejection) and unknown.status == Status.UNKNOWN_MODEL
    assert "policy" in unknown.message
    assert registry.robots == {}
    ok = admit(_decoded(token="secret"), b"id1", registry, MODELS, config.scheduling, 0, WALL0)
    assert isinstance(ok, InferenceRequest)


def test_a_forged_timestamp_on_another_connection_does_not_move_the_victims_baseline():
    config = InferentialConfig()
    config.scheduling.admission = "reject"
    registry = _registry(config)
    sched = config.scheduling
    assert isinstance(
        admit(_decoded(timestamp_ns=WALL0), b"victim", registry, MODELS, sched, 0, WALL0), InferenceRequest
    )
    # Same client.id, another connection, a timestamp 10 s in the future: without a
    # measured bound at all (None), only the forger's own baseline moves.
    admit(_decoded(timestamp_ns=WALL0 + 10_000 * MS), b"forger", registry, MODELS, sched, MS, WALL0 + MS)
    later = admit(
        _decoded(timestamp_ns=WALL0 + 2 * MS, budget_ms=5.0), b"victim", registry, MODELS, sched, 2 * MS, WALL0 + 2 * MS
    )
    assert isinstance(later, InferenceRequest) and later.arrival_ns == 2 * MS


def test_a_claimed_wait_is_never_believed_beyond_the_measured_backlog():
    config = InferentialConfig()
    config.scheduling.admission = "reject"
    registry = _registry(config)
    sched = config.scheduling
    admit(_decoded(timestamp_ns=WALL0), b"id1", registry, MODELS, sched, 0, WALL0, backlog_ns=0)
    # The robot's clock stepped back 1 s: its timestamps claim 1 s of waiting, the
    # transport measured at most 1 ms of backlog.
    t = 100 * MS
    stepped = admit(
        _decoded(timestamp_ns=WALL0 + t - 1000 * MS, budget_ms=20.0), b"id1", registry, MODELS, sched, t, WALL0 + t, MS
    )
    assert isinstance(stepped, InferenceRequest) and stepped.arrival_ns == t - MS
    # ... and the baseline was raised to fit: the next one is not charged the step either.
    t2 = 150 * MS
    nxt = admit(_decoded(timestamp_ns=WALL0 + t2 - 1000 * MS), b"id1", registry, MODELS, sched, t2, WALL0 + t2, None)
    assert isinstance(nxt, InferenceRequest) and nxt.arrival_ns >= t2 - MS
    # A measured backlog is believed: 30 ms claimed and 50 ms possible is 30 ms waited.
    t3 = 200 * MS
    late = admit(
        _decoded(timestamp_ns=WALL0 + t3 - 1030 * MS, budget_ms=20.0),
        b"id1",
        registry,
        MODELS,
        sched,
        t3,
        WALL0 + t3,
        50 * MS,
    )
    assert isinstance(late, Rejection) and late.status == Status.DEADLINE_UNMEETABLE


def test_buffer_wait_state_is_bounded_and_forgotten_with_the_robot():
    config = InferentialConfig()
    registry = _registry(config)
    registry.MAX_WAITS = 100
    for i in range(1000):
        admit(_decoded(timestamp_ns=WALL0), f"c{i}".encode(), registry, MODELS, config.scheduling, i, WALL0)
    assert len(registry._waits) == 100
    registry.unregister("r1")
    assert len(registry._waits) == 0
