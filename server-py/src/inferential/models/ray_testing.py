"""Small numpy models for the Ray backend's tests and benchmark.

They live in the package (not in tests/) because Ray Serve replicas import
models by name in their own processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from inferential.dispatch.base import Inputs, Model, Outcome


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray
        return "local"


class LinearPolicy(Model):
    """actions = gain * state + mean(image) / 255; also says where it ran.

    ``delay_s`` (an option, or a request's metadata string) makes a batch take
    at least that long: a slower model, or a call still in flight when needed.
    """

    max_batch_size = 16

    def __init__(self, gain: float = 2.0, delay_s: float = 0.0) -> None:
        self.gain = np.float32(gain)
        self.delay_s = delay_s
        self.loads = 0

    def load(self) -> None:
        self.loads += 1
        self.node = _node_id()

    def execute(self, batch: list[Inputs]) -> list[Outcome]:
        delay = max(float(inputs.get("delay_s", self.delay_s)) for inputs in batch)
        if delay:
            time.sleep(delay)
        out: list[Outcome] = []
        for inputs in batch:
            actions = inputs["state"].astype(np.float32) * self.gain
            image = inputs.get("image")
            if image is not None:
                actions = actions + np.float32(image.mean() / 255.0)
            out.append(
                {
                    "actions": actions,
                    "node": self.node,
                    "pid": str(os.getpid()),
                    "batch_size": np.int64(len(batch)),
                    "loads": np.int64(self.loads),
                }
            )
        return out


class PickyPolicy(Model):
    """Fails the requests whose ``state`` holds a NaN; the rest are answered.

    A request with metadata ``explode="yes"`` makes it fail the whole batch.
    """

    def execute(self, batch: list[Inputs]) -> list[Outcome]:
        if any(inputs.get("explode") == "yes" for inputs in batch):
            raise RuntimeError("the whole batch exploded")
        out: list[Outcome] = []
        for inputs in batch:
            state = inputs["state"]
            if np.isnan(state).any():
                out.append(ValueError("state holds NaN"))
            else:
                out.append({"actions": -state})
        return out


class SleepyPolicy(Model):
    """Sleeps ``sleep_s`` (a metadata string) before answering: a hung model."""

    def execute(self, batch: list[Inputs]) -> list[Outcome]:
        time.sleep(max(float(inputs.get("sleep_s", "0")) for inputs in batch))
        return [{"actions": inputs["state"]} for inputs in batch]


def double(inputs: Inputs) -> Any:
    """A plain per-request function: doubles ``state``; rejects negative states."""
    state = inputs["state"]
    if (state < 0).any():
        raise ValueError("negative state")
    return state * 2


class LegacyInferApp:
    """An application in the Inferential 1.x style: ``infer(obs) -> array``."""

    def infer(self, obs: dict[str, Any]) -> np.ndarray:
        state = obs["state"]
        if (state < 0).any():
            raise ValueError("negative state")
        return state + 1
