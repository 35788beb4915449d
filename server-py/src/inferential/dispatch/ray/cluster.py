"""Connecting this process to Ray: an embedded single-node cluster or a running one.

Token authentication for the embedded cluster is explained in docs/ray.md.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from inferential.config.schema import RayConfig


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").exists()


def prepare_local_auth(config: RayConfig) -> str:
    """Set up token authentication for an embedded cluster; returns the mode used."""
    explicit = os.environ.get("RAY_AUTH_MODE")
    if explicit:
        return explicit
    if not config.token_auth:
        os.environ["RAY_AUTH_MODE"] = "disabled"
        return "disabled"
    if not _token_available():
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_urlsafe(32)
    return "token"


def connect_ray(config: RayConfig) -> str:
    """Connect this process to Ray as configured.

    Returns "started" (we started an embedded cluster), "connected" (we joined a
    running cluster) or "reused" (this process was already connected).
    """
    import ray

    if ray.is_initialized():
        return "reused"
    if config.address is None:
        prepare_local_auth(config)
        ray.init(
            # "local" never joins a cluster someone started on this machine.
            address="local",
            num_cpus=config.num_cpus,
            namespace=config.namespace,
            include_dashboard=False,
            log_to_driver=False,
        )
        return "started"
    ray.init(address=config.address, namespace=config.namespace, log_to_driver=False)
    return "connected"
