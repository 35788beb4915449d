"""Ray Serve backend: each batch travels to a replica in ONE handle call.

Modes (deploy, attach), the calling convention of attached applications, how
batches travel, failures and the cluster are described in docs/ray.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from inferential.config.schema import InferentialConfig, ModelConfig, RayConfig
from inferential.dispatch.base import (
    Backend,
    BackendError,
    BackendHealth,
    Done,
    Inputs,
    Model,
    ModelHealth,
    ModelInfo,
    Outcome,
    check_outcomes,
    normalize_outcome,
)
from inferential.dispatch.ray.cluster import connect_ray
from inferential.dispatch.ray.direct import PROTOCOL, DirectPool, ReplicaLost, decode, encode
from inferential.dispatch.ray.replica import BatchFailed, RemoteModelError, build_app
from inferential.dispatch.ray.serve_compat import (
    method_handles,
    methods_from_missing_method_error,
    open_handle,
    replica_failure_types,
    replica_unique_ids,
)
from inferential.dispatch.registry import register_backend

log = logging.getLogger("inferential.dispatch.ray")

_CONTROL_CALL_TIMEOUT_S = 30.0
_DEPLOY_TIMEOUT_S = 300.0
# Direct batches whose legs health() summarises (the last ones; ~5 s at 200 batches/s).
_LEGS_KEPT = 1024
_LEG_NAMES = ("to_replica", "to_model", "model", "back")


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
    deployment: str = ""
    direct_info: Optional[dict] = None  # what describe() said of the replica's direct socket
    direct: Optional[DirectPool] = None  # replicas reachable over their sockets (direct.py)
    direct_calls: int = 0
    # Where the last direct batches' time went, seconds each, from the replica's wall-clock
    # stamps (same machine): (to the replica's thread, on it before the model ran, the
    # model's run, the result's way back to this loop). Medians in health()["direct_ms"].
    legs: deque = field(default_factory=lambda: deque(maxlen=_LEGS_KEPT))
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


def _legs_ms(legs: Sequence[tuple[float, float, float, float]]) -> Optional[dict[str, Any]]:
    """Medians, in ms, of where the last direct batches' time went: ``to_replica`` (sent
    by this loop to read by the replica's thread: ZMQ both ends, the socket), ``to_model``
    (decoding it, and waiting for the model's thread), ``model`` (the model's run),
    ``back`` (encoding the result, its way back and this loop's turn to read it)."""
    if not legs:
        return None
    columns = list(zip(*legs, strict=True))
    summary: dict[str, Any] = {"batches": len(legs)}
    for name, values in zip(_LEG_NAMES, columns, strict=True):
        summary[name] = round(statistics.median(values) * 1e3, 3)
    return summary


def _tensor_bytes(batch: Iterable[Inputs]) -> int:
    return sum(v.nbytes for inputs in batch for v in inputs.values() if isinstance(v, np.ndarray))


def _describe_error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[-1] if text else ""
    return f"{type(err).__name__}: {first[:300]}"


@register_backend("ray")
class RayBackend(Backend):
    """Runs batches on Ray Serve replicas (deployed here, or attached by name)."""

    @classmethod
    def from_config(cls, config: InferentialConfig, local_objects: Mapping[str, Any]) -> "RayBackend":
        return cls(config.models, config.ray, attach=config.ray.attach)

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
        # The last answer of serve.status(), per model, and what came with it.
        self._ready = False
        self._health_error = ""
        self._serve_state: dict[str, dict[str, Any]] = {}
        self._health_details: dict[str, Any] = {}
        self._health_task: Optional[asyncio.Task[None]] = None
        self._retryable: tuple[type[BaseException], ...] = ()
        self._zmq: Any = None  # zmq.asyncio.Context of the direct data path
        self._direct_refresh: Optional[asyncio.Task[None]] = None
        self._socket_files: set[str] = set()

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

        self._retryable = replica_failure_types()
        await asyncio.to_thread(serve.start, proxy_location="Disabled")
        if self._model_configs:
            targets = [
                serve.RunTarget(
                    target=build_app(m, direct=self._config.direct and m.name not in self._config.handle_models),
                    name=m.name,
                    route_prefix=None,
                )
                for m in self._model_configs
            ]
            try:
                await asyncio.wait_for(asyncio.to_thread(serve.run_many, targets), _DEPLOY_TIMEOUT_S)
            except Exception as err:
                reasons = await asyncio.to_thread(self._deploy_failures)
                raise BackendError(f"deploying models failed: {reasons or _describe_error(err)}") from err
        for target in self._targets.values():
            await self._open_handles(target)
        await asyncio.gather(*(self._warm_up(t) for t in self._targets.values()))
        await self._open_direct()

    # --- the direct data path (direct.py) ------------------------------------------------

    def _wants_direct(self, target: _Target) -> bool:
        info = target.direct_info
        return (
            self._config.direct
            and target.batched
            and target.name not in self._config.handle_models
            and isinstance(info, dict)
            and info.get("protocol") == PROTOCOL
        )

    async def _open_direct(self) -> None:
        targets = [t for t in self._targets.values() if self._wants_direct(t)]
        if not targets:
            return
        import zmq

        self._zmq = zmq.Context()
        for t in targets:
            t.direct = DirectPool(self._zmq, self._schedule_direct_refresh)
        await self._refresh_direct()
        await asyncio.gather(*(t.direct.wait_ready(5.0) for t in targets if t.direct is not None))
        for t in targets:
            assert t.direct is not None
            ready = [r for r in t.direct.replicas.values() if r.ready.is_set()]
            # An empty batch through each replica's socket and thread pool: the server's
            # first real batches must not pay for threads and buffers made on first use,
            # or its service-time estimate starts out far too high.
            await asyncio.gather(*(r.call(encode([]), _CONTROL_CALL_TIMEOUT_S) for r in ready), return_exceptions=True)
            log.info("model '%s': %d replica(s) on the direct data path", t.name, len(ready))

    async def _refresh_direct(self) -> None:
        """Follow Serve's replicas of every direct target (Ray's list of named actors)."""
        pools = [t for t in self._targets.values() if t.direct is not None]
        if not pools:
            return
        import ray

        try:
            names = await asyncio.wait_for(asyncio.to_thread(ray.util.list_named_actors, True), _CONTROL_CALL_TIMEOUT_S)
        except Exception as err:
            log.warning("listing Serve replicas failed: %s", err)
            return
        for t in pools:
            if t.direct is not None:
                t.direct.sync(replica_unique_ids(names, t.app, t.deployment))

    def _schedule_direct_refresh(self) -> None:
        """A replica went away: look for its successor soon (once, however many went)."""
        if not self._started or (self._direct_refresh is not None and not self._direct_refresh.done()):
            return

        async def later() -> None:
            await asyncio.sleep(0.2)  # Serve's replacement is listed a moment later
            await self._refresh_direct()

        try:
            self._direct_refresh = asyncio.get_running_loop().create_task(later())
        except RuntimeError:  # no loop: stop() is tearing down
            pass

    def _dispatch_direct(self, target: _Target, batch: list[Inputs], done: Done) -> None:
        """Run a batch over a replica's socket; ``done`` runs on the loop later. Without a
        replica on the direct path the batch goes through the Serve handle."""
        loop = asyncio.get_running_loop()
        target.calls += 1
        deadline = time.monotonic() + target.timeout_s

        def fail(error: BackendError) -> None:
            target.failures += 1
            target.last_error = str(error)
            done(None, error)

        try:
            frames = encode(batch)
        except Exception as err:  # inputs that do not pickle: this batch fails, nothing else
            loop.call_soon(fail, BackendError(f"model '{target.name}': the batch cannot be sent: {err}"))
            return

        def attempt(tries: int) -> None:
            pool = target.direct  # None once stop() has closed it
            replica = pool.pick() if pool is not None else None
            if replica is None:
                by_handle = loop.create_task(self._execute_batch(target, batch, deadline))
                by_handle.add_done_callback(lambda t: _settle_task(t, done, fail))
                return

            def replied(reply: Any, error: Optional[BaseException]) -> None:
                if error is None:
                    try:
                        kind, result, stamps = decode(reply)
                        if kind != "ok":
                            raise BackendError(f"model '{target.name}': {result}")
                        if stamps:
                            received, started, finished = stamps
                            target.legs.append(
                                (received - sent_at, started - received, finished - started, time.time() - finished)
                            )
                        outcomes = self._batch_outcomes(target, batch, result)
                    except BackendError as err:
                        fail(err)
                        return
                    except Exception as err:  # a reply that does not decode
                        fail(BackendError(f"model '{target.name}': bad reply from the replica: {err}"))
                        return
                    target.direct_calls += 1
                    done(outcomes, None)
                elif isinstance(error, ReplicaLost):
                    if tries + 1 > self._config.replica_failure_retries or time.monotonic() >= deadline:
                        fail(BackendError(f"model '{target.name}': replica failed: {error}"))
                        return
                    target.retries += 1
                    log.warning("model '%s': replica failed (%s); retrying", target.name, error)
                    attempt(tries + 1)
                else:
                    target.timeouts += 1
                    fail(
                        BackendError(f"model '{target.name}': no answer within {target.timeout_s:g} s; request dropped")
                    )

            sent_at = time.time()  # wall clock, as the replica stamps it
            replica.send(frames, max(0.0, deadline - time.monotonic()), replied)

        attempt(0)

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
        target.deployment = deployment_name
        # Our own handle, not Serve's cached one: its router runs on this loop.
        target.base = open_handle(deployment_name, target.app)
        self._set_method(target, target.method)

    @staticmethod
    def _set_method(target: _Target, method: str) -> None:
        target.method = method
        target.by_reference, target.by_grpc = method_handles(target.base, method)

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
                raise BackendError(f"model '{target.name}' failed its warm-up call: {_describe_error(err)}") from err
            # A missing describe() is the convention's way of saying "not a batch app".
            methods = methods_from_missing_method_error(err)
            if methods is not None and "execute_batch" in methods:
                method = "execute_batch"
            elif methods is not None and "infer" in methods:
                method = "infer"
            else:
                method = "__call__"
            self._set_method(target, method)
            log.info(
                "attached '%s': calling %s (%s)",
                target.name,
                method,
                "one call per batch" if target.batched else "one call per request",
            )
            return
        if not isinstance(info, dict):
            raise BackendError(f"'{target.name}'.describe() returned {type(info).__name__}, not a dict")
        # Both of Serve's transports once, with an empty batch (answered without the
        # model), so the first real batches do not pay for their first use.
        for handle in (target.by_grpc, target.by_reference):
            try:
                await _await_within(handle.remote([]), deadline)
            except Exception as err:
                log.debug("warm-up of '%s' over a Serve handle: %s", target.name, err)
        target.max_batch_size = int(info.get("max_batch_size", target.max_batch_size))
        target.direct_info = info.get("direct")
        target.concurrency_per_replica = int(info.get("concurrency", target.concurrency_per_replica))

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
        if self._direct_refresh is not None:
            self._direct_refresh.cancel()
            self._direct_refresh = None
        for target in self._targets.values():
            if target.direct is not None:
                if target.deployed:  # ours: their files go once they are stopped
                    self._socket_files.update(r.path for r in target.direct.replicas.values())
                target.direct.close()
                target.direct = None
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None
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
        if connection == "started":
            # Not serve.shutdown(): it kills the controller with ray.kill while calls to
            # it are pending (its own graceful_shutdown, every handle's listen_for_change),
            # and Ray prints each as a red "Task ServeController... failed" line. The
            # cluster's end takes Serve and every replica along.
            await asyncio.to_thread(ray.shutdown)
            self._remove_socket_files()
            return
        # A cluster that stays: our applications are deleted while its controller lives.
        for target in self._targets.values():
            if target.deployed:
                try:
                    await asyncio.wait_for(asyncio.to_thread(serve.delete, target.app), _CONTROL_CALL_TIMEOUT_S)
                except Exception as err:
                    log.warning("could not delete Serve application '%s': %s", target.app, err)
        self._remove_socket_files()
        if connection == "connected":
            await asyncio.to_thread(ray.shutdown)

    def _remove_socket_files(self) -> None:
        """Replicas stopped with their cluster leave their socket files behind."""
        for path in self._socket_files:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._socket_files.clear()

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

    def submit(self, model_id: str, batch: list[Inputs], done: Done) -> None:
        target = self._targets.get(model_id)
        if target is None or target.direct is None or not batch or not self._started:
            super().submit(model_id, batch, done)  # errors and the Serve handle, via execute()
            return
        self._dispatch_direct(target, batch, done)

    async def execute(self, model_id: str, batch: list[Inputs]) -> list[Outcome]:
        target = self._targets.get(model_id)
        if target is None:
            raise BackendError(f"unknown model '{model_id}'")
        if not self._started or target.base is None:
            raise BackendError("the Ray backend is not started")
        if not batch:
            return []
        if target.direct is not None:
            fut: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()

            def settle(outcomes: Optional[list[Any]], error: Optional[BaseException]) -> None:
                if not fut.done():
                    if error is not None:
                        fut.set_exception(error)
                    else:
                        fut.set_result(outcomes or [])

            self._dispatch_direct(target, batch, settle)
            return await fut
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

    async def _execute_batch(self, target: _Target, batch: list[Inputs], deadline: float) -> list[Outcome]:
        return self._batch_outcomes(target, batch, await self._call(target, batch, deadline))

    @staticmethod
    def _batch_outcomes(target: _Target, batch: list[Inputs], result: Any) -> list[Outcome]:
        if isinstance(result, BatchFailed):
            raise BackendError(f"model '{target.name}' failed the batch: {result.reason}")
        try:
            return check_outcomes(result, len(batch))
        except TypeError as err:
            raise BackendError(f"model '{target.name}': {err}") from err

    async def _execute_per_request(self, target: _Target, batch: list[Inputs], deadline: float) -> list[Outcome]:
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
                    f"model '{target.name}': no answer within {target.timeout_s:g} s; request cancelled"
                ) from None
            except self._retryable as err:
                attempt += 1
                if attempt > self._config.replica_failure_retries or time.monotonic() >= deadline:
                    raise BackendError(f"model '{target.name}': replica failed: {_describe_error(err)}") from err
                target.retries += 1
                log.warning("model '%s': replica failed (%s); retrying", target.name, _describe_error(err))
            except Exception as err:
                if not target.batched:
                    raise  # the app's own exception for this one request
                raise BackendError(f"model '{target.name}': {_describe_error(err)}") from err

    # --- health -------------------------------------------------------------------------

    def health(self) -> BackendHealth:
        models: dict[str, ModelHealth] = {}
        for name, t in self._targets.items():
            entry = dict(self._serve_state.get(name, {}))
            entry.update(
                mode="deploy" if t.deployed else "attach",
                method=t.method,
                calls=t.calls,
                failures=t.failures,
                timeouts=t.timeouts,
                retries=t.retries,
                last_error=t.last_error,
                direct_replicas=0 if t.direct is None else sum(r.ready.is_set() for r in t.direct.replicas.values()),
                direct_calls=t.direct_calls,
                direct_ms=_legs_ms(t.legs),
            )
            running = entry.get("running_replicas")
            models[name] = ModelHealth(replicas=running, healthy=bool(entry.get("alive", False)), details=entry)
        return BackendHealth(
            ready=self._ready, error=self._health_error, models=models, details=dict(self._health_details)
        )

    async def refresh_health(self) -> BackendHealth:
        """Ask Serve for replica states now (health() returns the last answer)."""
        from ray import serve

        started = time.monotonic()
        try:
            status = await asyncio.wait_for(asyncio.to_thread(serve.status), _CONTROL_CALL_TIMEOUT_S)
        except Exception as err:
            self._ready, self._health_error, self._serve_state = False, _describe_error(err), {}
            self._health_details = {"checked_at": time.time(), "cluster": self._cluster_info()}
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
        self._serve_state = models
        self._ready = self._started and all(m["alive"] for m in models.values())
        self._health_error = ""
        self._health_details = {
            "checked_at": time.time(),
            "check_ms": (time.monotonic() - started) * 1e3,
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
                await self._refresh_direct()
            except Exception as err:  # never let the loop die
                log.warning("Ray health check failed: %s", err)


def _settle_task(task: "asyncio.Task[list[Outcome]]", done: Done, fail: Any) -> None:
    """A batch run as a task (the Serve handle fallback) finished: tell ``done``."""
    if task.cancelled():
        fail(BackendError("batch cancelled"))
    elif isinstance(task.exception(), BackendError):
        fail(task.exception())
    elif task.exception() is not None:
        fail(BackendError(f"{type(task.exception()).__name__}: {task.exception()}"))
    else:
        done(task.result(), None)


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
