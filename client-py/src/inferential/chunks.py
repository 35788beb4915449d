"""The robot side of chunked policies: a queue of future actions, one per control step.

A chunked policy answers one observation with H actions for H consecutive control steps.
The robot executes them one per step while the next chunk is computed, so chunks overlap.
:class:`ActionChunkQueue` keeps one action per future step:

- ``add(actions, start_step, valid_until_ns)`` aligns a chunk to control steps (its row *i*
  is the action for step ``start_step + i``), drops the rows for steps already executed,
  and merges rows for steps that already hold an action with the queue's blend;
- ``pop()`` is called once per control step: it returns that step's action, or None when
  there is none (an **underrun**) or when it is past its ``valid_until_ns`` (a **hold**:
  the robot refuses a stale action rather than execute it);
- ``actions_remaining()`` is what the robot reports in its next observation.

The rules (the same in the Rust and C++ clients; docs/protocol.md "Action chunks"):
a step is executed at most once, steps only move forward, an expired action is never
returned, and every pop that returns None is counted as exactly one underrun or hold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

BlendFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
BLENDS = ("latest", "average", "exponential")


@dataclass
class ChunkQueueStats:
    """executed: actions returned. underruns: steps with no action. held: steps whose action
    had expired. merged: rows blended into an action already queued. late: rows dropped
    because their step had already been executed."""

    executed: int = 0
    underruns: int = 0
    held: int = 0
    merged: int = 0
    late: int = 0


class _Slot:
    __slots__ = ("action", "count", "valid_until_ns")

    def __init__(self, action: np.ndarray, valid_until_ns: Optional[int]) -> None:
        self.action = action
        self.count = 1
        self.valid_until_ns = valid_until_ns


class ActionChunkQueue:
    """Future actions by control step, merged across overlapping chunks.

    Args:
        blend: how a new row merges with the action already queued for its step:
            ``"latest"`` (the new row replaces it), ``"average"`` (the mean of every row
            proposed for that step), ``"exponential"`` (``new_weight * new + (1 -
            new_weight) * old``), or a function ``f(old, new) -> action``.
        new_weight: the weight of the new row with ``"exponential"`` (0 < w <= 1).
        start_step: the first control step ``pop()`` serves.
        clock: wall clock in Unix ns, compared with ``valid_until_ns`` (injected in tests).
    """

    def __init__(
        self,
        blend: Union[str, BlendFn] = "latest",
        *,
        new_weight: float = 0.7,
        start_step: int = 0,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if isinstance(blend, str) and blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)} or a function, got {blend!r}")
        if not 0.0 < new_weight <= 1.0:
            raise ValueError(f"new_weight must be in (0, 1], got {new_weight}")
        self._blend = blend
        self._new_weight = float(new_weight)
        self._clock = clock
        self._next_step = int(start_step)
        self._slots: dict[int, _Slot] = {}
        self.stats = ChunkQueueStats()

    @property
    def next_step(self) -> int:
        """The control step the next ``pop()`` serves."""
        return self._next_step

    def add(self, actions: np.ndarray, start_step: int, valid_until_ns: Optional[int] = None) -> int:
        """Queue a chunk whose row ``i`` is the action for step ``start_step + i``.

        Rows for steps already executed are dropped (counted ``late``). Returns the number
        of rows queued or merged. ``valid_until_ns`` (Unix ns) applies to every row of this
        chunk, and to an action it merges into (the newer chunk vouches for it).
        """
        chunk = np.asarray(actions)
        if chunk.ndim < 1:
            raise ValueError("a chunk needs at least one dimension (its rows are steps)")
        queued = 0
        for i in range(chunk.shape[0]):
            step = int(start_step) + i
            if step < self._next_step:
                self.stats.late += 1
                continue
            row = np.array(chunk[i], dtype=np.float64 if chunk.dtype.kind in "iub" else chunk.dtype)
            slot = self._slots.get(step)
            if slot is None:
                self._slots[step] = _Slot(row, valid_until_ns)
            else:
                slot.action = self._merge(slot, row)
                slot.count += 1
                slot.valid_until_ns = valid_until_ns
                self.stats.merged += 1
            queued += 1
        return queued

    def _merge(self, slot: _Slot, new: np.ndarray) -> np.ndarray:
        blend = self._blend
        if blend == "latest":
            return new
        if blend == "average":
            return slot.action + (new - slot.action) / (slot.count + 1)
        if blend == "exponential":
            return self._new_weight * new + (1.0 - self._new_weight) * slot.action
        assert callable(blend)
        return np.asarray(blend(slot.action, new))

    def pop(self) -> Optional[np.ndarray]:
        """The action for the current step, then move to the next step.

        None when no action is queued for this step (an underrun) or when it expired (a
        hold); either way the step is spent.
        """
        step = self._next_step
        self._next_step = step + 1
        slot = self._slots.pop(step, None)
        if slot is None:
            self.stats.underruns += 1
            return None
        if slot.valid_until_ns is not None and self._clock() > slot.valid_until_ns:
            self.stats.held += 1
            return None
        self.stats.executed += 1
        return slot.action

    def actions_remaining(self) -> int:
        """Valid actions queued for consecutive steps from ``next_step``: what the robot
        sends as ``actions_remaining``."""
        now = self._clock()
        count, step = 0, self._next_step
        while True:
            slot = self._slots.get(step)
            if slot is None or (slot.valid_until_ns is not None and now > slot.valid_until_ns):
                return count
            count += 1
            step += 1

    def add_result(self, result: Any, start_step: Optional[int] = None) -> int:
        """Queue the ``actions`` of a chunked reply (an :class:`inferential.Result`): its rows
        start at ``result.first_action_step`` (the observation's ``control_step``, echoed;
        ``start_step`` when the reply has none, e.g. from a server that does not echo it)
        and expire at ``result.valid_until_ns``. Returns the rows queued or merged."""
        first = result.first_action_step
        if first is None:
            if start_step is None:
                raise ValueError("the reply carries no first_action_step: pass start_step")
            first = start_step
        return self.add(result["actions"], first, result.valid_until_ns)

    def peek(self, limit: Optional[int] = None) -> Optional[np.ndarray]:
        """The valid actions queued for consecutive steps from ``next_step`` (at most
        ``limit``), stacked into one array, without executing them; None when there are
        none. A chunked policy freezing the prefix it cannot change (real-time chunking)
        receives them with the next observation."""
        count = self.actions_remaining()
        if limit is not None:
            count = min(count, int(limit))
        if count <= 0:
            return None
        return np.stack([self._slots[self._next_step + i].action for i in range(count)])

    def clear(self) -> None:
        """Forget every queued action (e.g. after an emergency stop)."""
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)
