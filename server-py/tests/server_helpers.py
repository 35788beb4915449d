"""Helpers for tests that run a real server (imported by name: conftest modules collide)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from inferential.config import InferentialConfig
from inferential.server import BackgroundServer, Server

REPO = Path(__file__).resolve().parents[2]
PUBLISHED_PYTHON = REPO / ".venv-published" / "bin" / "python"

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
    server = Server(config=InferentialConfig.model_validate(data), models=models if models is not None else ({} if model_configs else TEST_MODELS))
    background = BackgroundServer(server)
    endpoint = background.start()
    try:
        yield server, endpoint
    finally:
        background.stop()

