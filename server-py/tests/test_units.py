"""Unit tests of single components: cadence, registry, metrics store, config, local backend."""

from __future__ import annotations

import asyncio
import textwrap

import numpy as np
import pytest

from inferential.config import ConfigError, InferentialConfig, load_config, parse_config
from inferential.config.schema import AuthConfig, ClientsConfig, KnownClient
from inferential.dispatch.base import FunctionModel, check_outcomes, load_target
from inferential.dispatch.local import LocalBackend
from inferential.metrics import MetricsStore
from inferential.server.registry import Cadence, ClientRegistry

MS = 1_000_000


def test_cadence_is_read_before_it_absorbs_the_arrival():
    c = Cadence(alpha=0.3)
    assert c.observe(0) == (None, None)
    assert c.observe(50 * MS) == (None, 50.0)  # first gap seeds the EMA
    before, gap = c.observe(120 * MS)  # a late arrival: 70 ms against a 50 ms rhythm
    assert before == 50.0 and gap == 70.0
    assert c.ema_interval_ms == pytest.approx(0.3 * 70 + 0.7 * 50)
    assert c.observe(100 * MS) == (c.ema_interval_ms, None)  # dated before the last: no gap
    assert c.last_arrival_ns == 120 * MS


def test_registry_auth_and_unknown_clients():
    clients = ClientsConfig(known=[KnownClient(id="arm-1", auth_token="s3cret")], accept_unknown=False)
    reg = ClientRegistry(clients, AuthConfig(), 0.3, 10.0)
    assert reg.check_access("arm-1", "s3cret") is None
    assert "wrong auth_token" in reg.check_access("arm-1", "nope")
    assert "not in clients.known" in reg.check_access("stranger", "")
    shared = ClientRegistry(ClientsConfig(), AuthConfig(token="t"), 0.3, 10.0)
    assert "requires an auth_token" in shared.check_access("any", "")
    assert shared.check_access("any", "t") is None


def test_registry_pins_priority_and_detects_silence():
    clients = ClientsConfig(known=[KnownClient(id="weld", priority=3, pin_priority=True)])
    reg = ClientRegistry(clients, AuthConfig(), 0.3, disconnect_timeout_s=1.0)
    assert reg.priority_for("weld", 0, 10) == 3  # cannot promote itself
    assert reg.priority_for("other", 50, 10) == 10  # clamped
    reg.on_observation("weld", "", "m", b"id", 0)
    assert reg.silent(500 * MS) == [] and reg.silent(1001 * MS) == ["weld"]


def test_refused_arrivals_count_in_known_cadences_in_order():
    """The native transport's refusals of robots that state no budget count in their
    streams' cadences (else a robot whose observations are mostly refused looks slower
    than it is); unknown robots and streams are skipped, and so is an arrival no later
    than the last one counted."""
    reg = ClientRegistry(ClientsConfig(), AuthConfig(), 0.5, 10.0)
    reg.on_observation("arm", "", "m", b"id", 0)
    reg.on_observation("arm", "", "m", b"id", 60 * MS)  # what the loop saw: every third
    cadence = reg.robots["arm"].cadences[("m", b"id")]
    assert cadence.ema_interval_ms == 60.0
    reg.observe_refused(
        [
            ("arm", b"id", "m", 80 * MS),
            ("arm", b"id", "m", 70 * MS),  # out of order: skipped
            ("arm", b"id", "m", 100 * MS),
            ("arm", b"other", "m", 100 * MS),  # another connection: no cadence yet
            ("ghost", b"g", "m", 100 * MS),
        ]
    )
    assert cadence.ema_interval_ms == pytest.approx(0.5 * 20 + 0.5 * (0.5 * 20 + 0.5 * 60))
    assert cadence.last_arrival_ns == 100 * MS and reg.robots["arm"].last_seen_ns == 100 * MS
    assert ("m", b"other") not in reg.robots["arm"].cadences and "ghost" not in reg.robots


