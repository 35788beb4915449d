"""Prometheus series for one server: histograms and counters fed by the metrics
store's callback thread, and gauges read from the server's status at scrape time,
so nothing here runs on the event loop's request path."""

from __future__ import annotations

import threading
from typing import Any, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

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
    "dispatch_errors": ("inferential_dispatch_errors", "Batches whose backend call failed as a whole", ("model",)),
    "dispatch_retries": ("inferential_dispatch_retries", "Requests re-queued after a failed batch", ("model",)),
    "config_reloads": ("inferential_config_reloads", "Configuration reloads (SIGHUP), by result", ("result",)),
}


class PrometheusExporter:
    """Prometheus series for one server, in a registry of their own."""

    def __init__(self, server: Any, slo_window_s: float = SLO_WINDOW_S) -> None:
        self.server = server
        self.slo_window_s = slo_window_s
        self.registry = CollectorRegistry()
        self._hist = {
            name: Histogram(prom, doc, ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
            for name, (prom, doc) in _HISTOGRAMS.items()
        }
        self._batch = Histogram(
            "inferential_batch_size",
            "Requests per batch sent to a model",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._payload = Histogram(
            "inferential_payload_bytes",
            "Tensor bytes per observation",
            ["model"],
            buckets=_BYTES_BUCKETS,
            registry=self.registry,
        )
        # One store metric (signed error) feeds both: the signed one shows a bias (buckets
        # only: with negative buckets the client omits _sum, as OpenMetrics requires), the
        # absolute one the size of the error in control steps.
        self._delay_error = Histogram(
            "inferential_delay_prediction_error_steps",
            "Actual minus predicted delay of chunked replies (control steps; > 0: later than predicted)",
            ["model"],
            buckets=_SIGNED_STEP_BUCKETS,
            registry=self.registry,
        )
        self._delay_abs_error = Histogram(
            "inferential_delay_prediction_abs_error_steps",
            "Absolute error of the predicted delay of chunked replies, control steps",
            ["model"],
            buckets=_STEP_ERROR_BUCKETS,
            registry=self.registry,
        )
        self._counters = {
            name: (Counter(prom, doc, list(labels), registry=self.registry), labels)
            for name, (prom, doc, labels) in _COUNTERS.items()
        }
        self._slo_total = Counter(
            "inferential_slo_requests",
            "Requests counted for the latency SLO (every reply but SUPERSEDED)",
            ["client", "model"],
            registry=self.registry,
        )
        self._slo_met = Counter(
            "inferential_slo_met",
            "Requests answered OK within their latency budget",
            ["client", "model"],
            registry=self.registry,
        )
        # Robots with a `client` label of their own, and the models each has series for:
        # client ids are self-declared, so their number is bounded (metrics.max_robot_series).
        self._robot_models: dict[str, set[str]] = {}
        self._robots_lock = threading.Lock()
        self.registry.register(_LiveCollector(self))
        server.on_metric(self._on_metric)

    def client_label(self, client: str) -> str:
        """``client`` when it has series of its own (known to the configuration, or among
        the first ``metrics.max_robot_series`` robots tracked), else ``_other``."""
        if client in self._robot_models:
            return client
        config = self.server.config
        with self._robots_lock:
            if len(self._robot_models) < config.metrics.max_robot_series or config.clients.get(client) is not None:
                self._robot_models.setdefault(client, set())
                return client
        return OTHER_ROBOTS

    def forget_gone_robots(self) -> None:
        """Remove the series of robots no longer registered, freeing their places."""
        registered = set(list(self.server.registry.robots))
        with self._robots_lock:
            gone = [c for c in self._robot_models if c not in registered]
            for client in gone:
                for model in self._robot_models.pop(client):
                    for counter in (self._slo_total, self._slo_met):
                        try:
                            counter.remove(client, model)
                        except KeyError:
                            pass

    def _on_metric(self, name: str, value: float, labels: dict) -> None:
        hist = self._hist.get(name)
        if hist is not None:
            hist.labels(model=labels.get("model", "")).observe(value / 1000.0)
            return
        if name == "batch_size":
            self._batch.labels(model=labels.get("model", "")).observe(value)
        elif name == "delay_prediction_error_steps":
            model = labels.get("model", "")
            self._delay_error.labels(model=model).observe(value)
            self._delay_abs_error.labels(model=model).observe(abs(value))
        elif name == "payload_size_bytes":
            self._payload.labels(model=labels.get("model", "")).observe(value)
        elif name == "slo_met":
            client, model = self.client_label(labels.get("client", "")), labels.get("model", "")
            if client != OTHER_ROBOTS:
                with self._robots_lock:
                    self._robot_models.setdefault(client, set()).add(model)
            key = dict(client=client, model=model)
            self._slo_total.labels(**key).inc()
            if value:
                self._slo_met.labels(**key).inc()
        elif name == "observation_errors":
            # The receive loop counts its own failures with a reason instead of a status.
            status = labels.get("status") or labels.get("reason", "").upper() or "UNKNOWN"
            self._counters[name][0].labels(status).inc(value)
        elif name in self._counters:
            counter, label_names = self._counters[name]
            counter.labels(*[labels.get(n, "") for n in label_names]).inc(value)

    def render(self) -> bytes:
        self.server.metrics.flush(0.5)
        self.forget_gone_robots()
        return generate_latest(self.registry)


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
        own = self.exporter._robot_models  # read only: places are given on the metrics thread
        for _, met, labels in server.metrics.points("slo_met", self.exporter.slo_window_s):
            client = labels.get("client", "")
            key = (client if client in own else OTHER_ROBOTS, labels.get("model", ""))
            labelled.setdefault(key, []).append(met)
        for (client, model), mets in labelled.items():
            slo.add_metric([client, model], sum(mets) / len(mets))
        return [depth, inflight, concurrency, replicas, robots, queued, pending, ready, strategy, slo]
