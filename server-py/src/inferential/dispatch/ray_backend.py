"""Ray Serve backend: each batch travels to a replica in ONE handle call.

Modes
-----
*deploy* -- every ``ModelConfig`` becomes a Serve application named after the
model, made of one deployment of :class:`ModelReplica`: the replica imports
``target``, builds the Model (``dispatch.base.instantiate``), calls ``load()``
once and then runs whole batches with ``execute_batch``. Deployed applications
are deleted on ``stop()``.

*attach* -- ``RayConfig.attach`` (or the ``attach`` argument) names Serve
applications deployed by someone else; ``Server(models=["policy-v2"])`` attaches
to the application ``policy-v2``. They are left running on ``stop()``.

Calling convention for attached applications (probed once in ``start()``):

1. Batch apps expose ``execute_batch(batch: list[dict]) -> list[result]`` on
   their ingress deployment: one call per batch, one result per request (a dict
   of arrays/strings, a bare array sent as ``actions``, or an Exception for that
   request alone). If they also expose ``describe() -> {"max_batch_size": int,
   "concurrency": int}`` (batches one replica runs at once), the backend uses
   it; :class:`ModelReplica` does both, so an application deployed with
   :func:`build_app` elsewhere attaches as a batch app.
2. Apps without ``execute_batch`` but with ``infer(inputs: dict) -> result``
   (the Inferential 1.x convention) get one call per request, all requests of
   a batch concurrently.
3. Otherwise ``__call__(inputs: dict) -> result``, per request, concurrently.

The probe calls ``describe()``; when that method is missing, Serve's error lists
the methods the deployment has, which decides between 1, 2 and 3.

Transfer
--------
A batch is sent as it comes: a list of input dicts holding numpy arrays (views
over the received frames) and strings. Numpy arrays travel as out-of-band
pickle buffers: through the object store for large arguments, arriving on the
replica as read-only views. ``bench/ray_transfer.py`` (2 cores, 150 KB
observations, p50 relative to that) found no gain in one packed buffer plus
descriptors (0.96-1.2x: one more copy), per-request ``bytes`` payloads
(0.9-1.2x: pickled in-band) or ``ray.put`` first (0.9-1.4x). Serve's direct
gRPC transport (``_by_reference=False``) is 0.64-0.75x for one observation and
1.3-2.3x for 8 or 20, which it pickles in-band; the crossover lies between 3
and 4 observations. So batches with at most ``RayConfig.grpc_max_bytes`` (512
KiB) of tensors go over gRPC and larger ones by reference. Handles run their
router on the caller's event loop (a private Serve option, with a fallback):
0.1-0.4 ms less per call, and the backend must be used from the loop that
started it. Model inputs on the replica are read-only.

Failures
--------
Every call has a deadline (``ModelConfig.timeout_s``, ``RayConfig.call_timeout_s``
for attached apps). On expiry the Serve request is cancelled and ``execute``
raises :class:`BackendError`; a replica that died mid-call (node lost, actor
killed) is retried on another replica up to ``RayConfig.replica_failure_retries``
times within the same deadline. A model exception for one request fails that
request only; an exception for the whole batch (or a wrong number of results)
raises BackendError. A replica whose batch has run longer than
``ModelConfig.hung_after_s`` fails Serve's health check, and Serve replaces it.

Cluster and authentication
--------------------------
``RayConfig.address`` None starts an embedded single-node Ray with no dashboard,
no HTTP proxy and no log forwarding, and stops it on ``stop()``; "auto",
"host:port" or "ray://..." connect to a running cluster and leave it running. A
process already connected to Ray (``ray.is_initialized()``) keeps its connection.

Ray 2.60 turns token authentication on for every new local cluster and, when no
token exists, writes a fresh one to ``~/.ray/auth_token`` that every later
cluster of that user reuses. For the embedded cluster we keep authentication on
(``RayConfig.token_auth``) but, unless the operator supplied a token
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or the file), give it a random
token held only in this process's environment, which Ray's child processes
inherit: nothing is written to the home directory. ``token_auth: false`` sets
``RAY_AUTH_MODE=disabled``. An explicit ``RAY_AUTH_MODE`` always wins. To
connect to a cluster with authentication, provide its token the same ways.
"""

