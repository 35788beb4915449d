"""A fixed-rate control loop over a chunked policy: queue, connection and clock in a few lines.

::

    with Connection(server="tcp://host:5555") as conn:
        loop = ControlLoop(conn.model("policy"), rate_hz=50, blend="exponential")
        loop.run(observe=lambda: {"image": camera(), "joints": arm.q()}, act=arm.command, duration_s=60)
        print(loop.stats, loop.queue.stats)

Every control step (:meth:`ControlLoop.step`) it

1. takes the replies that arrived (without waiting) and adds their ``actions`` to its
   :class:`~inferential.chunks.ActionChunkQueue` at the reply's ``first_action_step``,
   expiring at its ``valid_until_ns``;
2. when no request is in flight and the queue holds at most ``request_below`` actions,
   sends a fresh observation with ``control_step`` (the step it is taken at),
   ``actions_remaining`` and ``control_rate_hz`` (so the server ranks it by runway and
   predicts its delay in steps), and the queued actions as the ``prev_actions`` tensor
   (what a real-time-chunking policy keeps as the frozen prefix of its next chunk);
3. pops this step's action: None on an underrun or a hold (``queue.stats`` counts them).

:meth:`ControlLoop.run` calls it at ``rate_hz`` on the monotonic clock. The loop never
waits for a reply: the robot keeps executing its queue while the next chunk is computed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

import numpy as np

from inferential.chunks import ActionChunkQueue, BlendFn
from inferential.errors import RequestFailed

Inputs = Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]
PREFIX_INPUT = "prev_actions"


class ChunkArrival(NamedTuple):
    """One chunk as the robot received it: ``sent_step`` (its observation's control step),
    ``arrived_step`` (the step the robot was about to execute when it was added),
    the server's ``predicted_delay_steps`` and ``actual_delay_steps``, and the round trip."""

    sent_step: int
    arrived_step: int
    predicted_delay_steps: float
    actual_delay_steps: float
    round_trip_ms: float


@dataclass
class ControlLoopStats:
    """steps: control steps run. requests: observations sent. chunks: OK replies queued.
    failed: replies with an error status, by status name. lost: requests given up after
    ``reply_timeout_s`` without a reply. overruns: periods the loop started late (the
    previous step took longer than a period; the schedule restarts from then).
    stale_chunks: OK replies that arrived after their ``valid_until_ns``, and stale_rows
    their rows: the queue executes none of them (each is dropped late or refused held)."""

    steps: int = 0
    requests: int = 0
    chunks: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    overruns: int = 0
    stale_chunks: int = 0
    stale_rows: int = 0


class ControlLoop:
    """Ties a model handle (sync ``Connection.model()``), an ActionChunkQueue and a fixed
    control rate together.

    Args:
        model: the model handle observations go to.
        rate_hz: the control rate: one action per step, one step per ``1 / rate_hz`` s.
        queue: the queue to fill (default: a new one with ``blend`` and ``new_weight``).
        request_below: ask for a new chunk once the queue holds at most this many actions
            (and no request is in flight). None: half the length of the last chunk
            received (as soon as possible before the first).
        prefix_input: the input name the queued actions are sent under with each
            observation; None sends none.
        reply_timeout_s: a request unanswered this long is given up (counted ``lost``) and
            a new one may go out.
        clock, sleep: monotonic seconds and the sleep that paces :meth:`run` (tests inject both).
        wall_clock: Unix ns, compared with a reply's ``valid_until_ns`` to count stale chunks
            (give the queue's clock when it has a fake one).
    """

    def __init__(
        self,
        model: Any,
        rate_hz: float,
        *,
        queue: Optional[ActionChunkQueue] = None,
        blend: Union[str, BlendFn] = "latest",
        new_weight: float = 0.7,
        request_below: Optional[int] = None,
        prefix_input: Optional[str] = PREFIX_INPUT,
        reply_timeout_s: float = 1.0,
        history: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.model = model
        self.rate_hz = float(rate_hz)
        self.queue = queue if queue is not None else ActionChunkQueue(blend, new_weight=new_weight)
        self.request_below = request_below
        self.prefix_input = prefix_input
        self.reply_timeout_s = reply_timeout_s
        self.stats = ControlLoopStats()
        #: The most recent chunks received (bounded by ``history``).
        self.arrivals: deque[ChunkArrival] = deque(maxlen=history)
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._last_chunk_rows = 0
        # (request id, control step, monotonic send time) of the request in flight.
        self._inflight: Optional[tuple[int, int, float]] = None

    # -- one step ----------------------------------------------------------------------

    def step(self, inputs: Inputs) -> Optional[np.ndarray]:
        """Run one control step: take arrived chunks, ask for one if due, pop this step's action.

        ``inputs`` is the observation (tensors and metadata, as ``observe()`` takes them)
        or a function returning it, called only when an observation goes out. Returns the
        action to execute, or None (an underrun or a hold: the robot holds still).
        """
        self._collect()
        remaining = self.queue.actions_remaining()
        if self._inflight is None and remaining <= self._threshold():
            self._send(inputs, remaining)
        self.stats.steps += 1
        return self.queue.pop()

    def _threshold(self) -> int:
        if self.request_below is not None:
            return self.request_below
        return self._last_chunk_rows // 2  # 0 before the first chunk: ask at once

    def _send(self, inputs: Inputs, remaining: int) -> None:
        obs = dict(inputs() if callable(inputs) else inputs)
        step = self.queue.next_step
        if self.prefix_input is not None:
            prefix = self.queue.peek()
            if prefix is not None:
                obs[self.prefix_input] = np.ascontiguousarray(prefix, dtype=np.float32)
        rid = self.model.observe(**obs, control_step=step, actions_remaining=remaining, control_rate_hz=self.rate_hz)
        self._inflight = (rid, step, self._clock())
        self.stats.requests += 1

    def _collect(self) -> None:
        """Queue every reply that arrived, without waiting."""
        while True:
            try:
                result = self.model.get_result(timeout_ms=0)
            except RequestFailed as err:  # an error status: the robot keeps its queue
                name = err.status_name
                self.stats.failed[name] = self.stats.failed.get(name, 0) + 1
                self._settle(err.request_id)
                continue
            if result is None:
                break
            sent = self._settle(result.request_id)
            start = result.first_action_step
            if start is None:  # a server that does not echo control_step: our own record
                if sent is None:
                    continue  # nothing to align it with
                start = sent[1]
            valid_until = result.valid_until_ns
            if valid_until is not None and self._wall_clock() > valid_until:
                self.stats.stale_chunks += 1
                self.stats.stale_rows += int(np.shape(result["actions"])[0])
            self.queue.add_result(result, start_step=start)
            self._last_chunk_rows = int(np.shape(result["actions"])[0])
            self.stats.chunks += 1
            rtt = (self._clock() - sent[2]) * 1000.0 if sent is not None else float("nan")
            self.arrivals.append(
                ChunkArrival(start, self.queue.next_step, result.predicted_delay_steps, result.actual_delay_steps, rtt)
            )
        inflight = self._inflight
        if inflight is not None and self._clock() - inflight[2] > self.reply_timeout_s:
            self._inflight = None
            self.stats.lost += 1

    def _settle(self, request_id: int) -> Optional[tuple[int, int, float]]:
        """The in-flight record of ``request_id`` (cleared), or None for another request."""
        inflight = self._inflight
        if inflight is not None and inflight[0] == request_id:
            self._inflight = None
            return inflight
        return None

    # -- the loop ----------------------------------------------------------------------

    def run(
        self,
        observe: Inputs,
        act: Callable[[Optional[np.ndarray]], Any],
        *,
        steps: Optional[int] = None,
        duration_s: Optional[float] = None,
    ) -> ControlLoopStats:
        """Call :meth:`step` every ``1 / rate_hz`` s and hand its action to ``act`` (None on
        an underrun or a hold), for ``steps`` steps or ``duration_s`` seconds."""
        if steps is None and duration_s is None:
            raise ValueError("give steps or duration_s")
        period = 1.0 / self.rate_hz
        start = self._clock()
        tick = start
        done = 0
        while (steps is None or done < steps) and (duration_s is None or tick - start < duration_s):
            act(self.step(observe))
            done += 1
            tick += period
            wait = tick - self._clock()
            if wait > 0:
                self._sleep(wait)
            elif wait < -period:
                # A whole period late: restart the schedule instead of bursting to catch up
                # (a robot executes one action per period, not several at once).
                self.stats.overruns += 1
                tick = self._clock()
        return self.stats