def test_metrics_store_stats_latest_labels_and_callbacks():
    now = [1000.0]
    store = MetricsStore(ring_buffer_size=100, clock=lambda: now[0])
    for v in range(1, 101):
        store.record("lat", float(v), {"client": "a" if v % 2 else "b"})
    s = store.get_stats("lat")
    assert s.count == 100 and s.p50 == pytest.approx(50.5) and s.p99 == pytest.approx(99.01)
    assert store.get_stats("lat", labels={"client": "a"}).count == 50
    assert store.get_latest("lat") == 100.0 and store.get_latest("lat", {"client": "a"}) == 99.0
    store.record("lat", 1.0)  # ring buffer keeps the newest 100
    assert store.get_stats("lat").count == 100
    now[0] += 100
    store.record("lat", 5.0)
    assert store.get_stats("lat", window_seconds=10).count == 1
    seen = []
    store.on_metric(lambda name, value, labels: seen.append((name, value)))
    store.increment("replies", {"status": "OK"})
    store.flush()
    assert ("replies", 1.0) in seen and store.counter("replies") == 1.0
    assert store.snapshot()["replies"]["total"] == 1.0
    store.close()


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent("""
        scheduling:
          strategy: edf
          max_queue_sise: 10
          request_ttl_ms: -5
        transport: {bind: "tcp://127.0.0.1:0"}
    """)
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "scheduling.max_queue_sise: unknown key" in text
    assert "scheduling.request_ttl_ms" in text and "greater than 0" in text
    with pytest.raises(ConfigError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("a: [")
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config({"models": [{"name": "a", "target": "x:y"}, {"name": "a", "target": "x:z"}]})


def test_readme_config_example_parses():
    config = InferentialConfig(
        transport={"bind": "tcp://*:5555", "recv_hwm": 2000},
        scheduling={
            "strategy": "deadline_aware",
            "max_queue_size": 500,
            "request_ttl_ms": 3000,
            "overflow_policy": "drop_oldest",
            "max_retries": 1,
        },
        clients={
            "defaults": {"latency_budget_ms": 50.0, "priority": 1},
            "known": [{"id": "agent-01", "model": "policy-v2", "latency_budget_ms": 30.0, "priority": 2}],
            "accept_unknown": True,
        },
        response_tracking={"cadence_alpha": 0.3, "disconnect_timeout_s": 10.0},
        metrics={"ring_buffer_size": 10000},
    )
    registry = ClientRegistry(config.clients, config.auth, 0.3, 10.0)
    assert registry.budget_for("agent-01", 0.0) == 30.0 and registry.budget_for("x", 0.0) == 50.0


def test_batch_contract_checks():
    assert check_outcomes([np.zeros(2)], 1)[0]["actions"].shape == (2,)
    with pytest.raises(TypeError, match="returned 2 results for a batch of 1"):
        check_outcomes([1, 2], 1)
    out = check_outcomes([{"a": np.ones(1), "s": "x"}, ValueError("bad"), None], 3)
    assert out[0]["s"] == "x" and isinstance(out[1], ValueError) and isinstance(out[2], TypeError)
    with pytest.raises(ValueError, match="package.module:Attr"):
        load_target("no_colon")
    assert load_target("inferential.models.testing:NoOp").__name__ == "NoOp"


def test_local_backend_runs_models_off_the_loop_with_per_request_errors():
    async def scenario():
        backend = LocalBackend(
            objects={
                "fail": "inferential.models.testing:Failing",
                "fn": lambda inputs: inputs["x"] * 2,
            }
        )
        await backend.start()
        assert set(backend.models()) == {"fail", "fn"}
        out = await backend.execute("fail", [{"fail": "no"}, {"fail": "yes"}])
        assert out[0]["ok"].tolist() == [1] and isinstance(out[1], ValueError)
        doubled = await backend.execute("fn", [{"x": np.arange(3)}])
        assert doubled[0]["actions"].tolist() == [0, 2, 4]
        from inferential.dispatch.base import BackendError

        with pytest.raises(BackendError, match="batch failure requested"):
            await backend.execute("fail", [{"fail": "batch"}])
        await backend.stop()

    asyncio.run(scenario())
    # A plain function is called per request; one request's exception stays its own.
    out = FunctionModel(lambda inputs: 1 / inputs["d"]).execute([{"d": 2}, {"d": 0}])
    assert out[0] == 0.5 and isinstance(out[1], ZeroDivisionError)


def test_fast_models_move_inline_and_a_slow_batch_sends_them_back_to_threads():
    import threading

    from inferential.dispatch.local import INLINE_PROBE
    from inferential.models.testing import NoOp

    class Switchable(NoOp):
        slow = False

        def execute(self, batch):
            if self.slow:
                time.sleep(0.01)
            self.thread = threading.current_thread()
            return super().execute(batch)

    import time

    async def scenario():
        model = Switchable()
        backend = LocalBackend(objects={"m": model}, inline_below_ms=1.0)
        await backend.start()
        loop_thread = threading.current_thread()

        async def run_once():
            fut = asyncio.get_running_loop().create_future()
            backend.submit("m", [{}], lambda out, err: fut.set_result((out, err)))
            out, err = await fut
            assert err is None and out[0]["actions"].shape == (7,)

        assert backend.run_inline("m", [{}]) is None  # not proven fast yet: use submit()
        for _ in range(INLINE_PROBE):
            await run_once()
        assert backend.health().models["m"].details["inline"] and model.thread is not loop_thread
        out, err = backend.run_inline("m", [{}, {}])  # runs here and now, on the caller's thread
        assert err is None and len(out) == 2 and model.thread is loop_thread
        await run_once()
        assert model.thread is loop_thread  # now inline on the event loop
        model.slow = True
        await run_once()  # 10 ms > 10 x 1 ms: ejected
        assert not backend.health().models["m"].details["inline"]
        await run_once()
        assert model.thread is not loop_thread
        await backend.stop()

    asyncio.run(scenario())


def test_models_can_refuse_inline_execution():
    from inferential.dispatch.local import INLINE_PROBE
    from inferential.models.testing import NoOp

    class Blocking(NoOp):
        allow_inline = False

    async def scenario():
        backend = LocalBackend(objects={"m": Blocking()})
        await backend.start()
        for _ in range(INLINE_PROBE + 5):
            fut = asyncio.get_running_loop().create_future()
            backend.submit("m", [{}], lambda out, err, fut=fut: fut.set_result(err))
            assert await fut is None
        assert not backend.health().models["m"].details["inline"]
        await backend.stop()

    asyncio.run(scenario())


def test_the_sleep_stand_in_takes_its_stated_time_on_average_whatever_sleep_oversleeps(monkeypatch):
    """On a fake clock whose sleep always oversleeps by 0.4 ms, the calls converge on the
    stated time instead of 0.4 ms over it."""
    from inferential.models import testing

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds + 0.0004

    def perf_counter() -> float:
        return now[0]

    monkeypatch.setattr(testing.time, "sleep", sleep)
    monkeypatch.setattr(testing.time, "perf_counter", perf_counter)
    model = testing.Sleep(base_ms=0.0, per_item_ms=1.5)
    took = []
    for _ in range(200):
        start = now[0]
        outputs = model.execute([{}] * 4)
        took.append((now[0] - start) * 1e3)
    assert len(outputs) == 4
    assert took[0] == pytest.approx(6.4, abs=0.01)  # the first call has nothing to correct with
    assert sum(took[-50:]) / 50 == pytest.approx(6.0, abs=0.01)
    assert model._correction_s == pytest.approx(0.0004, abs=0.00001)


def test_known_clients_are_found_by_id_as_the_list_changes() -> None:
    from inferential.config.schema import ClientsConfig, KnownClient

    clients = ClientsConfig(
        known=[KnownClient(id="a", priority=1), KnownClient(id="b"), KnownClient(id="a", priority=5)]
    )
    assert clients.get("a").priority == 1  # the first entry with an id wins, as before
    assert clients.get("b") is not None and clients.get("c") is None
    clients.known.append(KnownClient(id="c"))  # in place
    assert clients.get("c") is not None
    clients.known = [KnownClient(id="d")]  # replaced (a reload)
    assert clients.get("a") is None and clients.get("d") is not None
    assert ClientsConfig().get("a") is None
