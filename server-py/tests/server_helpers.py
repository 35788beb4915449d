"""Helpers for tests that run a real server (imported by name: conftest modules collide)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from inferential.config import InferentialConfig
from inferential.dispatch.base import Backend
from inferential.metrics.store import MetricsStore
from inferential.server import BackgroundServer, Server
from inferential.server.engine import Engine
from inferential.server.ledger import Ledger
from inferential.server.registry import ClientRegistry

REPO = Path(__file__).resolve().parents[2]
PUBLISHED_PYTHON = REPO / ".venv-published" / "bin" / "python"

# The published README's "Custom Scheduler" snippet, verbatim (from
# ../shared/reference/inferential-package-readme.txt); the fixture
# `readme_custom_scheduler` runs its definition, test_readme_snippets all of it.
README_CUSTOM_SCHEDULER = """
from inferential.scheduler.base import Scheduler, register_scheduler

@register_scheduler("my_scheduler")
class MyScheduler(Scheduler):
    def __init__(self, config):
        self._queue = []

    def submit(self, request):
        self._queue.append(request)

    def next_batch(self):
        batch, self._queue = self._queue[:8], self._queue[8:]
        return batch

    def tick(self):
        pass

    def status(self):
        return {"queue_len": len(self._queue)}

    def queue_len(self):
        return len(self._queue)

server.use_scheduler("my_scheduler")
"""

TEST_MODELS = {
    "noop": "inferential.models.testing:NoOp",
    "echo": "inferential.models.testing:Echo",
    "failing": "inferential.models.testing:Failing",
}


@contextlib.contextmanager
def running_server(
    models: dict[str, Any] | None = None, model_configs: list[dict] | None = None, **sections: Any
) -> Iterator[tuple[Server, str]]:
    """A real server on a random loopback port, on its own thread.

    ``models`` are objects or targets served as they are; ``model_configs`` are
    config entries (concurrency, options, ...); with neither, the test models.
    """
    data: dict[str, Any] = {"transport": {"bind": "tcp://127.0.0.1:0"}, "models": model_configs or []}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    server = Server(
        config=InferentialConfig.model_validate(data),
        models=models if models is not None else ({} if model_configs else TEST_MODELS),
    )
    background = BackgroundServer(server)
    endpoint = background.start()
    try:
        yield server, endpoint
    finally:
        background.stop()


def eventually(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy."""
    end = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class SentFrames:
    """Stands in for the ROUTER socket of an engine wired by hand: keeps every reply sent."""

    def __init__(self) -> None:
        self.frames: list[list[Any]] = []

    def send(self, frames: list[Any]) -> None:
        self.frames.append(frames)

    def drain(self) -> None:
        """Nothing to read: no socket."""


def wired_engine(
    config: InferentialConfig, backend: Backend, now: list[int]
) -> tuple[Engine, Ledger, ClientRegistry, MetricsStore, SentFrames]:
    """The server's engine, ledger and registry on a fake clock (``now[0]``, ns), without
    the server around them: replies land in the returned SentFrames."""
    clock = lambda: now[0]  # noqa: E731
    registry = ClientRegistry(config.clients, config.auth, 0.2, 5.0)
    metrics = MetricsStore()
    ledger = Ledger(metrics, registry, clock)
    sent = SentFrames()
    ledger.transport = sent  # type: ignore[assignment]
    return Engine(config, backend, ledger, registry, metrics, clock), ledger, registry, metrics, sent
