"""A small, real visuomotor policy: camera image + joint state -> action chunk.

The task: a coloured target appears somewhere in the camera image and the arm
must move its 7 joints toward the pose that reaches it. A scripted expert knows
the answer; at load time the policy is fitted to the expert by behaviour cloning
(random ReLU features on a pooled image, then ridge regression), from data it
generates itself with a fixed seed: nothing is downloaded and a load takes well
under a second. Inference is batched numpy: one matrix product per batch.
"""

from __future__ import annotations

import numpy as np

from inferential.dispatch.base import Model

JOINTS = 7
IMAGE_SIZE = 224
POOL = 16  # the image is average-pooled to POOL x POOL before the features


def render_scene(u: float, v: float, size: int = IMAGE_SIZE, rng: np.random.Generator | None = None) -> np.ndarray:
    """An RGB uint8 image (size, size, 3) with a red target centred at (u, v) in [0, 1]."""
    rng = rng or np.random.default_rng()
    img = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (xx - u * size) ** 2 + (yy - v * size) ** 2 < (size * 0.08) ** 2
    img[mask] = (230, 30, 30)
    return img


# The expert: joint targets are a fixed smooth function of the target's position.
_EXPERT = np.random.default_rng(7).normal(size=(3, JOINTS)).astype(np.float32)


def expert_target(u: float, v: float) -> np.ndarray:
    return (np.array([u, v, u * v], dtype=np.float32) @ _EXPERT).astype(np.float32)


def expert_chunk(joints: np.ndarray, target: np.ndarray, horizon: int) -> np.ndarray:
    steps = np.arange(1, horizon + 1, dtype=np.float32)[:, None] / horizon
    return (joints[None, :] + steps * (target - joints)[None, :]).astype(np.float32)


class VisionPolicy(Model):
    """Predicts ``horizon`` future joint positions (an action chunk) per observation.

    Inputs: ``image`` (224, 224, 3) uint8 and ``joints`` (7,) float32.
    Output: ``actions`` (horizon, 7) float32.
    """

    max_batch_size = 16

    def __init__(self, horizon: int = 8, hidden: int = 256, train_samples: int = 1500, seed: int = 0) -> None:
        self.horizon = horizon
        self.hidden = hidden
        self.train_samples = train_samples
        self.seed = seed
        self.fit_error = float("nan")

    # -- features --------------------------------------------------------------

    @staticmethod
    def _pool(images: np.ndarray) -> np.ndarray:
        b, h, w, _ = images.shape
        f = h // POOL
        x = images[:, : f * POOL, : f * POOL, :].astype(np.float32)
        redness = x[..., 0] - 0.5 * (x[..., 1] + x[..., 2])
        return redness.reshape(b, POOL, f, POOL, f).mean(axis=(2, 4)).reshape(b, POOL * POOL) / 255.0

    def _features(self, images: np.ndarray, joints: np.ndarray) -> np.ndarray:
        pooled = self._pool(images)
        hidden = np.maximum(pooled @ self._w_in + self._b_in, 0.0)
        return np.concatenate([hidden, joints, np.ones((len(joints), 1), np.float32)], axis=1)

    # -- lifecycle -------------------------------------------------------------

    def load(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._w_in = rng.normal(scale=3.0, size=(POOL * POOL, self.hidden)).astype(np.float32)
        self._b_in = rng.normal(scale=0.5, size=(self.hidden,)).astype(np.float32)
        n = self.train_samples
        size = 64  # training images are rendered small: pooling gives the same 16x16 view, faster
        uv = rng.uniform(0.15, 0.85, size=(n, 2)).astype(np.float32)
        joints = rng.normal(scale=0.5, size=(n, JOINTS)).astype(np.float32)
        images = np.stack([render_scene(u, v, size, rng) for u, v in uv])
        targets = np.stack(
            [
                expert_chunk(j, expert_target(u, v), self.horizon).reshape(-1)
                for j, (u, v) in zip(joints, uv, strict=True)
            ]
        )
        x = self._features(images, joints)
        ridge = 1e-2 * np.eye(x.shape[1], dtype=np.float32)
        self._w_out = np.linalg.solve(x.T @ x + ridge, x.T @ targets).astype(np.float32)
        self.fit_error = float(np.sqrt(np.mean((x @ self._w_out - targets) ** 2)))

    def execute(self, batch):
        images = np.stack([np.asarray(obs["image"]) for obs in batch])
        joints = np.stack([np.asarray(obs["joints"], dtype=np.float32) for obs in batch])
        chunks = (self._features(images, joints) @ self._w_out).reshape(len(batch), self.horizon, JOINTS)
        return [{"actions": chunk} for chunk in chunks]
