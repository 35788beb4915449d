"""Action chunks on the server, on a fake clock: the delay predicted at dispatch, the
model's ``inference_delay_steps`` input, ``valid_until_ns``, and the reply's fields."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
from server_helpers import wired_engine

from inferential._proto import inferential_pb2 as pb
from inferential.config.schema import InferentialConfig
from inferential.dispatch.local import LocalBackend
from inferential.scheduler import InferenceRequest
from inferential.server.chunking import DELAY_INPUT, predict_batch, reply_fields, valid_until_ns
from inferential.wire import Status

MS = 1_000_000
T0 = 5_000 * MS


def request(arrival_ns: int = T0, rate: float = 50.0, step: Optional[int] = None, ts: int = 0) -> InferenceRequest:
    return InferenceRequest(
        client_id="arm",
        model_id="policy",
        arrival_ns=arrival_ns,
        control_rate_hz=rate,
        control_step=step,
        observation_timestamp_ns=ts,
    )


def test_the_prediction_is_the_wait_plus_the_service_estimate_plus_the_margin():
    early, late, unrated = request(T0), request(T0 + 2 * MS), request(T0, rate=0.0)
    predict_batch([early, late, unrated], now_ns=T0 + 5 * MS, service_ms=4.0, margin_ms=1.0)
    assert early.predicted_delay_ms == pytest.approx(10.0)
    assert late.predicted_delay_ms == pytest.approx(8.0)
    # 10 ms and 8 ms at 50 Hz (20 ms a step) are half a step and less: one frozen action.
    assert early.inputs[DELAY_INPUT] == 1 and late.inputs[DELAY_INPUT] == 1
    # Without a control rate there are no steps to count: the model gets no input.
    assert DELAY_INPUT not in unrated.inputs and unrated.predicted_delay_ms is None


@pytest.mark.parametrize(
    ("wait_ms", "service_ms", "rate", "steps"),
    [(0.0, 19.0, 50.0, 1), (15.0, 4.0, 50.0, 1), (16.0, 4.0, 50.0, 2), (30.0, 14.0, 100.0, 5), (0.0, None, 50.0, 1)],
)
def test_the_delay_input_is_the_prediction_in_steps_rounded_up(wait_ms, service_ms, rate, steps):
    r = request(T0, rate=rate)
    predict_batch([r], now_ns=T0 + int(wait_ms * MS), service_ms=service_ms, margin_ms=1.0)
    assert r.inputs[DELAY_INPUT] == steps
    assert isinstance(r.inputs[DELAY_INPUT], int)


@pytest.mark.parametrize(
    ("rate", "rows", "cap_ms", "expected_ms"),
    [
        (50.0, 16, None, 320.0),
        (50.0, 16, 100.0, 100.0),
        (0.0, 16, 100.0, 100.0),
        (0.0, 16, None, None),
        (50.0, None, None, None),
    ],
)
def test_actions_are_valid_for_the_chunk_length_capped_by_the_config(rate, rows, cap_ms, expected_ms):
    ts = 1_700_000_000 * 10**9
    outputs = {"actions": np.zeros((rows, 7), np.float32)} if rows else {"gripper": "open"}
    got = valid_until_ns(request(rate=rate, ts=ts), outputs, cap_ms)
    assert got == (0 if expected_ms is None else ts + int(expected_ms * MS))


def test_a_request_without_chunk_hints_gets_no_chunk_fields():
    assert reply_fields(request(rate=0.0), total_ms=12.0) is None


def test_engine_predicts_from_the_scheduler_estimate_and_the_reply_reports_both_delays():
    config = InferentialConfig.model_validate(
        {"scheduling": {"strategy": "edf", "deadline_margin_ms": 1.0, "action_max_age_ms": 500.0}}
    )
    now = [T0]
    engine, ledger, _, metrics, sent = wired_engine(config, LocalBackend(config.models, {}), now)
    for size in (1, 2, 1, 2):  # a measured model: 10 ms + 5 ms per request
        engine.scheduler.record_service_time("policy", size, 10.0 + 5.0 * size)
    wall_ts = 1_700_000_000 * 10**9
    reqs = [request(T0 - 6 * MS, rate=50.0, step=400, ts=wall_ts), request(T0, rate=50.0, step=7, ts=wall_ts)]
    for r in reqs:
        ledger.pending[r.seq] = r
    engine._predict("policy", reqs)
    # Batch of 2: 20 ms of service, 1 ms of margin, plus 6 ms and 0 ms waited.
    assert [r.predicted_delay_ms for r in reqs] == pytest.approx([27.0, 21.0])
    assert [r.inputs[DELAY_INPUT] for r in reqs] == [2, 2]  # 1.35 and 1.05 steps of 20 ms

    now[0] = T0 + 25 * MS  # the batch took 25 ms: the replies go 31 ms and 25 ms after arrival
    out = {"actions": np.zeros((16, 7), np.float32)}
    for r in reqs:
        r.valid_until_ns = valid_until_ns(r, out, config.scheduling.action_max_age_ms)
        ledger.answer(r, Status.OK, outputs=out)
    replies = [pb.ModelResponse.FromString(frames[2]) for frames in sent.frames]
    assert [m.first_action_step for m in replies] == [400, 7]
    assert all(m.HasField("first_action_step") for m in replies)
    assert [m.action_period_ms for m in replies] == pytest.approx([20.0, 20.0])
    assert [m.predicted_delay_steps for m in replies] == pytest.approx([1.35, 1.05])
    assert [m.actual_delay_steps for m in replies] == pytest.approx([1.55, 1.25])
    # 16 rows at 50 Hz is 320 ms, under the 500 ms cap.
    assert [m.valid_until_ns for m in replies] == [wall_ts + 320 * MS] * 2
    errors = metrics.values("delay_prediction_error_steps")
    assert errors == pytest.approx([0.2, 0.2])


def test_error_replies_and_1x_style_requests_carry_no_chunk_fields():
    config = InferentialConfig()
    _, ledger, _, metrics, sent = wired_engine(config, LocalBackend(config.models, {}), [T0])
    chunked, plain = request(step=3), request(rate=0.0)
    for r in (chunked, plain):
        ledger.pending[r.seq] = r
    ledger.answer(chunked, Status.MODEL_ERROR, "boom")
    ledger.answer(plain, Status.OK, outputs={"actions": np.zeros(7, np.float32)})
    for frames in sent.frames:
        reply = pb.ModelResponse.FromString(frames[2])
        assert not reply.HasField("first_action_step")
        assert (reply.action_period_ms, reply.actual_delay_steps, reply.valid_until_ns) == (0.0, 0.0, 0)
    assert metrics.values("delay_prediction_error_steps") == []


def test_the_prediction_error_is_exported_signed_and_absolute_per_model():
    from prometheus_client.parser import text_string_to_metric_families

    from inferential.config import ModelConfig
    from inferential.metrics.prometheus import PrometheusExporter
    from inferential.server import Server

    server = Server(
        config=InferentialConfig(models=[ModelConfig(name="noop", target="inferential.models.testing:NoOp")])
    )
    exporter = PrometheusExporter(server)
    for error in (-0.4, 0.2, 1.5):
        server.metrics.record("delay_prediction_error_steps", error, {"client": "arm", "model": "noop"})
    families = {f.name: f for f in text_string_to_metric_families(exporter.render().decode())}

    def sample(family: str, suffix: str, **labels: str) -> float:
        return next(
            s.value
            for s in families[family].samples
            if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items())
        )

    signed = "inferential_delay_prediction_error_steps"
    absolute = "inferential_delay_prediction_abs_error_steps"
    assert sample(signed, "_count", model="noop") == 3
    assert sample(signed, "_bucket", model="noop", le="0.0") == 1  # the one early reply
    assert sample(absolute, "_sum", model="noop") == pytest.approx(2.1)
    assert sample(absolute, "_bucket", model="noop", le="1.0") == 2  # |-0.4| and 0.2 within one step
