"""Operations: Prometheus /metrics, /healthz, /readyz and /status over HTTP, and config reload.

The exporter is fed by the metrics store's callback thread and reads gauges at
scrape time, so nothing here runs on the event loop's request path. The
HTTP handlers run on their own threads; what they need from the loop they get
through ``Server.status_threadsafe()`` and ``Server.loop_alive()``.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from inferential.metrics.store import percentile

logger = logging.getLogger("inferential.ops")

#: Seconds of history behind /status's per-robot and per-model figures (``?window=`` changes it).
STATUS_WINDOW_S = 10.0
#: Seconds of history behind the ``inferential_slo_attainment`` gauge.
SLO_WINDOW_S = 60.0

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_BYTES_BUCKETS = tuple(float(1 << k) for k in range(10, 27, 2))  # 1 KiB .. 64 MiB
# Store metric (milliseconds) -> Prometheus histogram (seconds).
_HISTOGRAMS = {
    "scheduling_wait_ms": ("inferential_queue_wait_seconds", "Time from arrival to dispatch to the model, successful requests"),
    "inference_latency_ms": ("inferential_inference_seconds", "Model execution time of one batch"),
    "e2e_latency_ms": ("inferential_server_latency_seconds", "Time from arrival to reply, successful requests"),
    "observation_staleness_ms": ("inferential_observation_staleness_seconds", "Age of an observation when it arrived (robot and server clocks)"),
}
_COUNTERS = {
    "replies": ("inferential_replies", "Replies sent, by model and status: every observation gets exactly one", ("model", "status")),
    "observation_errors": ("inferential_rejected_observations", "Observations answered before scheduling (invalid, unknown model, unauthenticated, ...), by status", ("status",)),
    "replies_undeliverable": ("inferential_replies_undeliverable", "Replies that could not be handed to the robot's connection", ("model", "reason")),
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
        self._batch = Histogram("inferential_batch_size", "Requests per batch sent to a model", ["model"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self._payload = Histogram("inferential_payload_bytes", "Tensor bytes per observation", ["model"], buckets=_BYTES_BUCKETS, registry=self.registry)
        self._counters = {
            name: (Counter(prom, doc, list(labels), registry=self.registry), labels)
            for name, (prom, doc, labels) in _COUNTERS.items()
        }
        self._slo_total = Counter("inferential_slo_requests", "Requests counted for the latency SLO (every reply but SUPERSEDED)", ["client", "model"], registry=self.registry)
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
        elif name == "payload_size_bytes":
            self._payload.labels(model=labels.get("model", "")).observe(value)
        elif name == "slo_met":
            key = dict(client=labels.get("client", ""), model=labels.get("model", ""))
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
            GaugeMetricFamily("inferential_queue_depth", "Requests waiting in the scheduler, by model", labels=["model"]),
            GaugeMetricFamily("inferential_batches_in_flight", "Batches running on a model", labels=["model"]),
            GaugeMetricFamily("inferential_model_concurrency", "Batches a model may run at once", labels=["model"]),
            GaugeMetricFamily("inferential_model_replicas", "Healthy replicas (Ray) or worker threads (local) per model", labels=["model"]),
            GaugeMetricFamily("inferential_active_robots", "Robots registered (seen within disconnect_timeout_s)"),
            GaugeMetricFamily("inferential_queued_requests", "Requests waiting in the scheduler, all models"),
            GaugeMetricFamily("inferential_pending_requests", "Requests admitted and not yet answered (queued or running)"),
            GaugeMetricFamily("inferential_ready", "1 when the server admits robots (/readyz)"),
            GaugeMetricFamily("inferential_scheduler_info", "The active scheduling strategy (value 1)", labels=["strategy"]),
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
        for (client, model), share in slo_attainment(server.metrics, self.exporter.slo_window_s).items():
            slo.add_metric([client, model], share)
        return [depth, inflight, concurrency, replicas, robots, queued, pending, ready, strategy, slo]


# -- reading the server's status and metrics ---------------------------------------


def queue_depths(status: dict) -> dict[str, int]:
    """Queued requests per model from a Server.status() (built-in schedulers say "models")."""
    sched = status.get("scheduler") or {}
    per_model = sched.get("models")
    if not isinstance(per_model, dict):
        per_model = sched.get("per_model")  # custom schedulers following the older sketch
    if isinstance(per_model, dict):
        return {str(m): int(n) for m, n in per_model.items()}
    models = list(status.get("models") or {})
    if len(models) == 1 and "queue_len" in sched:
        return {models[0]: int(sched["queue_len"])}
    return {}


def model_replicas(health: dict, model: str) -> Optional[int]:
    """Replicas of ``model`` from Backend.health(): the local backend's flat form or Ray's nested one."""
    ray_models = health.get("models")
    if "ready" in health and isinstance(ray_models, dict):  # Ray: {"ready", "models": {name: {...}}, ...}
        entry = ray_models.get(model) or {}
        if "running_replicas" in entry:
            return int(entry["running_replicas"])
        return None
    entry = health.get(model)
    if isinstance(entry, dict) and "replicas" in entry:
        return int(entry["replicas"])
    return None


def _points(metrics: Any, name: str, window_s: float) -> list[tuple[float, float, dict]]:
    """(time, value, labels) of ``name`` recorded in the last ``window_s`` seconds.

    The store has no public accessor for points with their labels; this is the one
    place that reads its ring buffers directly (``list()`` of a deque is atomic under the GIL).
    """
    clock: Callable[[], float] = getattr(metrics, "_clock", time.time)
    since = clock() - window_s
    return [p for p in list(metrics._series.get(name, ())) if p[0] >= since]


def slo_attainment(metrics: Any, window_s: float) -> dict[tuple[str, str], float]:
    met: dict[tuple[str, str], list[float]] = {}
    for _, v, labels in _points(metrics, "slo_met", window_s):
        met.setdefault((labels.get("client", ""), labels.get("model", "")), []).append(v)
    return {k: sum(v) / len(v) for k, v in met.items()}


def _num(x: float) -> Optional[float]:
    """JSON has no NaN: missing figures are null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


