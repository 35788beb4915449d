"""A chunked reaching policy that honours the frozen prefix of real-time chunking (RTC).

The task: a 7-joint arm under position control must reach the joint pose that puts its
tool on a target (u, v), known to the robot. A scripted expert moves the joints along an
exponential approach with time constant ``tau_steps``; at load time the policy is fitted
to the expert by ridge regression on random ReLU features of (joints, target), from data
it generates itself with a fixed seed (nothing is downloaded; a load takes milliseconds).
It answers each observation with ``horizon`` future joint positions, one per control step.

Like a diffusion or flow policy, two calls never return quite the same chunk: every chunk
gets a smooth random deviation of size ``noise`` (an offset plus a drift along the
chunk). Overlapping chunks therefore disagree, and executing them naively (switching to
the newest chunk at once) makes the arm jump: that is what the robot's blend and RTC fix.

**Frozen prefix (RTC).** Row 0 of the chunk is the action for the observation's control
step. By the time the chunk reaches the robot it has already executed the next *d*
actions from its previous chunk, *d* being the inference delay in steps. So with
``freeze`` on, when the robot sends the actions it still has queued (``prev_actions``,
rows for the same steps as this chunk's rows), rows ``[0, f)`` of the answer equal them,
``f = min(d, len(prev_actions), horizon)``, and the rest continues from row ``f - 1``
without a jump: the difference to the policy's own plan fades out over the overlap with
the previous chunk (at least ``horizon // 4`` steps). *d* is the server's prediction
(the ``inference_delay_steps`` input, docs/protocol.md "Action chunks"), or
``fixed_delay_steps`` when set, the hand-tuned value RTC implementations otherwise ask for.

**Service time.** The numpy work takes microseconds; ``base_ms + per_item_ms * batch``
(slept, off the CPU) stands in for a GPU policy's batch time, so a demo can put the model
at a chosen share of its capacity. ``busy_s`` accumulates the time spent in ``execute``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional

import numpy as np

from inferential.dispatch.base import Model

JOINTS = 7
DELAY_INPUT = "inference_delay_steps"
PREFIX_INPUT = "prev_actions"

# The expert's map from the target (u, v) to the joint pose reaching it (smooth, fixed).
_GOAL = np.random.default_rng(11).normal(scale=0.8, size=(4, JOINTS)).astype(np.float32)


def goal_pose(target: np.ndarray) -> np.ndarray:
    """The joint pose that reaches ``target`` = (u, v) (batched over leading dimensions)."""
    u, v = target[..., 0], target[..., 1]
    basis = np.stack([u, v, u * v, np.sin(3.0 * u)], axis=-1)
    return (basis @ _GOAL).astype(np.float32)


def expert_chunk(joints: np.ndarray, target: np.ndarray, horizon: int, tau_steps: float) -> np.ndarray:
    """The expert's next ``horizon`` joint positions from ``joints`` toward ``target``'s pose."""
    alpha = 1.0 - np.exp(-np.arange(1, horizon + 1, dtype=np.float32) / tau_steps)
    goal = goal_pose(target)
    return (joints[..., None, :] + alpha[:, None] * (goal - joints)[..., None, :]).astype(np.float32)


class ChunkedPolicy(Model):
    """Inputs: ``joints`` (7,) float32, ``target`` (2,) float32; optional ``prev_actions``
    (k, 7) float32, the robot's queued actions from the observation's step on; the server's
    ``inference_delay_steps``. Output: ``actions`` (horizon, 7) float32."""

    max_batch_size = 8
    allow_inline = False  # it sleeps its stand-in service time

    def __init__(
        self,
        horizon: int = 16,
        hidden: int = 64,
        train_samples: int = 2000,
        tau_steps: float = 8.0,
        noise: float = 0.03,
        freeze: bool = True,
        fixed_delay_steps: Optional[int] = None,
        base_ms: float = 0.0,
        per_item_ms: float = 0.0,
        seed: int = 0,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = int(horizon)
        self.hidden = int(hidden)
        self.train_samples = int(train_samples)
        self.tau_steps = float(tau_steps)
        self.noise = float(noise)
        self.freeze = bool(freeze)
        self.fixed_delay_steps = None if fixed_delay_steps is None else int(fixed_delay_steps)
        self.base_ms = float(base_ms)
        self.per_item_ms = float(per_item_ms)
        self.seed = seed
        self.fit_error = float("nan")
        self.busy_s = 0.0
        self.batches = 0
        self.frozen_rows = 0
        self._lock = threading.Lock()  # the counters, with concurrency > 1

    # -- fitting -----------------------------------------------------------------------

    def _features(self, joints: np.ndarray, target: np.ndarray) -> np.ndarray:
        x = np.concatenate([joints, target], axis=1)
        hidden = np.maximum(x @ self._w_in + self._b_in, 0.0)
        return np.concatenate([hidden, x, target[:, :1] * target[:, 1:2], np.ones((len(x), 1), np.float32)], axis=1)

    def load(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._w_in = rng.normal(scale=1.0, size=(JOINTS + 2, self.hidden)).astype(np.float32)
        self._b_in = rng.normal(scale=0.5, size=(self.hidden,)).astype(np.float32)
        n = self.train_samples
        joints = rng.normal(scale=0.6, size=(n, JOINTS)).astype(np.float32)
        target = rng.uniform(0.1, 0.9, size=(n, 2)).astype(np.float32)
        y = expert_chunk(joints, target, self.horizon, self.tau_steps).reshape(n, -1)
        x = self._features(joints, target)
        ridge = 1e-3 * np.eye(x.shape[1], dtype=np.float32)
        self._w_out = np.linalg.solve(x.T @ x + ridge, x.T @ y).astype(np.float32)
        self.fit_error = float(np.sqrt(np.mean((x @ self._w_out - y) ** 2)))
        self._rng = np.random.default_rng(self.seed + 1)

    # -- inference ---------------------------------------------------------------------

    def plan(self, joints: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The policy's own chunks (batch, horizon, 7), before any frozen prefix."""
        b, h = len(joints), self.horizon
        chunks: np.ndarray = (self._features(joints, target) @ self._w_out).reshape(b, h, JOINTS)
        if self.noise > 0:  # a sample's smooth deviation: an offset and a drift along the chunk
            offset = self._rng.normal(scale=self.noise, size=(b, 1, JOINTS))
            drift = self._rng.normal(scale=self.noise, size=(b, 1, JOINTS))
            chunks = chunks + offset + drift * (np.arange(h)[None, :, None] / h)
        return chunks.astype(np.float32)

    def delay_steps(self, inputs: dict[str, Any]) -> int:
        """The prefix length the robot executes meanwhile: the hand-set value when configured,
        else the server's prediction (0 when the robot sent no control rate)."""
        if self.fixed_delay_steps is not None:
            return self.fixed_delay_steps
        return int(inputs.get(DELAY_INPUT, 0))

    def continue_from(self, own: np.ndarray, prev: Optional[np.ndarray], delay: int) -> tuple[np.ndarray, int]:
        """``own`` with its first rows replaced by the robot's queued actions ``prev`` (RTC),
        and how many rows were frozen."""
        if prev is None or not self.freeze:
            return own, 0
        prev = np.asarray(prev, dtype=np.float32)
        if prev.ndim != 2 or prev.shape[1] != own.shape[1]:
            raise ValueError(f"{PREFIX_INPUT} must be (k, {own.shape[1]}), got {prev.shape}")
        h, k = len(own), len(prev)
        frozen = max(0, min(delay, k, h))
        if frozen == 0:
            return own, 0
        out = own.copy()
        out[:frozen] = prev[:frozen]
        # After the frozen rows, start from the last frozen action and fade the gap to the
        # policy's own plan over the overlap with the previous chunk: no jump at the seam.
        gap = prev[frozen - 1] - own[frozen - 1]
        fade = max(k - frozen, h // 4, 1)
        i = np.arange(frozen, h)
        weight = np.clip(1.0 - (i - frozen + 1) / (fade + 1), 0.0, 1.0)[:, None]
        out[frozen:] = own[frozen:] + weight * gap
        return out, frozen

    def execute(self, batch: list[dict[str, Any]]) -> list[Any]:
        started = time.perf_counter()
        joints = np.stack([np.asarray(obs["joints"], dtype=np.float32).reshape(JOINTS) for obs in batch])
        target = np.stack([np.asarray(obs["target"], dtype=np.float32).reshape(2) for obs in batch])
        own = self.plan(joints, target)
        results: list[Any] = []
        frozen_total = 0
        for obs, chunk in zip(batch, own, strict=True):
            try:
                out, frozen = self.continue_from(chunk, obs.get(PREFIX_INPUT), self.delay_steps(obs))
            except ValueError as err:  # this request's bad prefix fails it alone
                results.append(err)
                continue
            frozen_total += frozen
            results.append({"actions": out})
        # The stand-in for a GPU's batch time, whatever the numpy work took.
        remaining = (self.base_ms + self.per_item_ms * len(batch)) / 1000.0 - (time.perf_counter() - started)
        if remaining > 0:
            time.sleep(remaining)
        with self._lock:
            self.busy_s += time.perf_counter() - started
            self.batches += 1
            self.frozen_rows += frozen_total
        return results
