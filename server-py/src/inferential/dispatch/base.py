"""The model contract and the backend interface every dispatcher implements.

A model is loaded once and then executes batches::

    class Policy(inferential.Model):
        def load(self):                       # once, before any robot is admitted
            self.w = np.load(...)
        def execute(self, batch):              # batch: list of input dicts
            return [{"actions": ...} for obs in batch]   # one result per request

A result is a dict of arrays and strings, a bare array (sent as ``actions``), or
an Exception instance, which fails that one request with MODEL_ERROR while the
rest of the batch is answered normally. A plain function ``fn(inputs) -> result``
is accepted too and called once per request.

Each input dict holds the observation's tensors (numpy arrays) and metadata
strings, plus one input the server adds: ``inference_delay_steps`` (an int), for
requests whose robot sent ``control_rate_hz``. It is the server's prediction, made
as the batch is dispatched, of how many control steps pass between the observation
reaching the server and the reply leaving it (the wait so far, the measured service
time of a batch this size, the transport margin), rounded up. A chunked policy
whose row 0 applies to the observation's step keeps rows ``[0, d)`` equal to what
the robot will execute meanwhile (real-time chunking; see
``inferential.models.chunked_policy``). The server's value replaces an input of
the same name sent by the robot.
"""

from __future__ import annotations

import asyncio
import collections.abc
import dataclasses
import importlib
import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np

Inputs = dict[str, Any]
Outcome = Any  # dict[str, ndarray|str] on success, or an Exception instance
Done = Callable[[Optional[list[Any]], Optional[BaseException]], None]
#: The attribute of a ``Done`` a backend may set before calling it (``setattr``, when the
#: callable takes attributes): ns from the end of the batch's run on its executor to this
#: call on the event loop. The server then leaves out of the model's measured service time
#: whatever of that wait exceeds the longest the loop is meant to keep a finished batch
#: waiting (a loop and a worker starved of CPU under overload), which would otherwise
#: make every later batch look that much slower.
BACK_NS = "back_ns"
# What a batch run on the caller's thread gives: (outcomes, None) or (None, error).
Ran = tuple[Optional[list[Outcome]], Optional[BaseException]]

if TYPE_CHECKING:
    from inferential.config.schema import InferentialConfig


class Model:
    """Base class for models served by Inferential (local or Ray Serve)."""

    #: Largest batch this model accepts; the server never sends more.
    max_batch_size: int = 8

    #: Local backend: a model measured to finish batches in microseconds may run on
    #: the event loop instead of its threads. Set False for a model that can block
    #: unpredictably (I/O, locks).
    allow_inline: bool = True

    def load(self) -> None:
        """Load weights and warm up. Called once before the first batch."""

    def execute(self, batch: list[Inputs]) -> list[Outcome]:
        raise NotImplementedError


class FunctionModel(Model):
    """Adapts ``fn(inputs) -> result`` to the batch contract."""

    def __init__(self, fn: Callable[[Inputs], Any], max_batch_size: int = 8) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size

    def execute(self, batch: list[Inputs]) -> list[Outcome]:
        out: list[Outcome] = []
        for inputs in batch:
            try:
                out.append(self.fn(inputs))
            except Exception as err:  # one request's failure stays its own
                out.append(err)
        return out


def load_target(target: str) -> Any:
    """Import ``"package.module:Attr"`` (``Attr`` may be dotted)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model target {target!r} must look like 'package.module:Attr'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def instantiate(obj: Any, options: Mapping[str, Any] | None = None, max_batch_size: int | None = None) -> Model:
    """A Model from a Model subclass, a Model instance, a factory or a plain callable."""
    options = dict(options or {})
    if inspect.isclass(obj) and issubclass(obj, Model):
        model = obj(**options)
    elif isinstance(obj, Model):
        model = obj
    elif callable(obj):
        model = FunctionModel(obj)
    else:
        raise TypeError(f"{obj!r} is neither a Model nor a callable")
    if max_batch_size is not None:
        model.max_batch_size = max_batch_size
    return model


def normalize_outcome(raw: Any) -> Outcome:
    """A model's per-request result as a dict of outputs, or the Exception it is.

    Raises TypeError for a result that cannot be sent (it becomes MODEL_ERROR).
    """
    if isinstance(raw, BaseException):
        return raw
    # collections.abc, not typing: isinstance against a typing alias runs Python code per call.
    if type(raw) is dict or isinstance(raw, collections.abc.Mapping):
        out: dict[str, Any] = {}
        for k, v in raw.items():
            if not isinstance(k, str):
                raise TypeError(f"output key {k!r} is not a string")
            if isinstance(v, str):
                out[k] = v
            else:
                out[k] = np.asarray(v)
        return out
    if raw is None:
        raise TypeError("model returned None for a request")
    return {"actions": np.asarray(raw)}


def check_outcomes(outcomes: Any, batch_len: int) -> list[Outcome]:
    """Validate a model's return value against the batch contract."""
    if type(outcomes) is not list and (
        not isinstance(outcomes, collections.abc.Sequence)
        or isinstance(outcomes, (str, bytes, collections.abc.Mapping))
    ):
        if isinstance(outcomes, np.ndarray) and len(outcomes) == batch_len:
            outcomes = list(outcomes)
        else:
            raise TypeError(f"execute() must return a list with one result per request, got {type(outcomes).__name__}")
    if len(outcomes) != batch_len:
        raise TypeError(f"execute() returned {len(outcomes)} results for a batch of {batch_len}")
    result: list[Outcome] = []
    for raw in outcomes:
        try:
            result.append(normalize_outcome(raw))
        except TypeError as err:
            result.append(err)
    return result


