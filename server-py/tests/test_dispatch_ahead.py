"""Batches handed ahead (scheduling.dispatch_ahead_ms): the next batch waits in the
model's pool before the running one ends, and is taken back and formed again when an
observation that would change it arrives before a worker starts it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Optional

import numpy as np
from server_helpers import SentFrames, running_server, wired_engine

from inferential import Connection
from inferential.config.schema import InferentialConfig, SchedulingConfig
from inferential.dispatch.base import BACK_NS, Backend, Model, ModelInfo
from inferential.dispatch.local import LocalBackend
from inferential.scheduler import InferenceRequest, create_scheduler
from inferential.server.engine import Engine
from inferential.server.ledger import Ledger
from inferential.server.registry import ClientRegistry
from inferential.wire import Status

MS = 1_000_000


class QueueingBackend(Backend):
    """Records every submit; batches finish only when the test says so. Like the local
    backend's pool, a batch handed in while the worker is busy waits for it, and can be
    taken back until the test lets a worker "start" it."""

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def execute(self, model_id: str, batch: list[Any]) -> list[Any]:
        raise NotImplementedError

    def models(self) -> dict[str, ModelInfo]:
        return {"m": ModelInfo("m", max_batch_size=4, concurrency=1)}

    def queues_batches(self, model_id: str) -> bool:
        return True

    def submit(self, model_id: str, batch: list[Any], done: Callable[..., None]) -> Optional[Callable[[], bool]]:
        entry = {"batch": batch, "done": done, "started": False, "revoked": False}
        self.submitted.append(entry)

        def revoke() -> bool:
            if entry["started"]:
                return False
            entry["revoked"] = True
            return True

        return revoke

    def finish(self, i: int) -> None:
        entry = self.submitted[i]
        entry["started"] = True
        entry["done"]([{"actions": np.zeros(1, np.float32)} for _ in entry["batch"]], None)


def _engine(now: list[int]) -> tuple[Engine, Ledger, ClientRegistry, QueueingBackend, SentFrames]:
    config = InferentialConfig.model_validate({"scheduling": {"coalesce": False, "dispatch_ahead_ms": 2.0}})
    backend = QueueingBackend()
    engine, ledger, registry, _, sent = wired_engine(config, backend, now)
    return engine, ledger, registry, backend, sent


def _request(
    ledger: Ledger,
    engine: Engine,
    registry: ClientRegistry,
    now: int,
    robot: str,
    priority: int,
    budget_ms: float = 100.0,
) -> InferenceRequest:
    registry.on_observation(robot, "", "m", robot.encode(), now)
    req = InferenceRequest(
        client_id=robot,
        model_id="m",
        request_id=1,
        identity=robot.encode(),
        arrival_ns=now,
        priority=priority,
        deadline_ns=now + int(budget_ms * MS),
        latency_budget_ms=budget_ms,
    )
    ledger.pending[req.seq] = req
    if engine.ahead:
        engine.note_arrival(req)  # as the server's receive step does
    engine.scheduler.submit(req)
    return req


def test_the_next_batch_is_handed_ahead_and_taken_back_for_a_more_urgent_observation():
    async def scenario() -> None:
        now = [10_000 * MS]
        engine, ledger, registry, backend, sent = _engine(now)
        engine.start(asyncio.get_running_loop(), backend.models())
        for _ in range(3):  # the service-time model learns that a batch takes 10 ms
            engine.scheduler.record_service_time("m", 1, 10.0)

        first = [_request(ledger, engine, registry, now[0], f"r{i}", priority=1) for i in range(4)]
        engine.after_change()
        assert len(backend.submitted) == 1 and backend.submitted[0]["batch"] == [r.inputs for r in first]

        # Queued while the first batch runs; nothing handed ahead until 2 ms before it ends.
        slow = [_request(ledger, engine, registry, now[0] + MS, f"s{i}", priority=2) for i in range(2)]
        now[0] += MS
        engine.after_change()
        assert len(backend.submitted) == 1
        now[0] += 7 * MS + MS // 2  # 1.5 ms before the first batch's expected end
        engine.after_change()
        assert len(backend.submitted) == 2, "the next batch is handed over while the first still runs"
        assert engine.inflight["m"] == 2 and "m" in engine.ahead

        # A critical robot's observation arrives before a worker took the batch: it is taken
        # back (done never called for it) and formed again, the critical one first.
        critical = _request(ledger, engine, registry, now[0], "crit", priority=0, budget_ms=15.0)
        engine.after_change()
        assert backend.submitted[1]["revoked"]
        assert engine.revised == 1
        assert len(backend.submitted) == 3
        assert backend.submitted[2]["batch"][0] is critical.inputs
        assert {id(x) for x in backend.submitted[2]["batch"]} == {id(r.inputs) for r in [critical, *slow]}
        assert engine.inflight["m"] == 2

        backend.finish(0)
        now[0] += MS
        backend.finish(2)
        assert engine.inflight["m"] == 0 and not engine.ahead
        # Every request answered once, OK; the batch taken back sent nothing.
        assert len(sent.frames) == 7
        assert not ledger.pending

    asyncio.run(scenario())


def test_a_batch_a_worker_has_started_is_not_taken_back():
    async def scenario() -> None:
        now = [10_000 * MS]
        engine, ledger, registry, backend, sent = _engine(now)
        engine.start(asyncio.get_running_loop(), backend.models())
        for _ in range(3):
            engine.scheduler.record_service_time("m", 1, 10.0)
        for i in range(4):
            _request(ledger, engine, registry, now[0], f"r{i}", priority=1)
        engine.after_change()
        _request(ledger, engine, registry, now[0], "s0", priority=2)
        now[0] += 9 * MS
        engine.after_change()
        assert len(backend.submitted) == 2
        backend.submitted[1]["started"] = True  # a worker took it
        _request(ledger, engine, registry, now[0], "crit", priority=0)
        engine.after_change()
        assert engine.revised == 0 and not backend.submitted[1]["revoked"]
        backend.finish(0)
        backend.finish(1)
        now[0] += 10 * MS
        engine.after_change()
        backend.finish(2)
        assert len(sent.frames) == 6 and not ledger.pending

    asyncio.run(scenario())


def test_bookings_chain_and_a_batch_taken_back_releases_its_own():
    now = [10_000 * MS]
    sched = create_scheduler(SchedulingConfig(coalesce=False), clock=lambda: now[0])
    sched.set_model_limits("m", max_batch_size=1, concurrency=1)
    sched.record_service_time("m", 1, 10.0)
    for i in range(3):
        sched.submit(
            InferenceRequest(
                client_id=f"r{i}", model_id="m", request_id=1, arrival_ns=now[0], deadline_ns=now[0] + 100 * MS
            )
        )
    assert sched.free_at_ns("m", now[0]) == now[0]
    sched.next_batch(ready_models={"m"})
    assert sched.free_at_ns("m", now[0]) == now[0] + 10 * MS
    now[0] += 9 * MS
    sched.next_batch(ready_models={"m"})  # handed ahead: booked after the first
    assert sched.free_at_ns("m", now[0]) == now[0] + 11 * MS
    sched.batch_ended("m", last=True)  # the second taken back
    assert sched.free_at_ns("m", now[0]) == now[0] + MS
    now[0] += 3 * MS  # the first overran its estimate: still busy until it ends
    assert sched.free_at_ns("m", now[0]) == now[0]
    sched.record_service_time("m", 1, 12.0)
    assert sched.free_at_ns("m", now[0]) == now[0]


def test_a_batch_put_back_is_superseded_by_the_robots_newer_observation():
    now = [10_000 * MS]
    shed: list[tuple[InferenceRequest, Status]] = []
    sched = create_scheduler(SchedulingConfig(strategy="edf"), clock=lambda: now[0])
    sched.on_shed = lambda r, status, reason: shed.append((r, status))  # type: ignore[method-assign]
    old = InferenceRequest(client_id="a", model_id="m", request_id=1, identity=b"a", arrival_ns=now[0])
    sched.submit(old)
    assert sched.next_batch() == [old]
    now[0] += MS
    newer = InferenceRequest(client_id="a", model_id="m", request_id=2, identity=b"a", arrival_ns=now[0])
    sched.submit(newer)  # the old one was out in a batch: nothing to supersede then
    sched.put_back([old])
    assert shed == [(old, Status.SUPERSEDED)]
    assert sched.next_batch() == [newer]


class _Gate(Model):
    """Each batch waits for the test to open the gate; counts the batches it ran."""

    max_batch_size = 4

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.runs = 0

    def execute(self, batch: list[Any]) -> list[Any]:
        self.runs += 1
        self.entered.set()
        assert self.gate.wait(10)
        return [{"actions": np.zeros(1, np.float32)} for _ in batch]


def test_the_local_backend_takes_back_a_queued_batch_only_before_a_worker_starts_it():
    async def scenario() -> None:
        model = _Gate()
        backend = LocalBackend(objects={"gate": model})
        await backend.start()
        loop = asyncio.get_running_loop()
        outcomes: dict[str, Any] = {}
        finished = asyncio.Event()

        def done_as(name: str) -> Callable[..., None]:
            def done(out: Any, err: Any) -> None:
                outcomes[name] = (out, err)
                if len(outcomes) == 2:
                    finished.set()

            return done

        assert backend.queues_batches("gate")
        backend.submit("gate", [{}], done_as("first"))
        await loop.run_in_executor(None, model.entered.wait, 10)
        revoke = backend.submit("gate", [{}], done_as("queued"))
        assert revoke is not None and revoke(), "queued behind the running batch: taken back"
        third = backend.submit("gate", [{}, {}], done_as("third"))
        model.gate.set()
        await asyncio.wait_for(finished.wait(), 10)
        assert set(outcomes) == {"first", "third"}  # the batch taken back never answers
        assert model.runs == 2
        assert third is not None and not third(), "a batch that ran cannot be taken back"
        await backend.stop()

    asyncio.run(scenario())


def test_a_busy_server_hands_batches_ahead_and_answers_every_observation_once():
    config = [
        {
            "name": "slow",
            "target": "inferential.models.testing:Sleep",
            "options": {"base_ms": 4.0, "per_item_ms": 0.5},
            "max_batch_size": 4,
        }
    ]
    with running_server(model_configs=config) as (server, endpoint):
        results: list[Any] = []
        errors: list[BaseException] = []

        def robot(i: int) -> None:
            try:
                with Connection(server=endpoint, client_id=f"robot-{i}") as conn:
                    model = conn.model("slow", latency_budget_ms=500)
                    for _ in range(40):
                        results.append(model.request(timeout_ms=5000, joints=np.zeros(7, np.float32)))
            except BaseException as err:  # noqa: BLE001 (reported below)
                errors.append(err)

        threads = [threading.Thread(target=robot, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert len(results) == 240 and all(r.status == Status.OK for r in results)
        status = server.status_threadsafe()
        assert status["dispatch_ahead"]["handed"] > 0
        assert status["models"]["slow"]["in_flight"] == 0 and not server._engine.ahead


def test_a_finished_batch_that_waited_long_for_the_loop_counts_only_the_loops_usual_wait():
    """The local backend says how long a finished batch waited for the loop (BACK_NS). Up to
    deadline_margin_ms that wait counts in the model's measured time; the rest does not (the
    plan adds a loop's extra wait once per batch, _extra_lag_ms): a loop and a worker starved
    of CPU (the Python transport refusing a storm of observations) made a 1 ms model measure
    30-90 ms, and admission then refused everything."""

    async def scenario() -> None:
        now = [10_000 * MS]
        engine, ledger, registry, backend, _ = _engine(now)
        engine.start(asyncio.get_running_loop(), backend.models())
        usual = int(engine.config.scheduling.deadline_margin_ms * MS)

        def run_one(robot: str, loop_sees_ms: int, back_ns: int) -> None:
            _request(ledger, engine, registry, now[0], robot, priority=1, budget_ms=1000.0)
            engine.after_change()
            now[0] += loop_sees_ms * MS
            entry = backend.submitted[-1]
            setattr(entry["done"], BACK_NS, back_ns)
            backend.finish(len(backend.submitted) - 1)

        run_one("a", 10, usual - MS)  # within the usual wait: counted whole
        assert engine.scheduler.estimate_service_ms("m", 1, margin=False) == 10.0
        run_one("b", 50, usual + 37 * MS)  # 37 ms past it: left out
        assert engine.scheduler.estimate_service_ms("m", 1, margin=False) == 11.5  # mean of 10 and 13
        assert not ledger.pending

    asyncio.run(scenario())


def test_the_local_backend_says_how_long_a_finished_batch_waited_for_the_loop():
    class Quick(Model):
        allow_inline = False

        def execute(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{"a": np.zeros(1, np.float32)} for _ in batch]

    async def scenario() -> None:
        backend = LocalBackend(objects={"q": Quick()})
        await backend.start()
        try:
            got = asyncio.get_running_loop().create_future()

            def done(outcomes: Any, error: Any) -> None:
                got.set_result((outcomes, error, getattr(done, BACK_NS, None)))

            backend.submit("q", [{}], done)
            outcomes, error, back_ns = await asyncio.wait_for(got, 10)
            assert error is None and len(outcomes) == 1
            assert isinstance(back_ns, int) and 0 <= back_ns < 10_000 * MS
        finally:
            await backend.stop()

    asyncio.run(scenario())
