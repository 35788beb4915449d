"""Every use of Ray Serve beyond its public API, in one place.

Each workaround says what it relies on and what happens when a Ray release drops
it; bench/ray_transfer.py measured why they are worth having (docs/ray.md).
"""

from __future__ import annotations

import ast
import logging
from typing import Any, Optional

log = logging.getLogger("inferential.dispatch.ray")


def open_handle(deployment_name: str, app: str) -> Any:
    """A DeploymentHandle of our own whose router runs on the calling event loop.

    ``_run_router_in_separate_loop=False`` is a private option: 0.1-0.4 ms less per
    call. Without it the router stays on Serve's own thread (slower, same results).
    """
    from ray.serve.handle import DeploymentHandle

    handle = DeploymentHandle(deployment_name, app)
    try:
        handle._init(_run_router_in_separate_loop=False)
    except Exception as err:  # a future Ray may drop the option
        log.warning("Serve handle router stays on its own thread (%s)", err)
    return handle


def method_handles(base: Any, method: str) -> tuple[Any, Any]:
    """(by reference, over gRPC) handles for ``method``: ``_by_reference`` is private;
    False selects Serve's direct gRPC transport, faster for small payloads."""
    return (
        base.options(method_name=method, _by_reference=True),
        base.options(method_name=method, _by_reference=False),
    )


def replica_unique_ids(named_actors: list[Any], app: str, deployment: str) -> set[str]:
    """The unique ids of a deployment's live replicas, from ``ray.util.list_named_actors(True)``.

    Relies on Serve naming each replica actor ``SERVE_REPLICA::<app>#<deployment>#<id>``
    in the "serve" namespace; if a release renames them, nothing matches and every
    batch goes through the Serve handle (slower, same results).
    """
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    out = set()
    for entry in named_actors:
        name = entry.get("name", "") if isinstance(entry, dict) else str(entry)
        if name.startswith(prefix) and "#" not in name[len(prefix) :]:
            out.add(name[len(prefix) :])
    return out


def replica_failure_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the replica (not the model) failed: worth another replica."""
    import ray.exceptions as rex
    from ray.serve.exceptions import DeploymentUnavailableError

    types: list[type[BaseException]] = [
        rex.RayActorError,  # ActorDiedError, ActorUnavailableError
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.LocalRayletDiedError,
        rex.ObjectLostError,
        DeploymentUnavailableError,
    ]
    try:
        import grpc

        types.append(grpc.aio.AioRpcError)  # the gRPC transport's failures
    except ImportError:  # pragma: no cover - grpc ships with ray[serve]
        pass
    return tuple(types)


def methods_from_missing_method_error(err: BaseException) -> Optional[list[str]]:
    """The methods a deployment has, read from Serve's error for a missing one (Serve
    has no public way to list them); None when the error is not that one."""
    text = str(err)
    marker = "Available methods: "
    at = text.find(marker)
    if "does not exist" not in text or at < 0:
        return None
    tail = text[at + len(marker) :]
    end = tail.find("]")
    try:
        names = ast.literal_eval(tail[: end + 1])
    except (ValueError, SyntaxError):
        return None
    return [n for n in names if isinstance(n, str)]
