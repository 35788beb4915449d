"""`inferential top`: a live terminal view of a running server, read from its /status.

Plain ANSI (clear screen, bold, colour when the output is a terminal): no curses,
so it works over ssh, in `watch`, and piped into a file (`--once`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Optional, TextIO

_CLEAR = "\x1b[H\x1b[2J"
_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"
_GREEN, _YELLOW, _RED = "\x1b[32m", "\x1b[33m", "\x1b[31m"
# Statuses a robot can live with (its next observation will do) vs. ones that need a person.
_WARN = {"EXPIRED", "QUEUE_FULL", "DEADLINE_UNMEETABLE", "SUPERSEDED", "SHUTTING_DOWN", "CANCELLED"}


class Unreachable(Exception):
    """The server's HTTP endpoint did not answer /status."""


def normalize_url(server: str) -> str:
    """'host:port', ':port', 'port' or a full URL -> 'http://host:port'."""
    server = server.strip().rstrip("/")
    if "://" in server:
        return server
    if server.isdigit():
        return f"http://127.0.0.1:{server}"
    if server.startswith(":"):
        return f"http://127.0.0.1{server}"
    return f"http://{server}"


def fetch_status(url: str, window_s: float, timeout_s: float = 2.0) -> dict[str, Any]:
    target = f"{url}/status?window={window_s:g}"
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        raise Unreachable(f"{target} answered HTTP {err.code}: {err.read().decode(errors='replace').strip()}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise Unreachable(f"cannot reach {target}: {reason}") from None
    except ValueError as err:
        raise Unreachable(f"{target} did not answer JSON ({err}): is this an Inferential metrics port?") from None


def _fmt(value: Any, spec: str = ".1f", missing: str = "-") -> str:
    if value is None:
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _pct(share: Optional[float]) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


class _Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, *codes: str) -> str:
        return f"{''.join(codes)}{text}{_RESET}" if self.color and codes else text

    def status(self, name: str, width: int) -> str:
        text = f"{name or '-':<{width}}"
        if not name:
            return text
        code = _GREEN if name == "OK" else _YELLOW if name in _WARN else _RED
        return self(text, code)

    def slo(self, share: Optional[float], width: int) -> str:
        text = f"{_pct(share):>{width}}"
        if share is None:
            return text
        return self(text, _GREEN if share >= 0.99 else _YELLOW if share >= 0.9 else _RED)


def render(status: dict[str, Any], url: str, color: bool = False) -> str:
    """One frame of the view as text."""
    s = _Style(color)
    sched = status.get("scheduler") or {}
    window = status.get("window_s", 0)
    replies = status.get("replies") or {}
    total = sum(replies.values())
    state = s("ready", _GREEN) if status.get("ready") else s("not ready", _RED)
    lines = [
        s(f"inferential top  {url}", _BOLD) + f"   zmq {status.get('endpoint') or '-'}   {state}",
        f"scheduler {sched.get('strategy', '-')}   queued {sched.get('queue_len', 0)}/{sched.get('max_queue_size', '-')}"
        f"   pending {status.get('pending', 0)}   robots {status.get('robots', 0)}   replies {total}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(replies.items(), key=lambda kv: -kv[1]))})" if replies else ""),
        "",
    ]
    robots = status.get("per_robot") or {}
    header = f"{'ROBOT':<16}{'TYPE':<10}{'RATE Hz':>8}{'P50 ms':>9}{'P99 ms':>9}{'SLO':>8}{'REQS':>8}{'IDLE s':>8}  {'LAST':<20}MODELS"
    lines.append(s(header + f"   (last {window:g} s)", _BOLD))
    if not robots:
        lines.append(s("no robots connected", _DIM))
    for name, r in robots.items():
        lines.append(
            f"{name[:15]:<16}{(r.get('type') or '-')[:9]:<10}{_fmt(r.get('rate_hz')):>8}{_fmt(r.get('p50_ms'), '.2f'):>9}"
            f"{_fmt(r.get('p99_ms'), '.2f'):>9}{s.slo(r.get('slo'), 8)}{r.get('requests', 0):>8}{_fmt(r.get('idle_s')):>8}  "
            f"{s.status(r.get('last_status', ''), 20)}{','.join(r.get('models') or [])}"
        )
    lines.append("")
    models = status.get("per_model") or {}
    lines.append(
        s(
            f"{'MODEL':<20}{'QUEUE':>7}{'RUNNING':>9}{'BATCH p50':>11}{'BATCH max':>11}{'BATCH/s':>9}{'INFER p50 ms':>14}{'REPLICAS':>10}",
            _BOLD,
        )
    )
    if not models:
        lines.append(s("no models loaded", _DIM))
    for name, m in models.items():
        running = f"{m.get('in_flight', 0)}/{_fmt(m.get('concurrency'), 'd')}"
        lines.append(
            f"{name[:19]:<20}{m.get('queue', 0):>7}{running:>9}{_fmt(m.get('batch_p50'), '.0f'):>11}{_fmt(m.get('max_batch_size'), 'd'):>11}"
            f"{_fmt(m.get('batches_per_s')):>9}{_fmt(m.get('inference_p50_ms'), '.2f'):>14}{_fmt(m.get('replicas'), 'd'):>10}"
        )
    return "\n".join(lines) + "\n"


def run_top(
    server: str,
    interval_s: float = 1.0,
    once: bool = False,
    window_s: float = 10.0,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Print frames until Ctrl-C (``once``: a single frame). Returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    url = normalize_url(server)
    live = not once and out.isatty()
    color = out.isatty() and "NO_COLOR" not in os.environ
    try:
        while True:
            try:
                frame = render(fetch_status(url, window_s), url, color)
            except Unreachable as why:
                hint = "is `inferential serve --metrics-port PORT` running, and is --server that port?"
                if once:
                    print(f"inferential top: {why}\n{hint}", file=err)
                    return 1
                frame = f"inferential top  {url}\n\n{why}\n{hint}\nretrying every {interval_s:g} s (Ctrl-C to quit)\n"
            if live:
                out.write(_CLEAR + frame)
            else:
                out.write(frame + ("" if once else "\n"))
            out.flush()
            if once:
                return 0
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0
