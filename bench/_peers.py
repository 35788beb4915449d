"""Processes the benchmarks measure against: a raw ZMQ echo floor and our server."""

from __future__ import annotations

import os
import signal
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
# argv[2] "envelope": answer with [identity, "", envelope] only, a reply as small
# as a server's (for fleets); otherwise every frame comes back.
keep = 3 if len(sys.argv) > 2 and sys.argv[2] == "envelope" else None
while True:
    frames = s.recv_multipart(copy=False)
    s.send_multipart(frames[:keep], copy=False)
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


def start_echo(reply: str = "all") -> tuple[subprocess.Popen, str]:
    """A raw ROUTER echo; ``reply="envelope"`` sends back only the envelope frame."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([PY, "-c", ECHO, endpoint, reply], stdout=subprocess.DEVNULL)
    wait_ready(proc, endpoint)
    return proc, endpoint


def start_server(
    models: dict[str, str],
    extra: list[str] | None = None,
    python: str = PY,
    ready_timeout_s: float = 60.0,
    log_path: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """Our server in a subprocess; ``log_path``: its stdout and stderr go to that file."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [python, "-m", "inferential.cli", "serve", "--bind", endpoint, "--log-level", "WARNING"]
    for name, target in models.items():
        cmd += ["--model", f"{name}={target}"]
    log = open(log_path, "ab") if log_path else None
    try:
        proc = subprocess.Popen(cmd + (extra or []), env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=log)
    finally:
        if log:
            log.close()  # the child holds its own descriptor
    try:
        wait_ready(proc, endpoint, ready_timeout_s)
    except BaseException:
        stop(proc)
        raise
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


def descendants(pid: int) -> list[int]:
    """Live descendants of a process (Linux /proc), e.g. an embedded Ray cluster's."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its live descendants (processes that exited meanwhile are not counted)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(p)
        except (OSError, IndexError, ValueError):
            pass
    return total


def pause(proc: subprocess.Popen) -> None:
    """SIGSTOP an idle peer so it takes no CPU while another is measured."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGSTOP)


def resume(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)


# --- the 150 KB observation of the sequential benchmarks, and a bare DEALER that times it ---

def _observation_arrays():
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
    return image, np.zeros(7, dtype=np.float32)


IMAGE, JOINTS = _observation_arrays()


def time_round_trips(endpoint: str, frames: list, n: int, warmup: int, renumber=None) -> list[float]:
    """Round trips (ms) of ``frames`` through a bare DEALER, after ``warmup`` untimed ones.

    ``renumber(frames, i)``, when given, rewrites the frames before send ``i`` (a new request id).
    """
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    out = []
    for i in range(n + warmup):
        if renumber is not None:
            renumber(frames, i)
        t = time.perf_counter()
        sock.send_multipart(frames, copy=False)
        sock.recv_multipart(copy=False)
        if i >= warmup:
            out.append((time.perf_counter() - t) * 1e3)
    sock.close()
    ctx.term()
    return out


def measure_echo(endpoint: str, n: int, warmup: int) -> list[float]:
    """The floor: the raw echo peer returning the very frames a robot sends."""
    from inferential._proto import inferential_pb2 as pb
    from inferential.wire import pack_tensors

    obs = pb.Observation(model_id="noop", request_id=1, protocol_version=2)
    obs.client.id = "bench"
    payload = pack_tensors([("image", IMAGE), ("joints", JOINTS)], obs.tensors.add)
    return time_round_trips(endpoint, [b"", obs.SerializeToString(), *[bytes(x) for x in payload]], n, warmup)
