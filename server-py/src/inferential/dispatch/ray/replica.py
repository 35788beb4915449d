"""What runs inside a Ray Serve replica: the deployment body and what it sends back.

Ray workers import this module (and what it imports) to build each replica, so it
stays small: no Serve driver code, no numpy-heavy helpers, no server imports.
Design notes: docs/ray.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from inferential.config.schema import ModelConfig
from inferential.dispatch.base import Inputs, Model, Outcome, check_outcomes, instantiate, load_target
from inferential.dispatch.ray.direct import PROTOCOL, ReplicaChannel, socket_path

# Ray's own limit of failed constructor attempts is 20 per replica: a model that
# cannot load should fail start() in seconds, not minutes.
_CONSTRUCTOR_RETRIES = 3
_HEALTH_CHECK_PERIOD_S = 2.0


class RemoteModelError(Exception):
    """A model's exception for one request, carried by type name and message.

    The original exception class may not exist (or unpickle) in the server.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteModelError, (self.type_name, self.message))

    @classmethod
    def of(cls, err: BaseException) -> "RemoteModelError":
        if isinstance(err, RemoteModelError):
            return err
        return cls(type(err).__name__, str(err))


@dataclass(frozen=True)
class BatchFailed:
    """Returned instead of results when the model failed the whole batch."""

    reason: str


def _portable(outcomes: Sequence[Outcome]) -> list[Outcome]:
    return [RemoteModelError.of(o) if isinstance(o, BaseException) else o for o in outcomes]


class ModelReplica:
    """Body of a deployed model's Serve deployment (one instance per replica)."""

    def __init__(
        self,
        target: str,
        options: dict[str, Any],
        max_batch_size: Optional[int],
        concurrency: int,
        hung_after_s: float,
        direct: bool = True,
    ) -> None:
        self._model: Model = instantiate(load_target(target), options, max_batch_size)
        self._model.load()
        self._concurrency = concurrency
        # Batches run on our own threads so the replica's event loop stays free
        # to answer health checks and cancellations while a model computes.
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="inferential-model")
        self._hung_after_s = hung_after_s
        self._running: dict[int, float] = {}
        self._lock = threading.Lock()
        self._seq = 0
        # At most `concurrency` batches at once across both ways in: Serve's calls (on
        # the pool) and the direct path (on its I/O thread when concurrency is 1).
        self._gate = threading.BoundedSemaphore(concurrency)
        self._channel: Optional[ReplicaChannel] = None
        if direct:
            self._channel = _open_channel(self._run, self._pool, inline=concurrency == 1)

    def __del__(self) -> None:
        # Serve calls this when it stops the replica gracefully: the socket file goes too.
        channel = getattr(self, "_channel", None)
        if channel is not None:
            channel.close()

    def describe(self) -> dict[str, Any]:
        import ray

        return {
            "max_batch_size": int(self._model.max_batch_size),
            "concurrency": self._concurrency,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            # The direct data path (dispatch/ray/direct.py), when this replica has one.
            "direct": None if self._channel is None else {"protocol": PROTOCOL, "path": self._channel.path},
        }

    async def execute_batch(self, batch: list[Inputs]) -> list[Outcome] | BatchFailed:
        if not batch:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, batch)

    async def execute_batch_timed(self, batch: list[Inputs]) -> tuple[Any, tuple[float, float, float]]:
        """execute_batch with wall-clock times (entered on the replica's loop, started, finished),
        for bench/ray_backend.py's breakdown of a Serve handle call."""
        entered = time.time()
        loop = asyncio.get_running_loop()

        def timed() -> tuple[Any, float, float]:
            started = time.time()
            return self._run(batch), started, time.time()

        result, started, finished = await loop.run_in_executor(self._pool, timed)
        return result, (entered, started, finished)

    def _run(self, batch: list[Inputs]) -> list[Outcome] | BatchFailed:
        with self._gate:
            return self._run_now(batch)

    def _run_now(self, batch: list[Inputs]) -> list[Outcome] | BatchFailed:
        with self._lock:
            self._seq += 1
            token = self._seq
            self._running[token] = time.monotonic()
        try:
            try:
                outcomes = check_outcomes(self._model.execute(batch), len(batch))
            except Exception as err:  # the model failed the batch as a whole
                return BatchFailed(f"{type(err).__name__}: {err}")
            return _portable(outcomes)
        finally:
            with self._lock:
                del self._running[token]

    def check_health(self) -> None:
        if self._channel is not None and not self._channel.alive:
            raise RuntimeError(f"the direct data path stopped: {self._channel.error!r}")
        with self._lock:
            oldest = min(self._running.values(), default=None)
        if oldest is not None and time.monotonic() - oldest > self._hung_after_s:
            raise RuntimeError(
                f"a batch has been running for more than {self._hung_after_s:.1f} s; asking Serve for a fresh replica"
            )


def _open_channel(run: Any, pool: ThreadPoolExecutor, inline: bool) -> Optional[ReplicaChannel]:
    """This replica's direct socket, named after its Serve replica id; None (Serve
    handle calls only) when it cannot be opened here."""
    from ray import serve

    try:
        unique_id = serve.get_replica_context().replica_id.unique_id
        return ReplicaChannel(socket_path(unique_id), run, pool, inline)
    except Exception as err:  # the Serve handle path still works
        logging.getLogger("inferential.dispatch.ray").warning("no direct data path on this replica: %s", err)
        return None


def hung_after_s(model: ModelConfig) -> float:
    return model.hung_after_s if model.hung_after_s is not None else 3 * model.timeout_s


def build_app(model: ModelConfig, direct: bool = True) -> Any:
    """The Serve application for one model (also usable to deploy it separately).

    ``direct``: each replica opens its socket for the direct data path (direct.py).
    """
    from ray import serve

    deployment = serve.deployment(
        ModelReplica,
        name=model.name,
        num_replicas=model.num_replicas,
        ray_actor_options={"num_cpus": model.num_cpus, "num_gpus": model.num_gpus},
        # One call carries a whole batch, so this counts batches, not requests:
        # Serve's default of 5 never caps our batch size.
        max_ongoing_requests=model.max_ongoing_requests or model.concurrency,
        health_check_period_s=_HEALTH_CHECK_PERIOD_S,
        max_constructor_retry_count=_CONSTRUCTOR_RETRIES,
        logging_config={"enable_access_log": False},
    )
    return deployment.bind(
        model.target,
        dict(model.options),
        model.max_batch_size,
        model.concurrency,
        hung_after_s(model),
        direct,
    )