@dataclass
class ModelInfo:
    name: str
    max_batch_size: int
    concurrency: int


@dataclass
class ModelHealth:
    """One model's state as a backend sees it."""

    #: Replicas running now (local backend: worker threads); None when unknown.
    replicas: Optional[int] = None
    healthy: bool = True
    #: Backend-specific counters and states (calls, errors, inline, timeouts, ...).
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class BackendHealth:
    """What ``Backend.health()`` reports: /readyz fails while ``ready`` is False."""

    ready: bool = True
    error: str = ""
    models: dict[str, ModelHealth] = field(default_factory=dict)
    #: Backend-wide details (Ray: the cluster, when health was last checked).
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for /status."""
        return dataclasses.asdict(self)


class BackendError(RuntimeError):
    """The backend could not run a batch at all (retryable per max_retries)."""


class Backend(ABC):
    """Runs batches of one model. Implementations: local threads, Ray Serve.

    A backend is selected by ``config.backend``, the name it was registered under
    with :func:`inferential.dispatch.registry.register_backend`; the server builds
    it with :meth:`from_config`.
    """

    @classmethod
    def from_config(cls, config: "InferentialConfig", local_objects: Mapping[str, Any]) -> "Backend":
        """Build the backend from the whole configuration (its own section is
        ``config.backends[<name>]``, or ``config.ray`` for the Ray backend) and
        the model objects given to ``Server(models=...)``."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_config()")

    @abstractmethod
    async def start(self) -> None:
        """Load every model and warm it up. Robots are admitted only after this."""

    @abstractmethod
    async def stop(self) -> None:
        """Release everything start() acquired."""

    @abstractmethod
    def models(self) -> dict[str, ModelInfo]:
        """The models served, by name."""

    @abstractmethod
    async def execute(self, model_id: str, batch: list[Inputs]) -> list[Outcome]:
        """Run one batch; one outcome (dict or Exception) per request, in order.

        Raises BackendError (or any exception) when the whole batch failed.
        """

    def submit(self, model_id: str, batch: list[Inputs], done: Done) -> Optional[Callable[[], bool]]:
        """Start one batch; ``done(outcomes, None)`` or ``done(None, error)`` runs on the loop later.

        The server uses this rather than awaiting execute(), so a batch costs no
        task of its own; backends with a cheaper completion path override it.
        Must be called on the event loop. A backend that queues batches
        (``queues_batches``) may return a function that takes a batch back before any
        executor has started it: it returns True and ``done`` is then never called,
        or False once the batch has started. Default: None (no taking back).
        """
        task = asyncio.get_running_loop().create_task(self.execute(model_id, batch))

        def finished(t: "asyncio.Task[list[Outcome]]") -> None:
            if t.cancelled():
                done(None, BackendError("batch cancelled"))
            elif t.exception() is not None:
                done(None, t.exception())
            else:
                done(t.result(), None)

        task.add_done_callback(finished)
        return None

    def queues_batches(self, model_id: str) -> bool:
        """Whether ``submit`` may be called while every executor of the model is busy,
        the batch then starting on the first that frees, in submission order, without
        the event loop (the engine's ``dispatch_ahead_ms``). Default: no."""
        return False

    def run_inline(self, model_id: str, batch: list[Inputs]) -> Optional[Ran]:
        """Run the batch now on the caller's thread (the event loop) if this model
        is fast enough for that; None to go through ``submit``. The server calls
        it only when a backend overrides it."""
        return None

    def health(self) -> BackendHealth:
        """Readiness and per-model state, for metrics, /status and /readyz."""
        return BackendHealth()