def fleet_status(server: Any, status: dict, window_s: float = STATUS_WINDOW_S) -> dict[str, Any]:
    """Per-robot and per-model figures over the last ``window_s`` seconds, for /status and `top`."""
    metrics = server.metrics
    now = getattr(metrics, "_clock", time.time)()
    arrivals: dict[str, list[float]] = defaultdict(list)
    for t, _, labels in _points(metrics, "payload_size_bytes", window_s):  # one point per admitted observation
        arrivals[labels.get("client", "")].append(t)
    latency: dict[str, list[float]] = defaultdict(list)
    for _, v, labels in _points(metrics, "e2e_latency_ms", window_s):
        latency[labels.get("client", "")].append(v)
    slo: dict[str, list[float]] = defaultdict(list)
    for _, v, labels in _points(metrics, "slo_met", window_s):
        slo[labels.get("client", "")].append(v)

    clock_ns = server.clock()
    robots: dict[str, Any] = {}
    for client_id, robot in sorted(list(server.registry.robots.items())):
        times = arrivals.get(client_id, [])
        # A robot seen for less than the window is measured over the time it has been sending.
        span = min(window_s, max(1.0, now - times[0])) if times else window_s
        lat = sorted(latency.get(client_id, []))
        cadences = sorted(list(robot.cadences.items()))
        met = slo.get(client_id, [])
        robots[client_id] = {
            "type": robot.client_type,
            "models": [m for m, _ in cadences],
            "requests": robot.requests,
            "rate_hz": _num(len(times) / span),
            "cadence_ms": {m: _num(c.ema_interval_ms) for m, c in cadences if c.ema_interval_ms is not None},
            "p50_ms": _num(percentile(lat, 50)),
            "p99_ms": _num(percentile(lat, 99)),
            "slo": _num(sum(met) / len(met)) if met else None,
            "answered": len(met),
            "last_status": robot.last_status,
            "idle_s": _num((clock_ns - robot.last_seen_ns) / 1e9),
            "connected_s": _num((clock_ns - robot.first_seen_ns) / 1e9),
        }

    batch: dict[str, list[float]] = defaultdict(list)
    for _, v, labels in _points(metrics, "batch_size", window_s):
        batch[labels.get("model", "")].append(v)
    infer: dict[str, list[float]] = defaultdict(list)
    for _, v, labels in _points(metrics, "inference_latency_ms", window_s):
        infer[labels.get("model", "")].append(v)
    depths = queue_depths(status)
    health = status.get("backend") or {}
    models: dict[str, Any] = {}
    for name, info in sorted((status.get("models") or {}).items()):
        sizes = sorted(batch.get(name, []))
        times_ms = sorted(infer.get(name, []))
        models[name] = {
            "queue": depths.get(name, 0),
            "in_flight": info.get("in_flight", 0),
            "concurrency": info.get("concurrency"),
            "max_batch_size": info.get("max_batch_size"),
            "batches_per_s": _num(len(sizes) / window_s),
            "batch_p50": _num(percentile(sizes, 50)),
            "batch_mean": _num(sum(sizes) / len(sizes)) if sizes else None,
            "inference_p50_ms": _num(percentile(times_ms, 50)),
            "replicas": model_replicas(health, name),
        }
    return {"window_s": window_s, "per_robot": robots, "per_model": models}


def redacted_config(config: Any) -> dict[str, Any]:
    """The live (reloadable) sections of the running configuration, without secrets."""
    clients = config.clients.model_dump()
    for known in clients["known"]:
        known["auth_token"] = "<set>" if known.get("auth_token") is not None else None
    return {
        "scheduling": config.scheduling.model_dump(),
        "clients": clients,
        "auth": {"token": "<set>" if config.auth.token is not None else None},
    }


def full_status(server: Any, window_s: float = STATUS_WINDOW_S) -> dict[str, Any]:
    status = server.status_threadsafe()
    out = dict(status)
    out.update(fleet_status(server, status, window_s))
    out["config"] = redacted_config(server.config)
    out["time"] = time.time()
    return out


