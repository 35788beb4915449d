"""Run a Server on its own thread and event loop: for tests, benchmarks and embedding."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional

from inferential.server.app import Server


class BackgroundServer:
    """``with BackgroundServer(server) as endpoint:`` serves until the block ends."""

    def __init__(self, server: Server, start_timeout_s: float = 60.0) -> None:
        self.server = server
        self._timeout = start_timeout_s
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        self.endpoint = ""

    def start(self) -> str:
        self._thread = threading.Thread(target=self._main, name="inferential-server", daemon=True)
        self._thread.start()
        if not self._started.wait(self._timeout):
            raise TimeoutError("server did not start in time")
        if self._error is not None:
            raise self._error
        return self.endpoint

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self.endpoint = loop.run_until_complete(self.server.start())
        except BaseException as err:
            self._error = err
            self._started.set()
            loop.close()
            return
        self._started.set()
        loop.run_forever()
        loop.close()

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop and return its result."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(_call(fn, *args), self._loop)
        return fut.result(timeout=30)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._error is None:
            fut = asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop)
            fut.result(timeout=60)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


async def _call(fn: Any, *args: Any) -> Any:
    result = fn(*args)
    if asyncio.iscoroutine(result):
        result = await result
    return result
