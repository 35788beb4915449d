"""Processes the benchmarks measure against: a raw ZMQ echo floor and our server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

ECHO = r"""
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    frames = s.recv_multipart(copy=False)
    s.send_multipart(frames, copy=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, endpoint: str, timeout_s: float = 60.0) -> None:
    """Wait until something accepts TCP connections on the endpoint's port."""
    host, port = endpoint.replace("tcp://", "").rsplit(":", 1)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"peer exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {endpoint}")


def start_echo() -> tuple[subprocess.Popen, str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([PY, "-c", ECHO, endpoint], stdout=subprocess.DEVNULL)
    wait_ready(proc, endpoint)
    return proc, endpoint


def start_server(models: dict[str, str], extra: list[str] | None = None, python: str = PY) -> tuple[subprocess.Popen, str]:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [python, "-m", "inferential.cli", "serve", "--bind", endpoint, "--log-level", "WARNING"]
    for name, target in models.items():
        cmd += ["--model", f"{name}={target}"]
    proc = subprocess.Popen(cmd + (extra or []), env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wait_ready(proc, endpoint)
    time.sleep(0.3)  # models load before the bind, but let the loop settle
    return proc, endpoint


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
