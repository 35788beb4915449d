"""The Ray backend's former module path (bench/ray_transfer.py still imports it):
everything lives in :mod:`inferential.dispatch.ray` now."""

from inferential.dispatch.ray.backend import RayBackend
from inferential.dispatch.ray.cluster import connect_ray, prepare_local_auth
from inferential.dispatch.ray.replica import BatchFailed, ModelReplica, RemoteModelError, build_app

__all__ = [
    "BatchFailed",
    "ModelReplica",
    "RayBackend",
    "RemoteModelError",
    "build_app",
    "connect_ray",
    "prepare_local_auth",
]
