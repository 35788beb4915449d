"""Drives one testee process over the JSON-lines command protocol (conformance/TESTEE.md)."""

from __future__ import annotations

import json
import os
import pathlib
import selectors
import subprocess
import sys
import time
from typing import Any, Optional

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TESTEES = HERE.parent / "testees"


def command_for(language: str) -> list[str]:
    """How to start the worker of ``language`` (the runner's own interpreter hosts it)."""
    if language == "python":
        return [sys.executable, str(TESTEES / "python_worker.py")]
    if language in ("rust", "cpp"):
        return [sys.executable, str(TESTEES / "native_worker.py"), f"inferential_testee_{language}"]
    raise ValueError(f"unknown testee language {language!r}")


def worker_env(language: str) -> dict[str, str]:
    env = dict(os.environ)
    extra = os.environ.get(f"CONFORMANCE_{language.upper()}_PATH")
    if extra is None and language == "cpp":
        extra = str(ROOT / "build" / "testee-cpp")
    if extra:
        env["PYTHONPATH"] = extra + os.pathsep + env.get("PYTHONPATH", "")
    return env


class TesteeDied(RuntimeError):
    pass


class Testee:
    """One worker process. `call` sends a command and waits for its answer line."""

    def __init__(self, language: str) -> None:
        self.language = language
        self.stderr_path = ROOT / "build" / "conformance" / f"{language}-stderr.log"
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            command_for(language),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=worker_env(language),
            cwd=str(ROOT),
        )
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def call(self, cmd: str, timeout_s: float = 10.0, **args: Any) -> dict[str, Any]:
        """Run one command; the answer dict. Raises TesteeDied on a crash, TimeoutError on a hang."""
        if self.proc.poll() is not None:
            raise TesteeDied(f"{self.language} testee exited with {self.proc.returncode}")
        line = json.dumps({"cmd": cmd, **args}) + "\n"
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except BrokenPipeError as exc:
            raise TesteeDied(f"{self.language} testee closed its input") from exc
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.language} testee gave no answer to {cmd!r} within {timeout_s:.1f} s")
            if not self._sel.select(left):
                continue
            assert self.proc.stdout is not None
            chunk = self.proc.stdout.read()
            if not chunk:
                self.proc.wait(1)
                raise TesteeDied(f"{self.language} testee exited with {self.proc.returncode} during {cmd!r}")
            self._buf += chunk
        answer, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(answer)
        except json.JSONDecodeError as exc:
            raise TesteeDied(f"{self.language} testee wrote a line that is not JSON: {answer[:200]!r}") from exc

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout_s=2)
            except Exception:  # noqa: BLE001 - it is being torn down either way
                pass
            self.proc.kill()
        self.proc.wait(5)
        self._sel.close()
        self._stderr.close()


def available(language: str) -> Optional[str]:
    """None when the testee of ``language`` can start, else why it cannot."""
    if language == "python":
        return None
    module = f"inferential_testee_{language}"
    probe = subprocess.run(
        [sys.executable, "-c", f"import {module}"], env=worker_env(language), capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"{module} is not built (make testee-{language}): {probe.stderr.strip().splitlines()[-1:]}"
    return None
