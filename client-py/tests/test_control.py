"""Action chunks end to end against the real Python server (started here): the reply's chunk
fields, the control_step hint, ActionChunkQueue.add_result/peek and the ControlLoop.

Skipped when only the client distribution is installed.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

pytest.importorskip("inferential.server")

from inferential import ActionChunkQueue, Connection, ControlLoop  # noqa: E402
from inferential.config import InferentialConfig  # noqa: E402
from inferential.server import BackgroundServer, Server  # noqa: E402

H = 16
DIM = 2


def chunk_model(inputs):
    """A chunk of H rows counting up from the observation's ``base``; echoes the delay it was
    told and the length of the prefix it was sent, so the test sees what the model saw."""
    base = float(np.asarray(inputs.get("base", np.zeros(1)))[0])
    rows = base + np.arange(H, dtype=np.float32)[:, None] * np.ones((1, DIM), np.float32)
    prefix = inputs.get("prev_actions")
    return {
        "actions": rows.astype(np.float32),
        "delay_seen": np.array([inputs.get("inference_delay_steps", -1)], np.int64),
        "prefix_rows": np.array([0 if prefix is None else len(prefix)], np.int64),
    }


def failing_model(inputs):
    raise RuntimeError("no chunk today")


@pytest.fixture(scope="module")
def endpoint():
    config = InferentialConfig.model_validate(
        {"transport": {"bind": "tcp://127.0.0.1:0"}, "models": [], "scheduling": {"strategy": "edf"}}
    )
    server = Server(config=config, models={"chunk": chunk_model, "failing": failing_model})
    background = BackgroundServer(server)
    yield background.start()
    background.stop()


def test_a_chunked_reply_echoes_the_step_and_says_its_period_delays_and_expiry(endpoint):
    with Connection(server=endpoint) as conn:
        model = conn.model("chunk")
        model.request(base=np.zeros(1, np.float32), control_rate_hz=50)  # warm: the model is measured
        sent_ns = time.time_ns()
        result = model.request(base=np.zeros(1, np.float32), control_step=1234, control_rate_hz=50, actions_remaining=3)
    assert result.first_action_step == 1234
    assert result.action_period_ms == pytest.approx(20.0)
    # H rows of 20 ms after the observation's timestamp (stamped at observe()).
    assert result.valid_until_ns == result.observation_timestamp_ns + H * 20_000_000
    assert result.observation_timestamp_ns >= sent_ns
    # The model was told the prediction in steps, rounded up; the reply has it unrounded.
    assert result.predicted_delay_steps > 0
    assert int(result["delay_seen"][0]) == math.ceil(result.predicted_delay_steps - 1e-6)
    assert result.timing is not None
    assert result.actual_delay_steps == pytest.approx(result.timing.total_ms / 20.0, rel=1e-3)


def test_a_robot_sending_no_chunk_hints_gets_no_chunk_fields(endpoint):
    with Connection(server=endpoint) as conn:
        result = conn.model("chunk").request(base=np.zeros(1, np.float32))
    assert result.first_action_step is None and result.valid_until_ns is None
    assert (result.action_period_ms, result.predicted_delay_steps, result.actual_delay_steps) == (0.0, 0.0, 0.0)
    assert int(result["delay_seen"][0]) == -1  # no rate, no steps: the model is told nothing


def test_add_result_aligns_the_chunk_and_peek_returns_the_queued_prefix(endpoint):
    queue = ActionChunkQueue()
    with Connection(server=endpoint) as conn:
        result = conn.model("chunk").request(base=np.full(1, 100.0, np.float32), control_step=0, control_rate_hz=30)
    assert queue.add_result(result) == H
    assert [float(queue.pop()[0]) for _ in range(3)] == [100.0, 101.0, 102.0]
    prefix = queue.peek(limit=4)
    assert prefix is not None and prefix[:, 0].tolist() == [103.0, 104.0, 105.0, 106.0]
    assert queue.actions_remaining() == H - 3  # peeking executes nothing


def test_the_control_loop_keeps_the_robot_fed_with_no_hold_and_no_step_twice(endpoint):
    executed: list[float] = []
    with Connection(server=endpoint) as conn:
        loop = ControlLoop(conn.model("chunk"), rate_hz=50, request_below=H // 2)

        def observe():
            # The policy's chunk restarts at the robot's step, so every step's action is the
            # step number: a repeated or skipped step would show in `executed`.
            return {"base": np.array([float(loop.queue.next_step)], np.float32)}

        def act(action):
            if action is not None:
                executed.append(float(action[0]))

        loop.run(observe, act, steps=100)
    stats = loop.queue.stats
    assert loop.stats.steps == 100
    assert stats.held == 0
    assert stats.executed + stats.underruns == 100
    # Only the steps before the first chunk arrived may run dry.
    first_arrival = loop.arrivals[0].arrived_step
    assert stats.underruns == first_arrival
    assert executed == [float(s) for s in range(first_arrival, 100)]
    assert loop.stats.chunks >= 100 // H
    assert all(a.predicted_delay_steps > 0 and a.actual_delay_steps > 0 for a in loop.arrivals)
    assert loop.stats.lost == 0 and not loop.stats.failed


def test_the_control_loop_counts_error_replies_and_keeps_asking(endpoint):
    with Connection(server=endpoint) as conn:
        loop = ControlLoop(conn.model("failing"), rate_hz=100)
        loop.run(lambda: {"x": np.zeros(1, np.float32)}, lambda action: None, steps=30)
    assert loop.stats.failed.get("MODEL_ERROR", 0) >= 2
    assert loop.stats.chunks == 0
    assert loop.queue.stats.underruns == 30 and loop.queue.stats.executed == 0
