"""Metrics: the in-memory store behind `server.metrics`, and exporters."""

from inferential.metrics.store import MetricsStore, Stats, percentile

__all__ = ["MetricsStore", "Stats", "percentile"]
