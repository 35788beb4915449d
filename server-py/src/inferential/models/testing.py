"""Tiny models with known behaviour, used by tests, benchmarks and conformance runs."""

from __future__ import annotations

import time

import numpy as np

from inferential.dispatch.base import Model


class NoOp(Model):
    """Answers every request with a 7-float action of zeros: measures pure overhead."""

    max_batch_size = 32

    def execute(self, batch):
        action = np.zeros(7, dtype=np.float32)
        return [{"actions": action} for _ in batch]


class Echo(Model):
    """Returns every input tensor unchanged and metadata strings as metadata."""

    max_batch_size = 16

    def execute(self, batch):
        return [dict(inputs) for inputs in batch]


class Sleep(Model):
    """Service time ``base_ms + per_item_ms * batch``: a stand-in for a GPU policy's timing.

    ``time.sleep`` oversleeps (0.1-0.15 ms per call on a quiet 2-core VM, more under
    load) and the code after it runs slowly on a core that has been idle (building the
    outputs after a 6 ms sleep: about 80 µs on that VM, 10 µs warm), which would make
    the stand-in slower than the cost it states and every capacity figure built on that
    cost wrong by a few percent. So each call sleeps its time less a correction, the
    moving average of how much the calls before took too long (at most
    ``MAX_CORRECTION_MS``): calls take the stated time on average. Nothing spins.
    """

    max_batch_size = 8
    #: The largest correction taken off a call's sleep (ms).
    MAX_CORRECTION_MS = 1.0

    def __init__(self, base_ms: float = 1.0, per_item_ms: float = 0.0) -> None:
        self.base_ms = base_ms
        self.per_item_ms = per_item_ms
        self._correction_s = 0.0  # worker threads may race on it harmlessly

    def execute(self, batch):
        start = time.perf_counter()
        target = (self.base_ms + self.per_item_ms * len(batch)) / 1000.0
        correction = self._correction_s
        time.sleep(max(0.0, target - correction))
        outputs = [{"actions": np.full(7, float(i), dtype=np.float32)} for i in range(len(batch))]
        excess = time.perf_counter() - start - target  # > 0: this call took too long
        self._correction_s = min(max(0.0, correction + 0.1 * excess), self.MAX_CORRECTION_MS / 1000.0)
        return outputs


class Failing(Model):
    """Fails requests whose metadata has fail="yes"; raises for the whole batch on fail="batch"."""

    def execute(self, batch):
        if any(inputs.get("fail") == "batch" for inputs in batch):
            raise RuntimeError("batch failure requested")
        return [
            ValueError("failure requested") if inputs.get("fail") == "yes" else {"ok": np.ones(1, np.int32)}
            for inputs in batch
        ]


class Flaky(Model):
    """Fails the first ``failures`` batches as a whole, then works: exercises retries."""

    def __init__(self, failures: int = 1) -> None:
        self.remaining = failures

    def execute(self, batch):
        if self.remaining > 0:
            self.remaining -= 1
            raise RuntimeError("transient failure")
        return [{"actions": np.ones(2, np.float32)} for _ in batch]
