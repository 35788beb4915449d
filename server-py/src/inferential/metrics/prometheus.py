"""Prometheus series for one server: histograms and counters summed as points are
recorded, and gauges read from the server's status at scrape time.

The metrics store hands every point to the exporter's sink on the thread that records
it (the event loop's, mostly): a bucket index found by bisection, two additions and a
dict lookup under a lock of the exporter's own, a few microseconds. Series are built
from those sums only when Prometheus scrapes. (Feeding ``prometheus_client``'s own
metric objects per point, through a thread, cost the loop about 100 µs per reply:
a third of its throughput with the no-op model.)
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from typing import Any, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from inferential.server.status import model_replicas, queue_depths

#: Seconds of history behind the ``inferential_slo_attainment`` gauge.
SLO_WINDOW_S = 60.0
#: The ``client`` label of robots past ``metrics.max_robot_series``.
OTHER_ROBOTS = "_other"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_BYTES_BUCKETS = tuple(float(1 << k) for k in range(10, 27, 2))  # 1 KiB .. 64 MiB
# Control steps: a robot cares whether the error reaches one step, then by how many.
_STEP_ERROR_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
_SIGNED_STEP_BUCKETS = (-8.0, -4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
# Store metric (milliseconds) -> Prometheus histogram (seconds).
_HISTOGRAMS = {
    "scheduling_wait_ms": (
        "inferential_queue_wait_seconds",
        "Time from arrival to dispatch to the model, successful requests",
    ),
    "inference_latency_ms": ("inferential_inference_seconds", "Model execution time of one batch"),
    "e2e_latency_ms": ("inferential_server_latency_seconds", "Time from arrival to reply, successful requests"),
    "observation_staleness_ms": (
        "inferential_observation_staleness_seconds",
        "Age of an observation when it arrived (robot and server clocks)",
    ),
}
_COUNTERS = {
    "replies": (
        "inferential_replies",
        "Replies sent, by model and status: every observation gets exactly one",
        ("model", "status"),
    ),
    "observation_errors": (
        "inferential_rejected_observations",
        "Observations answered before scheduling (invalid, unknown model, unauthenticated, ...), by status",
        ("status",),
    ),
    "replies_undeliverable": (
        "inferential_replies_undeliverable",
        "Replies that could not be handed to the robot's connection",
        ("model", "reason"),
    ),
    "connection_events": (
        "inferential_connection_events",
        "Connection events libzmq reports (accepted, handshakes, disconnects) and the server's refusals and handovers",
        ("event",),
    ),
    "late_results_withheld": (
        "inferential_late_results_withheld",
        "Results ready after their deadline, answered DEADLINE_UNMEETABLE instead of a late OK (scheduling.late_results)",
        ("model",),
    ),
    "native_refusals": (
        "inferential_native_refusals",
        "Observations the native transport refused itself, before the event loop, as too late to serve "
        "(transport.native_shedding); also counted in inferential_rejected_observations",
        ("status",),
    ),
    "dispatch_errors": ("inferential_dispatch_errors", "Batches whose backend call failed as a whole", ("model",)),
    "dispatch_retries": ("inferential_dispatch_retries", "Requests re-queued after a failed batch", ("model",)),
    "config_reloads": ("inferential_config_reloads", "Configuration reloads (SIGHUP), by result", ("result",)),
}


class _Histogram:
    """Bucket counts and sum per label values. Not locked: the exporter's lock is held."""

    __slots__ = ("name", "doc", "labels", "bounds", "les", "series")

    def __init__(self, name: str, doc: str, bounds: Sequence[float], labels: Sequence[str] = ("model",)) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.bounds = tuple(float(b) for b in bounds)
        self.les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self.series: dict[tuple[str, ...], list[float]] = {}  # counts per bucket (not cumulative), then the sum

    def observe(self, key: tuple[str, ...], value: float) -> None:
        counts = self.series.get(key)
        if counts is None:
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value (le)
        counts[-1] += value

    def family(self, series: dict[tuple[str, ...], list[float]]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, counts in sorted(series.items()):
            total, buckets = 0.0, []
            for le, n in zip(self.les, counts[:-1], strict=True):
                total += n
                buckets.append((le, total))
            fam.add_metric(list(key), buckets, counts[-1])
            if self.bounds[0] < 0:
                # With negative buckets the family leaves out _sum (as OpenMetrics requires)
                # and _count with it; the count is still a count.
                fam.samples.append(Sample(self.name + "_count", dict(zip(self.labels, key, strict=True)), total))
        return fam


class _Counter:
    """A value per label values. Not locked: the exporter's lock is held."""

    __slots__ = ("name", "doc", "labels", "series")

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.series: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        self.series[key] = self.series.get(key, 0.0) + amount

    def family(self, series: dict[tuple[str, ...], float]) -> CounterMetricFamily:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, total in sorted(series.items()):
            fam.add_metric(list(key), total)
        return fam


class PrometheusExporter:
    """Prometheus series for one server, in a registry of their own."""

    def __init__(self, server: Any, slo_window_s: float = SLO_WINDOW_S) -> None:
        self.server = server
        self.slo_window_s = slo_window_s
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._hist = {name: _Histogram(prom, doc, _LATENCY_BUCKETS) for name, (prom, doc) in _HISTOGRAMS.items()}
        self._batch = _Histogram("inferential_batch_size", "Requests per batch sent to a model", _BATCH_BUCKETS)
        self._payload = _Histogram("inferential_payload_bytes", "Tensor bytes per observation", _BYTES_BUCKETS)
        # One store metric (signed error) feeds both: the signed one shows a bias (buckets
        # only: with negative buckets there is no _sum, as OpenMetrics requires), the
        # absolute one the size of the error in control steps.
        self._delay_error = _Histogram(
            "inferential_delay_prediction_error_steps",
            "Actual minus predicted delay of chunked replies (control steps; > 0: later than predicted)",
            _SIGNED_STEP_BUCKETS,
        )
        self._delay_abs_error = _Histogram(
            "inferential_delay_prediction_abs_error_steps",
            "Absolute error of the predicted delay of chunked replies, control steps",
            _STEP_ERROR_BUCKETS,
        )
        self._counters = {name: _Counter(prom, doc, labels) for name, (prom, doc, labels) in _COUNTERS.items()}
        self._slo_total = _Counter(
            "inferential_slo_requests",
            "Requests counted for the latency SLO (every reply but SUPERSEDED)",
            ("client", "model"),
        )
        self._slo_met = _Counter(
            "inferential_slo_met", "Requests answered OK within their latency budget", ("client", "model")
        )
        self._histograms = [*self._hist.values(), self._batch, self._payload, self._delay_error, self._delay_abs_error]
        self._all_counters = [*self._counters.values(), self._slo_total, self._slo_met]
        # Robots with a `client` label of their own, and the models each has series for:
        # client ids are self-declared, so their number is bounded (metrics.max_robot_series).
        self._robot_models: dict[str, set[str]] = {}
        self.registry.register(_SummedCollector(self))
        self.registry.register(_LiveCollector(self))
        self._sink = server.metrics.add_sink(self._take)

    def close(self) -> None:
        """Stop summing the server's points (the series keep their values)."""
        self.server.metrics.remove_sink(self._sink)

    def client_label(self, client: str) -> str:
        """``client`` when it has series of its own (known to the configuration, or among
        the first ``metrics.max_robot_series`` robots tracked), else ``_other``."""
        with self._lock:
            return self._client_label(client)

    def _client_label(self, client: str) -> str:  # the lock is held
        if client in self._robot_models:
            return client
        config = self.server.config
        if len(self._robot_models) < config.metrics.max_robot_series or config.clients.get(client) is not None:
            self._robot_models[client] = set()
            return client
        return OTHER_ROBOTS

    def forget_gone_robots(self) -> None:
        """Remove the series of robots no longer registered, freeing their places."""
        registered = set(list(self.server.registry.robots))
        with self._lock:
            gone = [c for c in self._robot_models if c not in registered]
            for client in gone:
                for model in self._robot_models.pop(client):
                    for counter in (self._slo_total, self._slo_met):
                        counter.series.pop((client, model), None)

    def _take(self, name: str, value: float, labels: dict) -> None:
        """The store's sink: add one point to the sums (any thread, a few microseconds)."""
        with self._lock:
            hist = self._hist.get(name)
            if hist is not None:
                hist.observe((labels.get("model", ""),), value / 1000.0)
            elif name == "slo_met":
                client, model = self._client_label(labels.get("client", "")), labels.get("model", "")
                if client != OTHER_ROBOTS:
                    self._robot_models[client].add(model)
                key = (client, model)
                self._slo_total.inc(key)
                if value:
                    self._slo_met.inc(key)
            elif name == "batch_size":
                self._batch.observe((labels.get("model", ""),), value)
            elif name == "payload_size_bytes":
                self._payload.observe((labels.get("model", ""),), value)
            elif name == "delay_prediction_error_steps":
                model_key = (labels.get("model", ""),)
                self._delay_error.observe(model_key, value)
                self._delay_abs_error.observe(model_key, abs(value))
            elif name == "observation_errors":
                # The receive loop counts its own failures with a reason instead of a status.
                status = labels.get("status") or labels.get("reason", "").upper() or "UNKNOWN"
                self._counters[name].inc((status,), value)
            else:
                counter = self._counters.get(name)
                if counter is not None:
                    counter.inc(tuple(labels.get(n, "") for n in counter.labels), value)

    def _snapshot(self) -> tuple[list[Any], list[Any]]:
        """Copies of every series, taken under the lock in one go (consistent with each other)."""
        with self._lock:
            hists = [{k: list(v) for k, v in h.series.items()} for h in self._histograms]
            counters = [dict(c.series) for c in self._all_counters]
        return hists, counters

    def render(self) -> bytes:
        self.forget_gone_robots()
        return generate_latest(self.registry)


class _SummedCollector:
    """The histograms and counters, built from the exporter's sums at scrape time."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def describe(self) -> Iterable[Any]:
        ex = self.exporter
        return [h.family({}) for h in ex._histograms] + [c.family({}) for c in ex._all_counters]

    def collect(self) -> Iterable[Any]:
        ex = self.exporter
        hists, counters = ex._snapshot()
        out: list[Any] = [h.family(s) for h, s in zip(ex._histograms, hists, strict=True)]
        out += [c.family(s) for c, s in zip(ex._all_counters, counters, strict=True)]
        return out


class _LiveCollector:
    """Gauges read at scrape time: queue depth, robots, replicas, SLO attainment."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Names only, so registering does not ask a server that has not started for its status.
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        window = self.exporter.slo_window_s
        return [
            GaugeMetricFamily(
                "inferential_queue_depth", "Requests waiting in the scheduler, by model", labels=["model"]
            ),
            GaugeMetricFamily("inferential_batches_in_flight", "Batches running on a model", labels=["model"]),
            GaugeMetricFamily("inferential_model_concurrency", "Batches a model may run at once", labels=["model"]),
            GaugeMetricFamily(
                "inferential_model_replicas",
                "Healthy replicas (Ray) or worker threads (local) per model",
                labels=["model"],
            ),
            GaugeMetricFamily("inferential_active_robots", "Robots registered (seen within disconnect_timeout_s)"),
            GaugeMetricFamily("inferential_queued_requests", "Requests waiting in the scheduler, all models"),
            GaugeMetricFamily(
                "inferential_pending_requests", "Requests admitted and not yet answered (queued or running)"
            ),
            GaugeMetricFamily("inferential_ready", "1 when the server admits robots (/readyz)"),
            GaugeMetricFamily(
                "inferential_scheduler_info", "The active scheduling strategy (value 1)", labels=["strategy"]
            ),
            GaugeMetricFamily(
                "inferential_slo_attainment",
                f"Share of requests answered OK within budget over the last {window:.0f} s (at most metrics.ring_buffer_size replies)",
                labels=["client", "model"],
            ),
        ]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        server = self.exporter.server
        status = server.status_threadsafe()
        (depth, inflight, concurrency, replicas, robots, queued, pending, ready, strategy, slo) = self._families()
        per_model = queue_depths(status)
        health = status.get("backend") or {}
        for model, info in (status.get("models") or {}).items():
            depth.add_metric([model], float(per_model.get(model, 0)))
            inflight.add_metric([model], float(info.get("in_flight", 0)))
            concurrency.add_metric([model], float(info.get("concurrency", 0)))
            n = model_replicas(health, model)
            if n is not None:
                replicas.add_metric([model], float(n))
        robots.add_metric([], float(status.get("robots", 0)))
        sched = status.get("scheduler") or {}
        queued.add_metric([], float(sched.get("queue_len", sum(per_model.values()))))
        pending.add_metric([], float(status.get("pending", 0)))
        ready.add_metric([], 1.0 if status.get("ready") else 0.0)
        if sched.get("strategy"):
            strategy.add_metric([str(sched["strategy"])], 1.0)
        labelled: dict[tuple[str, str], list[float]] = {}
        own = self.exporter._robot_models  # membership only: places are given under the exporter's lock
        for _, met, labels in server.metrics.points("slo_met", self.exporter.slo_window_s):
            client = labels.get("client", "")
            key = (client if client in own else OTHER_ROBOTS, labels.get("model", ""))
            labelled.setdefault(key, []).append(met)
        for (client, model), mets in labelled.items():
            slo.add_metric([client, model], sum(mets) / len(mets))
        return [depth, inflight, concurrency, replicas, robots, queued, pending, ready, strategy, slo]
