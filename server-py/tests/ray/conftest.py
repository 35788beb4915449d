"""One embedded Ray cluster for the whole test session, and one event loop to drive it.

Starting Ray costs ~6-10 s on two cores, so every test that needs a cluster
shares the one started by the ``backend`` fixture (a RayBackend that owns it).
Tests marked ``ray_own_cluster`` start a cluster of their own in a subprocess;
they run before the shared cluster starts, so two clusters never overlap, and
all Ray tests run after every other test of the session.

Serve handles run their router on the event loop that first used them, so all
coroutines go through one long-lived loop (``loop.run``), not asyncio.run().
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Iterator

import pytest

from inferential.config.schema import ModelConfig, RayConfig

TESTING = "inferential.models.ray_testing"

SESSION_MODELS = [
    ModelConfig(name="linear", target=f"{TESTING}:LinearPolicy", options={"gain": 3.0}, num_replicas=2, num_cpus=0),
    ModelConfig(name="picky", target=f"{TESTING}:PickyPolicy", num_cpus=0, max_batch_size=4),
    ModelConfig(name="fn", target=f"{TESTING}:double", num_cpus=0),
    ModelConfig(name="sleepy", target=f"{TESTING}:SleepyPolicy", num_cpus=0, timeout_s=0.5, hung_after_s=1.0),
    ModelConfig(name="by-handle", target=f"{TESTING}:double", num_cpus=0),  # in RayConfig.handle_models
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ray: starts a real Ray cluster (deselect with -m 'not ray')")
    config.addinivalue_line("markers", "ray_own_cluster: starts its own Ray cluster; runs before the shared one exists")
    config.addinivalue_line("markers", "ray_last: stops the shared cluster; runs after every other Ray test")
    # Ray's own pydantic models use deprecated Field() arguments: not ours to fix.
    config.addinivalue_line("filterwarnings", r"ignore::DeprecationWarning:ray\..*")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Ray tests run last, so no Ray process competes with timing-sensitive tests for
    # the CPU; tests with a cluster of their own run before the shared one starts.
    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("ray") is None:
            return 0
        if item.get_closest_marker("ray_last"):
            return 3
        return 1 if item.get_closest_marker("ray_own_cluster") else 2

    items.sort(key=order)


class LoopThread:
    """An event loop on a thread of its own, alive for the whole session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ray-tests-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def backend(loop: LoopThread) -> Iterator[Any]:
    import ray

    from inferential.dispatch.ray.backend import RayBackend

    assert not ray.is_initialized(), "another test left a Ray connection open"
    b = RayBackend(SESSION_MODELS, RayConfig(num_cpus=2, health_interval_s=0.5, handle_models=["by-handle"]))
    loop.run(b.start(), timeout=180)
    yield b
    loop.run(b.stop(), timeout=60)
    assert not ray.is_initialized()
