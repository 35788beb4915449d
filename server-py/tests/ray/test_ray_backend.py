"""RayBackend against the session's real Ray cluster (see conftest.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from inferential.config.schema import ModelConfig, RayConfig
from inferential.dispatch.base import BackendError
from inferential.dispatch.ray.backend import RayBackend, _legs_ms
from inferential.dispatch.ray.cluster import prepare_local_auth
from inferential.dispatch.ray.replica import RemoteModelError, build_app
from inferential.models.ray_testing import LegacyInferApp

TESTING = "inferential.models.ray_testing"

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

IMAGE = np.full((224, 224, 3), 51, np.uint8)  # 150 KB; mean / 255 = 0.2


def obs(i: int, image: bool = True, **metadata: str) -> dict:
    inputs: dict = {"state": np.arange(7, dtype=np.float32) + i, **metadata}
    if image:
        inputs["image"] = IMAGE
    return inputs


def test_deploy_runs_a_whole_batch_in_one_call_with_per_request_outputs(backend, loop):
    batch = [obs(i) for i in range(5)]
    outcomes = loop.run(backend.execute("linear", batch))
    assert len(outcomes) == 5
    for inputs, out in zip(batch, outcomes, strict=True):
        np.testing.assert_allclose(out["actions"], inputs["state"] * 3 + 0.2, rtol=1e-6)
    # One replica saw all five requests in one execute() call.
    assert {int(o["batch_size"]) for o in outcomes} == {5}
    assert len({o["pid"] for o in outcomes}) == 1
    assert {int(o["loads"]) for o in outcomes} == {1}


def test_batches_go_over_the_direct_path_to_replicas_on_this_machine(backend, loop):
    details = backend.health().models["linear"].details
    assert details["direct_replicas"] == 2  # both replicas' sockets found and connected
    before = details["direct_calls"]
    batch = [obs(i) for i in range(8)]  # 1.2 MB of images: sent as out-of-band frames
    outcomes = loop.run(backend.execute("linear", batch))
    assert backend.health().models["linear"].details["direct_calls"] == before + 1
    for inputs, out in zip(batch, outcomes, strict=True):
        np.testing.assert_allclose(out["actions"], inputs["state"] * 3 + 0.2, rtol=1e-6)
    # Batches in flight at once spread over both replicas (fewest in flight first).
    slow = [[obs(i, image=False, delay_s="0.3")] for i in range(2)]
    pids = loop.run(_gather(*(backend.execute("linear", b) for b in slow)))
    assert len({out[0]["pid"] for out in pids}) == 2
    # Where the direct batches' time went, from the replicas' stamps: the last two (0.3 s
    # in the model) spent it in the model's leg; the summary is in the health details.
    last_two = list(backend._targets["linear"].legs)[-2:]
    assert all(0.25 <= model_s < 5 and to_s >= 0 and back_s >= 0 for to_s, _, model_s, back_s in last_two)
    legs = backend.health().models["linear"].details["direct_ms"]
    assert legs["batches"] >= 3 and all(legs[k] >= 0 for k in ("to_replica", "to_model", "model", "back"))


def test_direct_legs_summary():
    assert _legs_ms([]) is None
    legs = [(0.001, 0.0002, 0.003, 0.0005), (0.003, 0.0004, 0.005, 0.0007), (0.002, 0.0003, 0.004, 0.0006)]
    assert _legs_ms(legs) == {"batches": 3, "to_replica": 2.0, "to_model": 0.3, "model": 4.0, "back": 0.6}


async def _gather(*coros):
    import asyncio

    return await asyncio.gather(*coros)


def test_small_and_large_batches_take_either_transport_and_agree(backend, loop):
    # 7 floats go over Serve's gRPC transport, 20 images through the object store.
    small = loop.run(backend.execute("linear", [obs(i, image=False) for i in range(3)]))
    large = loop.run(backend.execute("linear", [obs(i) for i in range(20)]))
    for i, out in enumerate(small):
        np.testing.assert_array_equal(out["actions"], obs(i)["state"] * 3)
    assert len(large) == 20
    np.testing.assert_allclose(large[19]["actions"], obs(19)["state"] * 3 + 0.2, rtol=1e-6)


def test_models_report_batch_size_and_batches_in_flight(backend):
    models = backend.models()
    assert models["linear"].max_batch_size == 16  # the Model class's own value
    assert models["linear"].concurrency == 2  # 2 replicas x 1 batch each
    assert models["picky"].max_batch_size == 4  # ModelConfig wins
    assert models["fn"].max_batch_size == 8


def test_one_failing_request_fails_alone(backend, loop):
    bad = obs(1, image=False)
    bad["state"][3] = np.nan
    outcomes = loop.run(backend.execute("picky", [obs(0, image=False), bad, obs(2, image=False)]))
    assert isinstance(outcomes[1], RemoteModelError)
    assert outcomes[1].type_name == "ValueError" and "NaN" in outcomes[1].message
    np.testing.assert_array_equal(outcomes[0]["actions"], -obs(0)["state"])
    np.testing.assert_array_equal(outcomes[2]["actions"], -obs(2)["state"])


def test_a_plain_function_target_fails_per_request(backend, loop):
    outcomes = loop.run(backend.execute("fn", [obs(1, image=False), {"state": -np.ones(2)}]))
    np.testing.assert_array_equal(outcomes[0]["actions"], obs(1)["state"] * 2)
    assert isinstance(outcomes[1], RemoteModelError) and "negative" in str(outcomes[1])


def test_a_model_failing_the_whole_batch_raises_backend_error(backend, loop):
    with pytest.raises(BackendError, match="the whole batch exploded"):
        loop.run(backend.execute("picky", [obs(0, explode="yes"), obs(1)]))


def test_unknown_model_raises_backend_error(backend, loop):
    with pytest.raises(BackendError, match="unknown model"):
        loop.run(backend.execute("nope", [obs(0)]))


def test_hung_model_times_out_then_its_replica_is_replaced(backend, loop):
    before = backend.health().models["sleepy"].details["timeouts"]
    start = time.monotonic()
    with pytest.raises(BackendError, match="no answer within 0.5 s"):
        loop.run(backend.execute("sleepy", [obs(0, image=False, sleep_s="60")]))
    assert time.monotonic() - start < 1.5
    assert backend.health().models["sleepy"].details["timeouts"] == before + 1

    # The batch keeps its thread busy; the replica fails its health check
    # (hung_after_s=1) and Serve starts a fresh one, which answers.
    deadline = time.monotonic() + 90  # seconds when idle; over 40 with both cores loaded
    answer = None
    while time.monotonic() < deadline:
        try:
            answer = loop.run(backend.execute("sleepy", [obs(3, image=False)]))
            break
        except BackendError:
            time.sleep(0.5)
    assert answer is not None, backend.health().models["sleepy"]
    np.testing.assert_array_equal(answer[0]["actions"], obs(3)["state"])


def test_a_replica_killed_mid_batch_is_retried_on_another_and_its_successor_found(backend, loop):
    import asyncio

    import ray

    pool = backend._targets["linear"].direct
    retries = backend.health().models["linear"].details["retries"]
    call = asyncio.run_coroutine_threadsafe(backend.execute("linear", [obs(7, delay_s="1.0")]), loop.loop)
    deadline = time.monotonic() + 5
    while not any(r.inflight for r in pool.replicas.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    victim = next(r for r in pool.replicas.values() if r.inflight)
    ray.kill(ray.get_actor(f"SERVE_REPLICA::linear#linear#{victim.unique_id}", namespace="serve"), no_restart=True)
    out = call.result(15)  # answered by the other replica, within the same deadline
    np.testing.assert_allclose(out[0]["actions"], obs(7)["state"] * 3 + 0.2, rtol=1e-6)
    assert backend.health().models["linear"].details["retries"] == retries + 1
    assert victim.unique_id not in pool.replicas and not os.path.exists(victim.path)
    # Serve starts a replacement; the backend connects to it without being asked.
    deadline = time.monotonic() + 60

    def replaced() -> bool:
        health = loop.run(backend.refresh_health()).models["linear"]
        return health.replicas == 2 and health.details["direct_replicas"] == 2

    while not replaced() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert replaced()


def test_handle_models_are_called_through_serve_handles(backend, loop):
    out = loop.run(backend.execute("by-handle", [{"state": np.ones(2)}]))
    np.testing.assert_array_equal(out[0]["actions"], [2.0, 2.0])
    details = backend.health().models["by-handle"].details
    assert details["direct_replicas"] == 0 and details["direct_calls"] == 0 and details["calls"] >= 1


def test_health_reports_replicas_per_model(backend, loop):
    health = loop.run(backend.refresh_health())
    assert health.ready
    linear = health.models["linear"]
    assert linear.replicas == 2 and linear.healthy
    assert linear.details["target_replicas"] == 2 and linear.details["app_status"] == "RUNNING"
    assert linear.details["mode"] == "deploy" and linear.details["calls"] >= 1
    assert health.details["cluster"]["connection"] == "started"
    assert set(health.models) == {"linear", "picky", "fn", "sleepy", "by-handle"}


def test_attach_to_applications_deployed_separately(backend, loop):
    from ray import serve

    policy = ModelConfig(name="policy-v2", target=f"{TESTING}:LinearPolicy", num_cpus=0, options={"gain": 5.0})
    legacy = serve.deployment(LegacyInferApp, ray_actor_options={"num_cpus": 0}).bind()
    serve.run_many(
        [
            serve.RunTarget(target=build_app(policy), name="policy-v2", route_prefix=None),
            serve.RunTarget(target=legacy, name="legacy-v1", route_prefix=None),
        ]
    )
    attached = RayBackend(ray=RayConfig(attach=["policy-v2"]), attach=["legacy-v1"])
    try:
        loop.run(attached.start())
        models = attached.models()
        assert models["policy-v2"].max_batch_size == 16  # from its describe()

        # A batch app: one call for the whole batch.
        outcomes = loop.run(attached.execute("policy-v2", [obs(0), obs(1)]))
        np.testing.assert_allclose(outcomes[1]["actions"], obs(1)["state"] * 5 + 0.2, rtol=1e-6)
        assert {int(o["batch_size"]) for o in outcomes} == {2}

        # A 1.x app with infer(obs): one call per request; a failure stays its own.
        batch = [obs(0, image=False), {"state": -np.ones(2)}]
        outcomes = loop.run(attached.execute("legacy-v1", batch))
        np.testing.assert_array_equal(outcomes[0]["actions"], obs(0)["state"] + 1)
        assert isinstance(outcomes[1], RemoteModelError) and outcomes[1].type_name == "ValueError"

        health = loop.run(attached.refresh_health())
        assert health.models["legacy-v1"].details["method"] == "infer"
        assert health.models["policy-v2"].details["method"] == "execute_batch"
        assert health.details["cluster"]["connection"] == "reused"
    finally:
        loop.run(attached.stop())
    # Attached applications are someone else's: they are still running.
    assert {"policy-v2", "legacy-v1"} <= set(serve.status().applications)
    serve.delete("policy-v2")
    serve.delete("legacy-v1")


def test_attach_to_a_missing_application_fails_start(backend, loop):
    missing = RayBackend(attach=["no-such-app"])
    with pytest.raises(BackendError, match="no-such-app"):
        loop.run(missing.start())
    loop.run(missing.stop())


def test_stop_deletes_the_applications_it_deployed_and_leaves_the_cluster(backend, loop):
    import ray
    from ray import serve

    extra = RayBackend([ModelConfig(name="scratch", target=f"{TESTING}:double", num_cpus=0)])
    loop.run(extra.start())
    assert "scratch" in serve.status().applications
    out = loop.run(extra.execute("scratch", [{"state": np.ones(2)}]))
    np.testing.assert_array_equal(out[0]["actions"], [2.0, 2.0])
    loop.run(extra.stop())
    assert "scratch" not in serve.status().applications
    assert ray.is_initialized()
    with pytest.raises(BackendError, match="not started"):
        loop.run(extra.execute("scratch", [{"state": np.ones(2)}]))


def test_a_model_that_cannot_load_fails_start(backend, loop):
    broken = RayBackend([ModelConfig(name="broken", target=f"{TESTING}:NoSuchModel", num_cpus=0)])
    with pytest.raises(BackendError, match="broken.*NoSuchModel"):
        loop.run(broken.start(), timeout=120)
    from ray import serve

    assert "broken" not in serve.status().applications


def test_embedded_cluster_keeps_token_auth_without_writing_a_token_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert prepare_local_auth(RayConfig()) == "token"
    assert len(os.environ["RAY_AUTH_TOKEN"]) >= 32
    assert not (tmp_path / ".ray").exists()

    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert prepare_local_auth(RayConfig(token_auth=False)) == "disabled"
    assert os.environ["RAY_AUTH_MODE"] == "disabled"

    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the operator's choice wins
    assert prepare_local_auth(RayConfig(token_auth=False)) == "token"


def test_the_session_cluster_runs_with_token_auth(backend):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    assert os.environ.get("RAY_AUTH_TOKEN") or Path.home().joinpath(".ray", "auth_token").exists()
