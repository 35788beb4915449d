"""The `inferential` command as a user runs it: config errors, --check, serving, signals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from inferential import Connection
from inferential.cli import main

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("serve", "demo"):
        assert command in out


def test_config_errors_name_the_key_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "server.yaml"
    cfg.write_text("scheduling:\n  strategy: deadline_aware\n  overflow_policy: drop_newest\ntransprt: {}\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "scheduling.overflow_policy" in err and "drop_oldest" in err
    assert "transprt: unknown key" in err


def test_unknown_strategy_and_missing_models_are_refused(capsys):
    assert main(["serve", "--model", "a=inferential.models.testing:NoOp", "--scheduler", "fastest"]) == 2
    assert "unknown strategy 'fastest'" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "no models" in capsys.readouterr().err


def test_check_prints_the_merged_configuration(tmp_path, capsys):
    cfg = tmp_path / "server.yaml"
    cfg.write_text(
        "scheduling: {strategy: edf}\nmodels:\n  - {name: policy, target: 'inferential.models.vision_policy:VisionPolicy'}\n"
    )
    assert (
        main(
            [
                "serve",
                "--config",
                str(cfg),
                "--bind",
                "tcp://127.0.0.1:7000",
                "--model",
                "noop=inferential.models.testing:NoOp",
                "--check",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "strategy: edf" in out and "tcp://127.0.0.1:7000" in out and "name: noop" in out and "name: policy" in out


def test_serve_answers_robots_exposes_metrics_and_stops_cleanly_on_sigterm(tmp_path):
    port, http_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inferential.cli",
            "serve",
            "--bind",
            endpoint,
            "--model",
            "noop=inferential.models.testing:NoOp",
            "--metrics-port",
            str(http_port),
            "--log-level",
            "INFO",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{http_port}/readyz", proc)
        with Connection(server=endpoint, client_id="cli-robot") as conn:
            assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(3, np.float32)).ok
        # An idle server does not poll: CPU use over a quiet second stays near zero.
        before = _cpu_seconds(proc.pid)
        time.sleep(1.5)
        idle = (_cpu_seconds(proc.pid) - before) / 1.5
        assert idle < 0.05, f"idle server used {100 * idle:.1f}% of a core"
        body = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
        assert 'inferential_replies_total{model="noop",status="OK"} 1.0' in body
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped" in out


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read())
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
