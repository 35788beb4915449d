"""In-memory metrics: ring buffers of recent points, counters, sinks and callbacks.

Recording is a deque append, a call of each sink (the Prometheus exporter's
aggregation: a few microseconds, on the recording thread) and, when callbacks exist,
a queue put: user callbacks (``@server.on_metric``) run on a separate thread, never
on the event loop.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

logger = logging.getLogger("inferential.metrics")

Labels = Mapping[str, str]
Callback = Callable[[str, float, dict], Any]
#: a counter: its name and its labels, sorted
CounterKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Stats:
    count: int
    mean: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float

    @classmethod
    def empty(cls) -> "Stats":
        nan = float("nan")
        return cls(0, nan, nan, nan, nan, nan, nan)


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if lo == hi:
        return sorted_values[lo]
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _matches(point_labels: Labels, wanted: Optional[Labels]) -> bool:
    return not wanted or all(point_labels.get(k) == v for k, v in wanted.items())


class MetricsStore:
    """Ring buffer per metric (``ring_buffer_size`` points) plus monotonic counters."""

    #: Robots whose counters (shed counts by robot) are kept apart; the rest share "_other".
    MAX_COUNTER_ROBOTS = 1000

    def __init__(self, ring_buffer_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self._size = ring_buffer_size
        self._clock = clock
        self._series: dict[str, deque[tuple[float, float, dict]]] = defaultdict(lambda: deque(maxlen=self._size))
        self._counters: dict[CounterKey, float] = defaultdict(float)
        self._counter_robots: set[str] = set()
        self._callbacks: list[Callback] = []
        self._sinks: tuple[Callback, ...] = ()
        self._queue: "queue.SimpleQueue[tuple[str, float, dict] | None]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    # -- recording (hot path) -----------------------------------------------------

    def record(self, name: str, value: float, labels: Optional[dict] = None) -> None:
        labels = labels or {}
        value = float(value)
        self._series[name].append((self._clock(), value, labels))
        for sink in self._sinks:
            sink(name, value, labels)
        if self._callbacks:
            self._queue.put((name, value, labels))

    def increment(self, name: str, labels: Optional[dict] = None, amount: float = 1.0) -> None:
        self.increment_key(self.counter_key(name, labels), labels, amount)

    def counter_key(self, name: str, labels: Optional[dict] = None) -> CounterKey:
        """The counter ``increment(name, labels)`` adds to. A caller that counts the same
        series often keeps it and calls ``increment_key`` (the key of a robot-labelled
        counter is decided once, at its first use)."""
        key = (name, tuple(sorted((labels or {}).items())))
        if key not in self._counters and labels and "client" in labels:
            # Robot-labelled counters: client ids are self-declared, so past
            # MAX_COUNTER_ROBOTS robots the rest count under client="_other".
            seen = self._counter_robots
            if labels["client"] not in seen:
                if len(seen) >= self.MAX_COUNTER_ROBOTS:
                    key = (name, tuple(sorted({**labels, "client": "_other"}.items())))
                else:
                    seen.add(labels["client"])
        return key

    def increment_key(self, key: CounterKey, labels: Optional[dict] = None, amount: float = 1.0) -> None:
        """``increment`` of the counter ``key`` (from ``counter_key``) for ``labels``."""
        self._counters[key] += amount
        self.record(key[0], amount, labels)

    # -- sinks and callbacks ------------------------------------------------------

    def add_sink(self, sink: Callback) -> Callback:
        """Call ``sink(name, value, labels)`` with every point, at once, on the thread
        that records it (the event loop's, or a model worker's). For aggregation that
        costs about what the append does (the Prometheus exporter's): a sink must be
        quick, thread-safe and must not raise. Anything slower is a callback."""
        with self._lock:
            self._sinks = (*self._sinks, sink)
        return sink

    def remove_sink(self, sink: Callback) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def on_metric(self, callback: Callback) -> Callback:
        with self._lock:
            self._callbacks.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._deliver, name="metric-callbacks", daemon=True)
                self._thread.start()
        return callback

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            name, value, labels = item
            for cb in list(self._callbacks):
                try:
                    cb(name, value, labels)
                except Exception:
                    logger.exception("metric callback %r failed", cb)

    def flush(self, timeout_s: float = 1.0) -> None:
        """Wait until queued callback deliveries are done (tests, shutdown)."""
        end = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < end:
            time.sleep(0.001)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=1.0)
            self._thread = None

    # -- queries ----------------------------------------------------------------

    def now(self) -> float:
        """The store's clock (wall seconds unless a test injected one): the time base of ``points``."""
        return self._clock()

    def points(self, name: str, window_seconds: Optional[float] = None) -> list[tuple[float, float, dict]]:
        """``(time, value, labels)`` of ``name`` recorded in the last ``window_seconds``
        (all that the ring buffer holds when None), oldest first. Safe from any
        thread: copying a deque is atomic under the GIL."""
        points = list(self._series.get(name, ()))
        if window_seconds is None:
            return points
        since = self._clock() - window_seconds
        return [p for p in points if p[0] >= since]

    def values(self, name: str, window_seconds: Optional[float] = None, labels: Optional[Labels] = None) -> list[float]:
        points = list(self._series.get(name, ()))
        since = self._clock() - window_seconds if window_seconds is not None else -math.inf
        return [v for t, v, lb in points if t >= since and _matches(lb, labels)]

    def get_stats(self, name: str, window_seconds: Optional[float] = None, labels: Optional[Labels] = None) -> Stats:
        vals = sorted(self.values(name, window_seconds, labels))
        if not vals:
            return Stats.empty()
        return Stats(
            count=len(vals),
            mean=sum(vals) / len(vals),
            min=vals[0],
            max=vals[-1],
            p50=percentile(vals, 50),
            p95=percentile(vals, 95),
            p99=percentile(vals, 99),
        )

    def get_latest(self, name: str, labels: Optional[Labels] = None) -> Optional[float]:
        for _, v, lb in reversed(self._series.get(name, ())):
            if _matches(lb, labels):
                return v
        return None

    def counter(self, name: str, labels: Optional[Labels] = None) -> float:
        """Sum of a counter over every label set matching ``labels``."""
        return sum(v for (n, lbs), v in list(self._counters.items()) if n == name and _matches(dict(lbs), labels))

    def counters(self) -> dict[str, list[tuple[dict, float]]]:
        out: dict[str, list[tuple[dict, float]]] = defaultdict(list)
        for (n, lbs), v in list(self._counters.items()):
            out[n].append((dict(lbs), v))
        return dict(out)

    def names(self) -> list[str]:
        return sorted(self._series)

    def snapshot(self, window_seconds: Optional[float] = None) -> dict[str, dict[str, Any]]:
        """Every metric's latest value and stats; counters' totals."""
        snap: dict[str, dict[str, Any]] = {}
        for name in self.names():
            s = self.get_stats(name, window_seconds)
            snap[name] = {"latest": self.get_latest(name), **s.__dict__}
        for name, series in self.counters().items():
            snap.setdefault(name, {})["total"] = sum(v for _, v in series)
        return snap
