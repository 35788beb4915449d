"""The shipped chunked policy (inferential.models.chunked_policy): its fit, the frozen prefix
it keeps, and end to end against the real server with ControlLoop robots: the prefix the
robot queued comes back frozen, and for a steady fleet the delay the server predicts is
within one control step of the delay it measures."""

from __future__ import annotations

import threading

import numpy as np
from server_helpers import running_server

from inferential import Connection, ControlLoop
from inferential.models.chunked_policy import JOINTS, ChunkedPolicy, expert_chunk


def loaded(**options) -> ChunkedPolicy:
    policy = ChunkedPolicy(**options)
    policy.load()
    return policy


def obs(joints=None, target=(0.3, 0.7), **extra):
    q = np.zeros(JOINTS, np.float32) if joints is None else np.asarray(joints, np.float32)
    return {"joints": q, "target": np.array(target, np.float32), **extra}


def test_the_fitted_policy_follows_the_expert():
    policy = loaded(noise=0.0)
    rng = np.random.default_rng(3)
    q = rng.normal(scale=0.5, size=(20, JOINTS)).astype(np.float32)
    t = rng.uniform(0.2, 0.8, size=(20, 2)).astype(np.float32)
    want = expert_chunk(q, t, policy.horizon, policy.tau_steps)
    got = policy.plan(q, t)
    scale = float(np.abs(want - q[:, None, :]).mean())
    assert float(np.abs(got - want).mean()) < 0.1 * scale


def test_the_frozen_prefix_is_the_robots_queue_and_the_rest_continues_without_a_jump():
    policy = loaded(noise=0.0)
    prev = np.cumsum(np.full((10, JOINTS), 0.01, np.float32), axis=0) + 1.0  # far from the plan
    [out] = policy.execute([obs(prev_actions=prev, inference_delay_steps=3)])
    actions = out["actions"]
    own = policy.plan(np.zeros((1, JOINTS), np.float32), np.array([[0.3, 0.7]], np.float32))[0]
    assert actions.shape == (policy.horizon, JOINTS)
    np.testing.assert_array_equal(actions[:3], prev[:3])
    # Switching to the policy's own plan after the prefix would jump by the whole gap; the
    # continuation moves by a share of it (the fade) plus the plan's own step.
    jump = float(np.abs(own[3] - prev[2]).max())
    seam = float(np.abs(actions[3] - actions[2]).max())
    assert seam < 0.25 * jump
    np.testing.assert_allclose(actions[-1], own[-1], atol=1e-6)  # the fade is over by the end


def test_no_prefix_no_freeze_and_a_hand_set_delay():
    policy = loaded(noise=0.0)
    prev = np.ones((8, JOINTS), np.float32)
    [plain] = policy.execute([obs(inference_delay_steps=4)])
    [off] = loaded(noise=0.0, freeze=False).execute([obs(prev_actions=prev, inference_delay_steps=4)])
    np.testing.assert_allclose(plain["actions"], off["actions"])  # freeze off: the prefix is ignored
    [fixed] = loaded(noise=0.0, fixed_delay_steps=6).execute([obs(prev_actions=prev, inference_delay_steps=2)])
    np.testing.assert_array_equal(fixed["actions"][:6], prev[:6])  # the hand-set delay wins
    assert not np.array_equal(fixed["actions"][6], prev[6])
    # A prefix longer than the delay: only the delay's rows are frozen; a delay past the
    # queue freezes what there is.
    [short] = policy.execute([obs(prev_actions=prev[:2], inference_delay_steps=5)])
    np.testing.assert_array_equal(short["actions"][:2], prev[:2])


def test_a_malformed_prefix_fails_only_its_own_request():
    policy = loaded()
    good, bad = policy.execute([obs(), obs(prev_actions=np.ones((3, 2), np.float32), inference_delay_steps=1)])
    assert "actions" in good
    assert isinstance(bad, ValueError)


def test_end_to_end_the_server_freezes_what_the_robot_queued():
    policy = ChunkedPolicy(horizon=20, noise=0.05, base_ms=5.0)
    with running_server(models={"chunked": policy}, scheduling={"strategy": "edf"}) as (_, endpoint):
        with Connection(server=endpoint) as conn:
            model = conn.model("chunked")
            prev = np.linspace(0.0, 1.0, 12 * JOINTS, dtype=np.float32).reshape(12, JOINTS)
            result = model.request(
                joints=np.zeros(JOINTS, np.float32),
                target=np.array([0.4, 0.6], np.float32),
                prev_actions=prev,
                control_step=500,
                actions_remaining=12,
                control_rate_hz=50,
            )
    frozen = int(np.ceil(result.predicted_delay_steps - 1e-6))
    assert result.first_action_step == 500
    assert frozen >= 1
    np.testing.assert_array_equal(result["actions"][:frozen], prev[:frozen])
    assert not np.array_equal(result["actions"][frozen], prev[frozen])


def test_a_steady_fleet_gets_delay_predictions_within_one_control_step():
    """Six robots at 50 Hz, chunks of 16 asked at 8 left, a 6 ms + 1 ms/request model."""
    policy = ChunkedPolicy(horizon=16, base_ms=6.0, per_item_ms=1.0)
    loops: list[ControlLoop] = []
    errors: list[BaseException] = []
    with running_server(models={"chunked": policy}, scheduling={"strategy": "edf"}) as (_, endpoint):

        def robot(i: int) -> None:
            try:
                with Connection(server=endpoint, client_id=f"arm-{i}") as conn:
                    loop = ControlLoop(conn.model("chunked"), rate_hz=50, request_below=8, blend="average")
                    loops.append(loop)
                    q = np.zeros(JOINTS, np.float32)

                    def act(action):
                        if action is not None:
                            q[:] = action

                    loop.run(
                        lambda: {"joints": q.copy(), "target": np.array([0.3, 0.6], np.float32)}, act, duration_s=3.0
                    )
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=robot, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert not errors
    arrivals = [a for loop in loops for a in list(loop.arrivals)[2:]]  # past the first measured batches
    assert len(arrivals) > 50
    err = np.array([abs(a.actual_delay_steps - a.predicted_delay_steps) for a in arrivals])
    assert float(np.median(err)) < 1.0
    assert float(np.mean(err < 1.0)) >= 0.9
    assert sum(loop.queue.stats.held for loop in loops) == 0
