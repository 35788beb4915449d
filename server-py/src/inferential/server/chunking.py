"""Action chunks on the server side: the inference delay a model is told, and what a reply says.

A chunked policy answers with H actions for H consecutive control steps of the robot,
starting at the step its observation was taken (``control_step``). By the time the reply
reaches the robot, the robot has already executed some of those steps from its previous
chunk: real-time chunking (RTC) freezes that prefix and generates the rest. The server
knows that delay better than the robot does, because it schedules the request, so:

- when a batch is dispatched, :func:`predict_batch` predicts each request's delay, arrival
  at the server -> reply handed to the socket: the wait so far, the scheduler's mean
  service-time estimate for a batch of that size, and the transport margin
  (``scheduling.deadline_margin_ms``). For a request that sent ``control_rate_hz`` the
  prediction in control steps, rounded up, is the model's input ``inference_delay_steps``;
- when the batch finishes, :func:`valid_until_ns` dates the actions: the observation's
  timestamp plus the chunk's length at the robot's control period, capped by
  ``scheduling.action_max_age_ms`` when set;
- the reply (:func:`reply_fields`) carries the echoed step, the period, the predicted and
  the measured delay, and ``valid_until_ns`` (docs/protocol.md, "Action chunks").

No clock of its own: the callers pass their readings, so it is tested on a fake clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from inferential.scheduler.request import InferenceRequest

#: The model input carrying the predicted delay (control steps, an int, rounded up).
DELAY_INPUT = "inference_delay_steps"
#: The model output whose rows are the chunk's actions (one per control step).
ACTIONS_OUTPUT = "actions"


@dataclass
class ChunkReply:
    """The chunk fields of one OK reply (ModelResponse fields 16-20)."""

    first_action_step: Optional[int] = None
    action_period_ms: float = 0.0
    predicted_delay_steps: float = 0.0
    actual_delay_steps: float = 0.0
    valid_until_ns: int = 0


def predict_batch(
    batch: Sequence[InferenceRequest], now_ns: int, service_ms: Optional[float], margin_ms: float
) -> None:
    """Predict the delay of every request of a batch dispatched at ``now_ns`` (monotonic).

    ``service_ms`` is the scheduler's estimate for this batch size (None before the
    model's first measured batch: the prediction is then the wait and the margin only,
    an underestimate that lasts one batch). Only requests with a control rate get one
    (``predicted_delay_ms`` and the ``inference_delay_steps`` input): without a rate
    there are no steps to count, and the others' replies carry no delay.
    """
    ahead_ms = (service_ms or 0.0) + margin_ms
    for r in batch:
        rate = r.control_rate_hz
        if rate > 0:
            r.predicted_delay_ms = predicted = (now_ns - r.arrival_ns) / 1e6 + ahead_ms
            # Rounded up: freezing one action too many costs a little reactivity; one too
            # few lets the robot execute an action the new chunk then contradicts.
            r.inputs[DELAY_INPUT] = max(0, math.ceil(predicted * rate / 1000.0 - 1e-9))


def chunk_rows(outputs: Optional[Mapping[str, Any]]) -> Optional[int]:
    """Rows of the ``actions`` output (its first dimension), None without one."""
    if not outputs:
        return None
    actions = outputs.get(ACTIONS_OUTPUT)
    shape = getattr(actions, "shape", None)
    if not shape:  # missing, a string, or a 0-d array: no rows to date
        return None
    return int(shape[0])


def valid_until_ns(request: InferenceRequest, outputs: Optional[Mapping[str, Any]], max_age_ms: Optional[float]) -> int:
    """When the robot must stop executing this reply's actions (its wall clock, Unix ns); 0 = never.

    The observation's ``timestamp_ns`` plus the chunk's rows at the robot's control period
    (when it sent ``control_rate_hz``): the last row's step is then over, and a later
    action would be executed against a world the policy never saw. ``max_age_ms`` caps it
    for every reply, rate or not. 0 when neither applies or the robot sent no timestamp.
    """
    ts = request.observation_timestamp_ns
    if not ts:
        return 0
    limits = []
    rate = request.control_rate_hz
    if rate > 0:
        rows = chunk_rows(outputs)
        if rows is not None:
            limits.append(ts + int(rows * 1e9 / rate))
    if max_age_ms is not None and max_age_ms > 0:
        limits.append(ts + int(max_age_ms * 1e6))
    return min(limits) if limits else 0


def reply_fields(request: InferenceRequest, total_ms: float) -> Optional[ChunkReply]:
    """The chunk fields of an OK reply sent ``total_ms`` after arrival; None when the
    request carries nothing chunk-related (the reply then stays as it was)."""
    rate = request.control_rate_hz
    if rate <= 0 and request.control_step is None and not request.valid_until_ns:
        return None
    fields = ChunkReply(first_action_step=request.control_step, valid_until_ns=request.valid_until_ns)
    if rate > 0:
        fields.action_period_ms = 1000.0 / rate
        fields.actual_delay_steps = total_ms * rate / 1000.0
        if request.predicted_delay_ms is not None:
            fields.predicted_delay_steps = request.predicted_delay_ms * rate / 1000.0
    return fields
