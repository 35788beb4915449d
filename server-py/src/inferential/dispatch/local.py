"""Local backend: models run in this process, off the event loop, on worker threads.

Each model gets its own thread pool of ``concurrency`` workers, so a slow model
never blocks the event loop or another model; numpy/ONNX kernels release the GIL.

A model whose batches all finish in well under a tenth of a millisecond costs
less to run than the two thread switches around it. After ``INLINE_PROBE``
consecutive runs under ``inline_below_ms`` on its threads, such a model runs
inline on the event loop (``run_inline``: the server finishes such a batch
without a trip through the loop); a single run over ``INLINE_EJECT`` times that bound
sends it back to its threads, and it must prove itself again (for longer each
time). Models with ``allow_inline = False`` always run on their threads.

A batch that runs longer than its model's ``timeout_s`` is failed at that time
(the engine answers it MODEL_ERROR). Python cannot stop the thread, so its worker
is written off: the model's concurrency drops by one (to 0 when all are stuck,
so nothing more is sent to it) and ``health()`` reports the model hung, failing
readiness, until the call returns. ``stop()`` waits a bounded time for workers
and leaves hung ones behind (the CLI then exits without them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from time import monotonic, perf_counter, perf_counter_ns
from typing import Any, Callable, Mapping, Optional

from inferential.config.schema import InferentialConfig, ModelConfig
from inferential.dispatch.base import (
    BACK_NS,
    Backend,
    BackendError,
    BackendHealth,
    Done,
    Inputs,
    Model,
    ModelHealth,
    ModelInfo,
    Outcome,
    Ran,
    check_outcomes,
    instantiate,
    load_target,
)
from inferential.dispatch.registry import register_backend

logger = logging.getLogger("inferential.dispatch.local")

#: Execution timeout of models given as objects (``Server(models={...})``): the
#: configuration's default for a ``models:`` entry.
DEFAULT_TIMEOUT_S: float = ModelConfig.model_fields["timeout_s"].default
#: How long ``stop()`` waits for model threads to finish their current batch.
STOP_WAIT_S = 5.0


INLINE_PROBE = 32
INLINE_EJECT = 10.0


class _Loaded:
    __slots__ = (
        "model", "info", "pool", "errors", "calls", "fast_runs", "inline", "ejections", "allow_inline",
        "timeout_s", "timeouts", "hung", "workers",
    )  # fmt: skip

    def __init__(self, model: Model, info: ModelInfo, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.model = model
        self.info = info
        self.timeout_s = timeout_s
        self.timeouts = 0  # batches failed for running past timeout_s
        self.hung = 0  # of those, calls that have not returned yet (workers written off)
        self.workers = info.concurrency
        self.pool = ThreadPoolExecutor(max_workers=info.concurrency, thread_name_prefix=f"model-{info.name}")
        self.errors = 0
        self.calls = 0
        self.fast_runs = 0
        self.inline = False
        self.ejections = 0
        self.allow_inline = bool(model.allow_inline)

    def observe_run(self, ms: float, below_ms: float) -> None:
        """Track run times; decide whether the next batch runs inline."""
        if not self.allow_inline or below_ms <= 0:
            return
        if self.inline:
            if ms > below_ms * INLINE_EJECT:
                self.inline = False
                self.fast_runs = 0
                self.ejections += 1
                logger.info("model %s back on its threads (a batch took %.2f ms)", self.info.name, ms)
            return
        self.fast_runs = self.fast_runs + 1 if ms <= below_ms else 0
        if self.fast_runs >= INLINE_PROBE * (1 + self.ejections):
            self.inline = True


@register_backend("local")
class LocalBackend(Backend):
    """Serves models given as ModelConfig entries or as ready objects.

    ``objects`` maps a model name to a Model instance or subclass, a plain
    callable, or a "module:Attr" target string.
    """

    @classmethod
    def from_config(cls, config: InferentialConfig, local_objects: Mapping[str, Any]) -> "LocalBackend":
        return cls(config.models, local_objects, default_max_batch_size=config.scheduling.max_batch_size)

    def __init__(
        self,
        configs: list[ModelConfig] | None = None,
        objects: Mapping[str, Any] | None = None,
        default_max_batch_size: int = 8,
        inline_below_ms: float = 0.1,
    ) -> None:
        self._pending: list[tuple[str, Any, dict, int | None, int, float]] = []
        for cfg in configs or []:
            self._pending.append(
                (cfg.name, cfg.target, cfg.options, cfg.max_batch_size, cfg.concurrency, cfg.timeout_s)
            )
        for name, obj in (objects or {}).items():
            self._pending.append((name, obj, {}, None, 1, DEFAULT_TIMEOUT_S))
        self._default_batch = default_max_batch_size
        self._inline_below_ms = inline_below_ms
        self._models: dict[str, _Loaded] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for name, target, options, max_batch, concurrency, timeout_s in self._pending:
            obj = load_target(target) if isinstance(target, str) else target
            model = instantiate(obj, options, max_batch)
            if max_batch is None and type(model).max_batch_size == Model.max_batch_size:
                model.max_batch_size = self._default_batch
            info = ModelInfo(name=name, max_batch_size=model.max_batch_size, concurrency=concurrency)
            loaded = _Loaded(model, info, timeout_s)
            # load() may be slow (weights, warm-up): keep the loop free meanwhile.
            await loop.run_in_executor(loaded.pool, model.load)
            self._models[name] = loaded
            logger.info("model %s loaded (max batch %d, concurrency %d)", name, info.max_batch_size, concurrency)

    async def stop(self) -> None:
        """Stop every model's threads, waiting at most ``STOP_WAIT_S`` for them."""
        threads: list[threading.Thread] = []
        for loaded in self._models.values():
            threads += list(getattr(loaded.pool, "_threads", ()))
            loaded.pool.shutdown(wait=False, cancel_futures=True)
        end = monotonic() + STOP_WAIT_S
        for t in threads:
            await asyncio.get_running_loop().run_in_executor(None, t.join, max(0.0, end - monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            logger.error("model threads still running after %.0f s, left behind: %s", STOP_WAIT_S, ", ".join(stuck))
        self._models.clear()

    def models(self) -> dict[str, ModelInfo]:
        return {name: m.info for name, m in self._models.items()}

    async def execute(self, model_id: str, batch: list[Inputs]) -> list[Outcome]:
        loaded = self._models.get(model_id)
        if loaded is None:
            raise BackendError(f"model {model_id!r} is not loaded")
        loop = asyncio.get_running_loop()
        loaded.calls += 1
        try:
            outcomes = await loop.run_in_executor(loaded.pool, _run, loaded.model, batch)
        except Exception as err:
            loaded.errors += 1
            raise BackendError(f"{type(err).__name__}: {err}") from err
        return outcomes

    def queues_batches(self, model_id: str) -> bool:
        """A model on its threads queues a batch in its pool: the next free worker takes
        it as soon as it finishes the one before. Not an inline model (it runs at submit)."""
        loaded = self._models.get(model_id)
        return loaded is not None and not loaded.inline

    def run_inline(self, model_id: str, batch: list[Inputs]) -> Ran | None:
        """Run the batch now, on the caller's thread, if the model runs inline;
        returns ``(outcomes, None)`` or ``(None, error)``, or None to use ``submit``."""
        loaded = self._models.get(model_id)
        if loaded is None or not loaded.inline:
            return None
        loaded.calls += 1
        return self._run(loaded, batch)

    def _run(self, loaded: _Loaded, batch: list[Inputs]) -> Ran:
        start = perf_counter()
        outcome: Ran
        try:
            outcome = _run(loaded.model, batch), None
        except Exception as err:
            loaded.errors += 1
            outcome = None, BackendError(f"{type(err).__name__}: {err}")
        loaded.observe_run((perf_counter() - start) * 1e3, self._inline_below_ms)
        return outcome

    def submit(self, model_id: str, batch: list[Inputs], done: Done) -> Optional[Callable[[], bool]]:
        loop = asyncio.get_running_loop()
        loaded = self._models.get(model_id)
        if loaded is None:
            loop.call_soon(done, None, BackendError(f"model {model_id!r} is not loaded"))
            return None
        loaded.calls += 1

        if loaded.inline:
            loop.call_soon(done, *self._run(loaded, batch))  # never re-enter the caller: finish on the next pass
            return None

        # Whichever comes first on the loop, the outcome or the timeout, answers the batch.
        state = _Attempt()

        def finished(outcomes: Any, error: Any, ran_at: int = 0) -> None:
            if ran_at:
                try:  # from the run's end on the worker to here (base.BACK_NS)
                    setattr(done, BACK_NS, perf_counter_ns() - ran_at)
                except AttributeError:  # a callable that takes no attributes: nothing to say
                    pass
            if state.answered:  # it had timed out: the worker is back, its slot too
                loaded.hung -= 1
                loaded.info.concurrency += 1
                logger.warning("model %s: a batch that timed out returned; worker back in service", model_id)
                return
            state.answered = True
            if state.timer is not None:
                state.timer.cancel()
            done(outcomes, error)

        def timed_out() -> None:
            if state.answered:
                return
            state.answered = True
            loaded.timeouts += 1
            loaded.hung += 1
            loaded.info.concurrency -= 1  # the engine sends this worker nothing more until it returns
            loaded.errors += 1
            logger.error(
                "model %s: a batch of %d ran past timeout_s (%g s); worker written off (%d of %d hung)",
                model_id, len(batch), loaded.timeout_s, loaded.hung, loaded.workers,
            )  # fmt: skip
            done(
                None,
                BackendError(f"model {model_id!r} did not finish the batch within timeout_s ({loaded.timeout_s:g} s)"),
            )

        state.timer = loop.call_later(loaded.timeout_s, timed_out)

        def work() -> None:
            if not state.take():
                return  # taken back by the loop before it started: nobody waits for it
            # The worker hands the outcome straight back: one wake-up of the loop per batch.
            # A batch queued behind a hung one (handed ahead) that timed out before it
            # started is not run; its slot is given back all the same.
            outcome: Ran = (None, None) if state.answered else self._run(loaded, batch)
            try:
                loop.call_soon_threadsafe(finished, *outcome, perf_counter_ns())
            except RuntimeError:  # the loop closed during shutdown: nobody is waiting
                pass

        loaded.pool.submit(work)
        return state.revoke

    def health(self) -> BackendHealth:
        hung = {name: m.hung for name, m in self._models.items() if m.hung}
        return BackendHealth(
            ready=not hung,
            error=", ".join(f"model {n}: {h} worker(s) hung past timeout_s" for n, h in sorted(hung.items())),
            models={
                name: ModelHealth(
                    replicas=m.info.concurrency,
                    healthy=not m.hung,
                    details={
                        "calls": m.calls,
                        "errors": m.errors,
                        "inline": m.inline,
                        "timeouts": m.timeouts,
                        "hung": m.hung,
                    },
                )  # fmt: skip
                for name, m in self._models.items()
            },
        )


class _Attempt:
    """One batch on a worker: answered yet (by its outcome or its timeout), the timer, and
    whether a worker has taken it or the loop has taken it back (``revoke``)."""

    __slots__ = ("answered", "timer", "lock", "taken", "revoked")

    def __init__(self) -> None:
        self.answered = False
        self.timer: asyncio.TimerHandle | None = None
        self.lock = threading.Lock()
        self.taken = False
        self.revoked = False

    def take(self) -> bool:
        """On the worker: claim the batch; False if the loop took it back first."""
        with self.lock:
            if self.revoked:
                return False
            self.taken = True
            return True

    def revoke(self) -> bool:
        """On the loop: take back a batch no worker has started; False once one has."""
        with self.lock:
            if self.taken:
                return False
            self.revoked = True
        if self.timer is not None:
            self.timer.cancel()
        return True


def _run(model: Model, batch: list[Inputs]) -> list[Outcome]:
    return check_outcomes(model.execute(batch), len(batch))
