"""What the server reports about itself: /status, /readyz and `inferential top`.

Everything here reads :meth:`Server.status` (a JSON-able dict computed on the
server's loop) and the metrics store's public queries, from any thread.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, Optional

from inferential.metrics.store import MetricsStore, percentile

#: Seconds of history behind /status's per-robot and per-model figures (``?window=`` changes it).
STATUS_WINDOW_S = 10.0


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
    """Replicas of ``model`` from the ``backend`` entry of Server.status()
    (a :class:`~inferential.dispatch.base.BackendHealth` as a dict)."""
    entry = (health.get("models") or {}).get(model) or {}
    replicas = entry.get("replicas")
    return None if replicas is None else int(replicas)


def slo_attainment(metrics: MetricsStore, window_s: float) -> dict[tuple[str, str], float]:
    met: dict[tuple[str, str], list[float]] = {}
    for _, v, labels in metrics.points("slo_met", window_s):
        met.setdefault((labels.get("client", ""), labels.get("model", "")), []).append(v)
    return {k: sum(v) / len(v) for k, v in met.items()}


def _num(x: float) -> Optional[float]:
    """JSON has no NaN: missing figures are null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 3)


def fleet_status(server: Any, status: dict, window_s: float = STATUS_WINDOW_S) -> dict[str, Any]:
    """Per-robot and per-model figures over the last ``window_s`` seconds, for /status and `top`."""
    metrics: MetricsStore = server.metrics
    now = metrics.now()
    arrivals: dict[str, list[float]] = defaultdict(list)
    for t, _, labels in metrics.points("payload_size_bytes", window_s):  # one point per admitted observation
        arrivals[labels.get("client", "")].append(t)
    latency: dict[str, list[float]] = defaultdict(list)
    for _, v, labels in metrics.points("e2e_latency_ms", window_s):
        latency[labels.get("client", "")].append(v)
    slo: dict[str, list[float]] = defaultdict(list)
    for _, v, labels in metrics.points("slo_met", window_s):
        slo[labels.get("client", "")].append(v)

    clock_ns = server.clock()
    robots: dict[str, Any] = {}
    for client_id, robot in sorted(list(server.registry.robots.items())):
        times = arrivals.get(client_id, [])
        # A robot seen for less than the window is measured over the time it has been sending.
        span = min(window_s, max(1.0, now - times[0])) if times else window_s
        lat = sorted(latency.get(client_id, []))
        # One line per model: of several connections, the one heard from last.
        by_model = {m: c for (m, _), c in sorted(robot.cadences.items(), key=lambda kv: kv[1].last_arrival_ns or 0)}
        cadences = sorted(by_model.items())
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
    for _, v, labels in metrics.points("batch_size", window_s):
        batch[labels.get("model", "")].append(v)
    infer: dict[str, list[float]] = defaultdict(list)
    for _, v, labels in metrics.points("inference_latency_ms", window_s):
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
        "auth": {
            "token": "<set>" if config.auth.token is not None else None,
            "curve_secret_key": "<set>" if config.auth.curve_secret_key is not None else None,
        },
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
    health = server.backend.health()
    if not health.ready:
        return False, "not ready: backend reports models not running" + (f" ({health.error})" if health.error else "")
    return True, "ready"