from __future__ import annotations

import ast
import asyncio
import logging
import os
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from inferential.config.schema import ModelConfig, RayConfig
from inferential.dispatch.base import (
    Backend,
    BackendError,
    Inputs,
    Model,
    ModelInfo,
    Outcome,
    check_outcomes,
    instantiate,
    load_target,
    normalize_outcome,
)

log = logging.getLogger("inferential.dispatch.ray")

# Ray's own limit of failed constructor attempts is 20 per replica: a model that
# cannot load should fail start() in seconds, not minutes.
_CONSTRUCTOR_RETRIES = 3
_HEALTH_CHECK_PERIOD_S = 2.0
_CONTROL_CALL_TIMEOUT_S = 30.0
_DEPLOY_TIMEOUT_S = 300.0


# --- what crosses the wire back from a replica ----------------------------------


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


# --- the replica --------------------------------------------------------------------


class ModelReplica:
    """Body of a deployed model's Serve deployment (one instance per replica)."""

    def __init__(
        self,
        target: str,
        options: dict[str, Any],
        max_batch_size: Optional[int],
        concurrency: int,
        hung_after_s: float,
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

    def describe(self) -> dict[str, Any]:
        import ray

        return {
            "max_batch_size": int(self._model.max_batch_size),
            "concurrency": self._concurrency,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    async def execute_batch(self, batch: list[Inputs]) -> list[Outcome] | BatchFailed:
        if not batch:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, batch)

    def _run(self, batch: list[Inputs]) -> list[Outcome] | BatchFailed:
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
        with self._lock:
            oldest = min(self._running.values(), default=None)
        if oldest is not None and time.monotonic() - oldest > self._hung_after_s:
            raise RuntimeError(
                f"a batch has been running for more than {self._hung_after_s:.1f} s; "
                "asking Serve for a fresh replica"
            )


def hung_after_s(model: ModelConfig) -> float:
    return model.hung_after_s if model.hung_after_s is not None else 3 * model.timeout_s


def build_app(model: ModelConfig) -> Any:
    """The Serve application for one model (also usable to deploy it separately)."""
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
    )


# --- connecting to Ray ---------------------------------------------------------------


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


# --- the driver side ---------------------------------------------------------------------

@dataclass
class _Target:
    name: str
    app: str
    deployed: bool
    timeout_s: float
    max_batch_size: int
    concurrency_per_replica: int
    replicas: int
    method: str = "execute_batch"  # "execute_batch", "infer" or "__call__"
    by_reference: Any = None  # DeploymentHandle over the object store
    by_grpc: Any = None  # DeploymentHandle over Serve's direct gRPC transport
    base: Any = None
    calls: int = 0
    failures: int = 0
    timeouts: int = 0
    retries: int = 0
    last_error: Optional[str] = None

    @property
    def batched(self) -> bool:
        return self.method == "execute_batch"


def _tensor_bytes(batch: Iterable[Inputs]) -> int:
    return sum(v.nbytes for inputs in batch for v in inputs.values() if isinstance(v, np.ndarray))


def _replica_failure_types() -> tuple[type[BaseException], ...]:
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

        types.append(grpc.aio.AioRpcError)
    except ImportError:  # pragma: no cover - grpc ships with ray[serve]
        pass
    return tuple(types)


def _describe_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[-1] if text else ""
    return f"{type(err).__name__}: {first[:300]}"


def _methods_from_missing_method_error(err: BaseException) -> Optional[list[str]]:
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


