"""The ledger answers each request once and reports peers it cannot reach."""

from __future__ import annotations

from typing import Any, Optional

from inferential.config.schema import InferentialConfig
from inferential.dispatch.local import LocalBackend
from inferential.metrics.store import MetricsStore
from inferential.scheduler import InferenceRequest
from inferential.server.engine import Engine
from inferential.server.ledger import PEER_GONE, Ledger
from inferential.server.registry import ClientRegistry
from inferential.wire import Status


class RecordingTransport:
    """Stands in for the ROUTER socket: records sends, fails those to ``gone`` peers."""

    def __init__(self, gone: set[bytes]) -> None:
        self.gone = gone
        self.sent: list[list[Any]] = []

    def send(self, frames: list[Any]) -> Optional[str]:
        self.sent.append(frames)
        return PEER_GONE if frames[0] in self.gone else None


def _wired(gone: set[bytes]) -> tuple[Ledger, Engine, ClientRegistry, MetricsStore, RecordingTransport]:
    # Several requests of one robot stay queued at once: without coalescing (the default
    # strategy, edf, would supersede all but the newest).
    config = InferentialConfig.model_validate({"scheduling": {"coalesce": False}})
    now = [1_000_000_000]
    clock = lambda: now[0]  # noqa: E731
    registry = ClientRegistry(config.clients, config.auth, 0.2, 5.0)
    metrics = MetricsStore()
    ledger = Ledger(metrics, registry, clock)
    transport = RecordingTransport(gone)
    ledger.transport = transport  # type: ignore[assignment]
    engine = Engine(config, LocalBackend(config.models, {}), ledger, registry, metrics, clock)
    return ledger, engine, registry, metrics, transport


def _queued(
    ledger: Ledger, engine: Engine, registry: ClientRegistry, client: str, identity: bytes, n: int
) -> list[InferenceRequest]:
    out = []
    for i in range(n):
        registry.on_observation(client, "", "policy", identity, 1_000_000_000)
        req = InferenceRequest(
            client_id=client, model_id="policy", request_id=i, identity=identity, arrival_ns=1_000_000_000
        )
        ledger.pending[req.seq] = req
        engine.scheduler.submit(req)  # as the server's receive step does
        out.append(req)
    return out


def test_a_second_answer_to_the_same_request_sends_nothing():
    ledger, engine, registry, _, transport = _wired(gone=set())
    (req,) = _queued(ledger, engine, registry, "r1", b"a", 1)
    ledger.answer(req, Status.OK)
    ledger.answer(req, Status.EXPIRED, "late")
    assert len(transport.sent) == 1 and ledger.status_counts == {"OK": 1}


def test_a_gone_peer_is_reported_and_its_robots_other_requests_are_settled_without_sending_again():
    ledger, engine, registry, metrics, transport = _wired(gone={b"gone"})
    first, *rest = _queued(ledger, engine, registry, "r1", b"gone", 3)
    (other,) = _queued(ledger, engine, registry, "r2", b"alive", 1)
    ledger.answer(first, Status.OK)
    # Reported, not acted on inside the reply: the robot is still registered.
    assert ledger.gone == [b"gone"] and "r1" in registry.robots
    engine.settle_gone()
    assert "r1" not in registry.robots and "r2" in registry.robots
    assert all(r.seq not in ledger.pending for r in rest)
    assert [f[0] for f in transport.sent] == [b"gone"]  # one attempt only: no CANCELLED sent to it
    assert metrics.counter("replies_undeliverable") == 3
    assert other.seq in ledger.pending and engine.scheduler.queue_len() == 1


def test_a_robot_unregistered_for_silence_gets_its_waiting_requests_cancelled():
    ledger, engine, registry, _, transport = _wired(gone=set())
    reqs = _queued(ledger, engine, registry, "r1", b"a", 2)
    engine.unregister("r1", "silent")
    assert not ledger.pending and len(transport.sent) == len(reqs)
    assert ledger.status_counts == {"CANCELLED": len(reqs)}
