"""A fake monotonic clock for the scheduler tests (a uniquely named module, importable
from every test file here without relying on which conftest.py pytest loaded)."""

from __future__ import annotations

MS = 1_000_000


class FakeClock:
    """Monotonic nanoseconds that only move when a test says so."""

    def __init__(self, start_ns: int = 1_000 * MS) -> None:
        self.now = start_ns

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: float) -> int:
        self.now += int(ms * MS)
        return self.now