class RayBackend(Backend):
    """Runs batches on Ray Serve replicas (deployed here, or attached by name)."""

    def __init__(
        self,
        models: Sequence[ModelConfig] = (),
        ray: Optional[RayConfig] = None,
        attach: Sequence[str] = (),
    ) -> None:
        self._config = ray or RayConfig()
        self._model_configs = list(models)
        self._attach = list(dict.fromkeys([*self._config.attach, *attach]))
        names = [m.name for m in self._model_configs] + self._attach
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"model names {sorted(dup)} are listed twice (deployed or attached)")
        self._targets: dict[str, _Target] = {}
        for m in self._model_configs:
            self._targets[m.name] = _Target(
                name=m.name,
                app=m.name,
                deployed=True,
                timeout_s=m.timeout_s,
                max_batch_size=m.max_batch_size or Model.max_batch_size,
                concurrency_per_replica=m.concurrency,
                replicas=m.num_replicas,
            )
        for name in self._attach:
            self._targets[name] = _Target(
                name=name,
                app=name,
                deployed=False,
                timeout_s=self._config.call_timeout_s,
                max_batch_size=Model.max_batch_size,
                concurrency_per_replica=1,
                replicas=1,
            )
        self._connection: Optional[str] = None  # what connect_ray() returned
        self._started = False
        self._health: dict[str, Any] = {"ready": False, "models": {}}
        self._health_task: Optional[asyncio.Task[None]] = None
        self._retryable: tuple[type[BaseException], ...] = ()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._connection = await asyncio.to_thread(connect_ray, self._config)
        try:
            await self._start_serve_and_apps()
        except BaseException:
            await self._release()
            raise
        self._started = True
        await self.refresh_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="inferential-ray-health")

    async def _start_serve_and_apps(self) -> None:
        from ray import serve

        self._retryable = _replica_failure_types()
        await asyncio.to_thread(serve.start, proxy_location="Disabled")
        if self._model_configs:
            targets = [
                serve.RunTarget(target=build_app(m), name=m.name, route_prefix=None)
                for m in self._model_configs
            ]
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(serve.run_many, targets), _DEPLOY_TIMEOUT_S
                )
            except Exception as err:
                reasons = await asyncio.to_thread(self._deploy_failures)
                raise BackendError(
                    f"deploying models failed: {reasons or _describe_error(err)}"
                ) from err
        for target in self._targets.values():
            await self._open_handles(target)
        await asyncio.gather(*(self._warm_up(t) for t in self._targets.values()))

    def _deploy_failures(self) -> str:
        """Why Serve could not deploy our applications, from its status messages."""
        from ray import serve

        try:
            apps = serve.status().applications
        except Exception:
            return ""
        reasons = []
        for m in self._model_configs:
            app = apps.get(m.name)
            if app is None or getattr(app.status, "value", app.status) == "RUNNING":
                continue
            messages = [d.message for d in app.deployments.values() if d.message] or [app.message]
            lines = [ln.strip() for text in messages for ln in text.splitlines() if ln.strip()]
            reasons.append(f"'{m.name}': {lines[-1][:300] if lines else app.status}")
        return "; ".join(reasons)

    async def _open_handles(self, target: _Target) -> None:
        from ray import serve
        from ray.serve.handle import DeploymentHandle

        if target.deployed:
            deployment_name = target.name
        else:
            try:
                app_handle = await asyncio.to_thread(serve.get_app_handle, target.app)
            except Exception as err:
                raise BackendError(
                    f"cannot attach to Serve application '{target.app}': {_describe_error(err)}"
                ) from err
            deployment_name = app_handle.deployment_name
        # Our own handle, not Serve's cached one: its router runs on this loop.
        base = DeploymentHandle(deployment_name, target.app)
        try:
            base._init(_run_router_in_separate_loop=False)
        except Exception as err:  # private option; a future Ray may drop it
            log.warning("Serve handle router stays on its own thread (%s)", err)
        target.base = base
        self._set_method(target, target.method)

    @staticmethod
    def _set_method(target: _Target, method: str) -> None:
        target.method = method
        target.by_reference = target.base.options(method_name=method, _by_reference=True)
        target.by_grpc = target.base.options(method_name=method, _by_reference=False)

    async def _warm_up(self, target: _Target) -> None:
        """One call per model: routes are learnt, and attached apps are probed."""
        probe = target.base.options(method_name="describe", _by_reference=True)
        deadline = time.monotonic() + max(target.timeout_s, _CONTROL_CALL_TIMEOUT_S)
        try:
            info = await _await_within(probe.remote(), deadline)
        except asyncio.TimeoutError:
            raise BackendError(f"model '{target.name}' did not answer its warm-up call") from None
        except Exception as err:
            if target.deployed or isinstance(err, self._retryable):
                raise BackendError(
                    f"model '{target.name}' failed its warm-up call: {_describe_error(err)}"
                ) from err
            # A missing describe() is the convention's way of saying "not a batch app".
            methods = _methods_from_missing_method_error(err)
            if methods is not None and "execute_batch" in methods:
                method = "execute_batch"
            elif methods is not None and "infer" in methods:
                method = "infer"
            else:
                method = "__call__"
            self._set_method(target, method)
            log.info(
                "attached '%s': calling %s (%s)", target.name, method,
                "one call per batch" if target.batched else "one call per request",
            )
            return
        if not isinstance(info, dict):
            raise BackendError(
                f"'{target.name}'.describe() returned {type(info).__name__}, not a dict"
            )
        target.max_batch_size = int(info.get("max_batch_size", target.max_batch_size))
        target.concurrency_per_replica = int(
            info.get("concurrency", target.concurrency_per_replica)
        )

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None
        await self._release()
        self._started = False

    async def _release(self) -> None:
        for target in self._targets.values():
            if target.base is not None:
                try:
                    await asyncio.wait_for(target.base.shutdown_async(), 5.0)
                except Exception as err:
                    log.debug("closing handle of %s: %s", target.name, err)
                target.base = target.by_reference = target.by_grpc = None
        import ray
        from ray import serve

        connection, self._connection = self._connection, None
        if connection is None or not ray.is_initialized():
            return
        if connection == "started":  # everything goes with the cluster
            await asyncio.to_thread(serve.shutdown)
            await asyncio.to_thread(ray.shutdown)
            return
        for target in self._targets.values():
            if target.deployed:
                try:
                    await asyncio.wait_for(
                        asyncio.to_thread(serve.delete, target.app), _CONTROL_CALL_TIMEOUT_S
                    )
                except Exception as err:
                    log.warning("could not delete Serve application '%s': %s", target.app, err)
        if connection == "connected":
            await asyncio.to_thread(ray.shutdown)

    # --- serving -----------------------------------------------------------------------

    def models(self) -> dict[str, ModelInfo]:
        return {
            t.name: ModelInfo(
                name=t.name,
                max_batch_size=t.max_batch_size,
                concurrency=max(1, t.replicas * t.concurrency_per_replica),
            )
            for t in self._targets.values()
        }

    async def execute(self, model_id: str, batch: list[Inputs]) -> list[Outcome]:
        target = self._targets.get(model_id)
        if target is None:
            raise BackendError(f"unknown model '{model_id}'")
        if not self._started or target.base is None:
            raise BackendError("the Ray backend is not started")
        if not batch:
            return []
        target.calls += 1
        deadline = time.monotonic() + target.timeout_s
        try:
            if target.batched:
                return await self._execute_batch(target, batch, deadline)
            return await self._execute_per_request(target, batch, deadline)
        except BackendError as err:
            target.failures += 1
            target.last_error = str(err)
            raise

    async def _execute_batch(
        self, target: _Target, batch: list[Inputs], deadline: float
    ) -> list[Outcome]:
        result = await self._call(target, batch, deadline)
        if isinstance(result, BatchFailed):
            raise BackendError(f"model '{target.name}' failed the batch: {result.reason}")
        try:
            return check_outcomes(result, len(batch))
        except TypeError as err:
            raise BackendError(f"model '{target.name}': {err}") from err

    async def _execute_per_request(
        self, target: _Target, batch: list[Inputs], deadline: float
    ) -> list[Outcome]:
        import ray.exceptions as rex

        results = await asyncio.gather(
            *(self._call(target, inputs, deadline) for inputs in batch), return_exceptions=True
        )
        if all(isinstance(r, BackendError) for r in results):
            raise results[0]
        outcomes: list[Outcome] = []
        for r in results:
            if isinstance(r, rex.RayTaskError) and r.cause is not None:
                outcomes.append(RemoteModelError.of(r.cause))
            elif isinstance(r, BackendError):
                outcomes.append(r)
            elif isinstance(r, BaseException):
                outcomes.append(RemoteModelError.of(r))
            else:
                try:
                    outcomes.append(normalize_outcome(r))
                except TypeError as err:
                    outcomes.append(err)
        return outcomes

    async def _call(self, target: _Target, payload: Any, deadline: float) -> Any:
        """One handle call within the deadline; a lost replica is retried on another."""
        nbytes = _tensor_bytes(payload if isinstance(payload, list) else [payload])
        handle = target.by_grpc if nbytes <= self._config.grpc_max_bytes else target.by_reference
        attempt = 0
        while True:
            try:
                return await _await_within(handle.remote(payload), deadline)
            except asyncio.TimeoutError:
                target.timeouts += 1
                raise BackendError(
                    f"model '{target.name}': no answer within {target.timeout_s:g} s; "
                    "request cancelled"
                ) from None
            except self._retryable as err:
                attempt += 1
                if attempt > self._config.replica_failure_retries or time.monotonic() >= deadline:
                    raise BackendError(
                        f"model '{target.name}': replica failed: {_describe_error(err)}"
                    ) from err
                target.retries += 1
                log.warning(
                    "model '%s': replica failed (%s); retrying", target.name, _describe_error(err)
                )
            except Exception as err:
                if not target.batched:
                    raise  # the app's own exception for this one request
                raise BackendError(f"model '{target.name}': {_describe_error(err)}") from err

    # --- health -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        out = dict(self._health)
        out["models"] = {}
        for name, t in self._targets.items():
            entry = dict(self._health.get("models", {}).get(name, {}))
            entry.update(
                mode="deploy" if t.deployed else "attach",
                method=t.method,
                calls=t.calls,
                failures=t.failures,
                timeouts=t.timeouts,
                retries=t.retries,
                last_error=t.last_error,
            )
            out["models"][name] = entry
        return out

    async def refresh_health(self) -> dict[str, Any]:
        """Ask Serve for replica states now (health() returns the last answer)."""
        from ray import serve

        started = time.monotonic()
        try:
            status = await asyncio.wait_for(
                asyncio.to_thread(serve.status), _CONTROL_CALL_TIMEOUT_S
            )
        except Exception as err:
            self._health = {
                "ready": False,
                "error": _describe_error(err),
                "checked_at": time.time(),
                "models": {},
                "cluster": self._cluster_info(),
            }
            return self.health()
        models: dict[str, Any] = {}
        for name, t in self._targets.items():
            app = status.applications.get(t.app)
            if app is None:
                models[name] = {
                    "app_status": "MISSING",
                    "replicas": {},
                    "running_replicas": 0,
                    "alive": False,
                }
                continue
            states: dict[str, int] = {}
            for dep in app.deployments.values():
                for state, n in dep.replica_states.items():
                    key = getattr(state, "value", str(state))
                    states[key] = states.get(key, 0) + n
            running = states.get("RUNNING", 0)
            if not t.deployed:
                t.replicas = max(1, running)
            models[name] = {
                "app_status": getattr(app.status, "value", str(app.status)),
                "replicas": states,
                "running_replicas": running,
                "target_replicas": t.replicas if t.deployed else None,
                "alive": running > 0,
            }
        self._health = {
            "ready": self._started and all(m["alive"] for m in models.values()),
            "checked_at": time.time(),
            "check_ms": (time.monotonic() - started) * 1e3,
            "models": models,
            "cluster": self._cluster_info(),
        }
        return self.health()

    def _cluster_info(self) -> dict[str, Any]:
        return {"address": self._config.address, "connection": self._connection}

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.health_interval_s)
            try:
                await self.refresh_health()
            except Exception as err:  # never let the loop die
                log.warning("Ray health check failed: %s", err)


async def _await_within(response: Any, deadline: float) -> Any:
    """The response's result, or asyncio.TimeoutError after cancelling the request."""

    async def result() -> Any:
        return await response

    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise asyncio.TimeoutError
        return await asyncio.wait_for(result(), remaining)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        response.cancel()  # also drops it from the router's queue or the replica
        raise
