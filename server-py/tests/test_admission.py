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
