"""Metrics: the in-memory store behind `server.metrics` (``store``); the Prometheus
exporter (``prometheus``) is imported on its own, only where /metrics is served."""

from inferential.metrics.store import MetricsStore, Stats, percentile

__all__ = ["MetricsStore", "Stats", "percentile"]
