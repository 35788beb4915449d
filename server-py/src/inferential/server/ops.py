"""Operations: Prometheus /metrics, /healthz, /readyz and /status over HTTP, and config reload.

The exporter is fed by the metrics store's callback thread and reads gauges at
scrape time, so nothing here runs on the event loop's request path.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger("inferential.ops")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Store metric (milliseconds) -> Prometheus histogram (seconds).
_HISTOGRAMS = {
    "scheduling_wait_ms": ("inferential_queue_wait_seconds", "Time from arrival to dispatch to the model"),
    "inference_latency_ms": ("inferential_inference_seconds", "Model execution time of a batch"),
    "e2e_latency_ms": ("inferential_server_latency_seconds", "Time from arrival to reply, successful requests"),
    "observation_staleness_ms": ("inferential_observation_staleness_seconds", "Age of the observation when it arrived"),
}
_COUNTERS = {
    "replies": ("inferential_replies", "Replies sent, by model and status", ("model", "status")),
    "observation_errors": ("inferential_rejected_observations", "Observations rejected before scheduling, by status", ("status",)),
    "replies_undeliverable": ("inferential_replies_undeliverable", "Replies that could not be handed to the robot", ("model", "reason")),
    "dispatch_errors": ("inferential_dispatch_errors", "Batches whose backend call failed", ("model",)),
    "dispatch_retries": ("inferential_dispatch_retries", "Requests re-queued after a failed batch", ("model",)),
}


class PrometheusExporter:
    """Prometheus series for one server, in a registry of their own."""

    def __init__(self, server: Any, slo_window_s: float = 60.0) -> None:
        self.server = server
        self.slo_window_s = slo_window_s
        self.registry = CollectorRegistry()
        self._hist = {
            name: Histogram(prom, doc, ["model"], buckets=_LATENCY_BUCKETS, registry=self.registry)
            for name, (prom, doc) in _HISTOGRAMS.items()
        }
        self._batch = Histogram("inferential_batch_size", "Requests per batch sent to a model", ["model"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self._counters = {
            name: (Counter(prom, doc, list(labels), registry=self.registry), labels)
            for name, (prom, doc, labels) in _COUNTERS.items()
        }
        self._slo_total = Counter("inferential_slo_requests", "Requests counted for the latency SLO", ["client", "model"], registry=self.registry)
        self._slo_met = Counter("inferential_slo_met", "Requests answered OK within their latency budget", ["client", "model"], registry=self.registry)
        self.registry.register(_LiveCollector(self))
        server.on_metric(self._on_metric)

    def _on_metric(self, name: str, value: float, labels: dict) -> None:
        hist = self._hist.get(name)
        if hist is not None:
            hist.labels(model=labels.get("model", "")).observe(value / 1000.0)
            return
        if name == "batch_size":
            self._batch.labels(model=labels.get("model", "")).observe(value)
        elif name == "slo_met":
            key = dict(client=labels.get("client", ""), model=labels.get("model", ""))
            self._slo_total.labels(**key).inc()
            if value:
                self._slo_met.labels(**key).inc()
        elif name in self._counters:
            counter, label_names = self._counters[name]
            counter.labels(*[labels.get(n, "") for n in label_names]).inc(value)

    def render(self) -> bytes:
        self.server.metrics.flush(0.5)
        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges read at scrape time: queue depth, robots, replicas, SLO attainment."""

    def __init__(self, exporter: PrometheusExporter) -> None:
        self.exporter = exporter

    def collect(self):
        server = self.exporter.server
        status = server.status_threadsafe()
        depth = GaugeMetricFamily("inferential_queue_depth", "Requests waiting in the scheduler", labels=["model"])
        per_model = status.get("scheduler", {}).get("per_model", {}) or {}
        for model in status.get("models", {}):
            depth.add_metric([model], float(per_model.get(model, 0)))
        yield depth
        inflight = GaugeMetricFamily("inferential_batches_in_flight", "Batches running on a model", labels=["model"])
        for model, info in status.get("models", {}).items():
            inflight.add_metric([model], float(info.get("in_flight", 0)))
        yield inflight
        yield GaugeMetricFamily("inferential_active_robots", "Robots registered (seen recently)", value=float(status.get("robots", 0)))
        yield GaugeMetricFamily("inferential_pending_requests", "Requests admitted and not yet answered", value=float(status.get("pending", 0)))
        yield GaugeMetricFamily("inferential_ready", "1 when the server admits robots", value=1.0 if status.get("ready") else 0.0)
        replicas = GaugeMetricFamily("inferential_model_replicas", "Healthy replicas (or worker threads) per model", labels=["model"])
        for model, health in (status.get("backend") or {}).items():
            if isinstance(health, dict) and "replicas" in health:
                replicas.add_metric([model], float(health["replicas"]))
        yield replicas
        slo = GaugeMetricFamily(
            "inferential_slo_attainment",
            f"Share of requests answered OK within budget over the last {self.exporter.slo_window_s:.0f} s",
            labels=["client", "model"],
        )
        for (client, model), share in slo_attainment(server.metrics, self.exporter.slo_window_s).items():
            slo.add_metric([client, model], share)
        yield slo


def slo_attainment(metrics: Any, window_s: float) -> dict[tuple[str, str], float]:
    met: dict[tuple[str, str], list[float]] = {}
    since = time.time() - window_s
    for t, v, labels in list(metrics._series.get("slo_met", ())):
        if t >= since:
            met.setdefault((labels.get("client", ""), labels.get("model", "")), []).append(v)
    return {k: sum(v) / len(v) for k, v in met.items()}


class _Handler(BaseHTTPRequestHandler):
    exporter: PrometheusExporter

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server = self.exporter.server
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.exporter.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive = server.loop_alive()
            self._send(200 if alive else 503, b"ok\n" if alive else b"event loop not responding\n")
        elif path == "/readyz":
            ready = server.ready
            self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        elif path == "/status":
            body = json.dumps(server.status_threadsafe(), default=str).encode()
            self._send(200, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz, /readyz, /status\n")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http: " + format, *args)


class HttpEndpoint:
    def __init__(self, server: Any, host: str, port: int) -> None:
        self.exporter = PrometheusExporter(server)
        handler = type("Handler", (_Handler,), {"exporter": self.exporter})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="inferential-http", daemon=True)
        self.thread.start()
        logger.info("metrics and health on http://%s:%d/metrics", host, self.port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_http(server: Any) -> Optional[HttpEndpoint]:
    cfg = server.config.metrics
    if cfg.http_port is None:
        return None
    return HttpEndpoint(server, cfg.http_host, cfg.http_port)


def install_reload(server: Any, config_path: str) -> None:
    """SIGHUP re-reads the config file and applies scheduling, clients and auth live."""
    import asyncio

    from inferential.config import ConfigError, load_config

    def reload() -> None:
        try:
            new = load_config(config_path)
        except ConfigError as err:
            logger.error("reload refused, keeping the running configuration: %s", err)
            return
        try:
            server.reconfigure(new)
        except Exception as err:
            logger.error("reload failed, keeping the running configuration: %s", err)
            return
        logger.info("configuration reloaded from %s", config_path)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError):
        logger.warning("SIGHUP reload is not available here")