def readiness(server: Any) -> tuple[bool, str]:
    if not server.ready:
        return False, "not ready: models loading or server shutting down"
    health = server.backend.health() if hasattr(server, "backend") else {}
    if isinstance(health, dict) and health.get("ready") is False:
        return False, "not ready: backend reports models not running" + (f" ({health['error']})" if health.get("error") else "")
    return True, "ready"


# -- HTTP ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    exporter: PrometheusExporter

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        server = self.exporter.server
        path, _, query = self.path.partition("?")
        if path == "/metrics":
            self._send(200, self.exporter.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            alive = server.loop_alive()
            self._send(200 if alive else 503, b"ok\n" if alive else b"event loop not responding\n")
        elif path == "/readyz":
            ready, why = readiness(server)
            self._send(200 if ready else 503, why.encode() + b"\n")
        elif path == "/status":
            try:
                window = float(parse_qs(query).get("window", [STATUS_WINDOW_S])[0])
                if not (0 < window <= 3600):
                    raise ValueError
            except ValueError:
                self._send(400, b"window must be a number of seconds in (0, 3600]\n")
                return
            body = json.dumps(full_status(server, window), default=str).encode()
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
    """/metrics, /healthz, /readyz and /status on ``host:port`` (port 0: any free port)."""

    def __init__(self, server: Any, host: str, port: int) -> None:
        self.exporter = PrometheusExporter(server)
        handler = type("Handler", (_Handler,), {"exporter": self.exporter})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="inferential-http", daemon=True)
        self.thread.start()
        logger.info("metrics and health on %s/metrics", self.url)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_http(server: Any) -> Optional[HttpEndpoint]:
    cfg = server.config.metrics
    if cfg.http_port is None:
        return None
    return HttpEndpoint(server, cfg.http_host, cfg.http_port)


# -- reload ----------------------------------------------------------------------------

#: Sections a reload applies to the running server; the others need a restart.
LIVE_SECTIONS = ("scheduling", "clients", "auth", "logging")
_RESTART_SECTIONS = ("transport", "response_tracking", "metrics", "backend", "models", "ray")


def check_reloadable(config: Any) -> list[str]:
    """Problems that pydantic cannot see: a strategy or policy name nobody registered."""
    from inferential.scheduler import available_policies, available_schedulers, create_scheduler

    sched = config.scheduling
    if sched.strategy not in available_schedulers():
        return [f"scheduling.strategy: unknown strategy {sched.strategy!r} (available: {', '.join(available_schedulers())})"]
    if sched.policy is not None and sched.policy not in available_policies():
        return [f"scheduling.policy: unknown policy {sched.policy!r} (available: {', '.join(available_policies())})"]
    try:
        create_scheduler(sched)  # pure: builds the strategy once to surface its own objections
    except Exception as err:
        return [f"scheduling: {err}"]
    return []


def install_reload(server: Any, config_path: Optional[str], load: Optional[Callable[[], Any]] = None) -> None:
    """SIGHUP re-reads the configuration and applies scheduling, clients, auth and logging live.

    ``load`` builds the new configuration (the CLI passes one that re-applies its
    command-line overrides); by default the file is read as it is. An invalid
    file is refused as a whole: the log line names each bad key and the server
    keeps its running configuration. Queued requests carry over to a new strategy.
    """
    import asyncio

    from inferential.config import ConfigError, load_config

    applied = [server.config.model_copy(deep=True)]

    def refuse(problems: list[str]) -> None:
        server.metrics.increment("config_reloads", {"result": "refused"})
        logger.error("reload of %s refused, keeping the running configuration: %s", config_path, "; ".join(problems))

    def reload() -> None:
        if config_path is None:
            logger.warning("SIGHUP: nothing to reload, the server was started without --config")
            return
        try:
            new = load() if load is not None else load_config(config_path)
        except ConfigError as err:
            refuse(err.problems)
            return
        problems = check_reloadable(new)
        if problems:
            refuse(problems)
            return
        old = applied[0]
        try:
            server.reconfigure(new)
        except Exception as err:
            refuse([f"{type(err).__name__}: {err}"])
            return
        if new.logging != old.logging:
            from inferential.logs import configure_logging

            configure_logging(new.logging.level, new.logging.json_format)
        applied[0] = new
        server.metrics.increment("config_reloads", {"result": "ok"})
        changed = [s for s in LIVE_SECTIONS if getattr(new, s) != getattr(old, s)]
        logger.info(
            "configuration reloaded from %s: %s; scheduler %s, %d known clients",
            config_path, f"changed {', '.join(changed)}" if changed else "no live changes",
            new.scheduling.strategy, len(new.clients.known),
        )
        later = [s for s in _RESTART_SECTIONS if getattr(new, s) != getattr(old, s)]
        if later:
            logger.warning("%s changed in %s: not applied, takes a restart", ", ".join(later), config_path)

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, AttributeError):
        logger.warning("SIGHUP reload is not available here")
