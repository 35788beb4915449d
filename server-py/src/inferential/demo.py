"""`inferential demo`: a real policy served to a simulated fleet, watched live.

Each simulated robot is a thread with its own client connection. It runs a
control loop at its own rate: it renders what its camera sees (a target at a
position that changes every few seconds), sends the image and its joint state,
and applies the first action of the returned chunk. The policy is the small
vision policy shipped in inferential.models.vision_policy, so the arms really
converge on their targets: the summary reports their tracking error next to
latency and SLO attainment.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from inferential.config import InferentialConfig, ModelConfig
from inferential.metrics.store import percentile
from inferential.models.vision_policy import JOINTS, expert_target, render_scene
from inferential.server import BackgroundServer, Server

MODEL = "policy"
POLICY_TARGET = "inferential.models.vision_policy:VisionPolicy"
# (kind, control rate Hz, latency budget ms): a welding cell at 20 Hz, pick-and-place
# and assembly arms at 50 and 30 Hz. Priority is not per profile: every fourth robot
# is a critical one (priority 0, the others 2).
PROFILES = [("pick", 50.0, 20.0), ("weld", 20.0, 50.0), ("assembly", 30.0, 33.0)]


@dataclass
class RobotLog:
    name: str
    kind: str
    rate_hz: float
    budget_ms: float
    priority: int
    sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    within_budget: int = 0
    statuses: Counter = field(default_factory=Counter)
    no_reply: int = 0
    errors: list[tuple[float, float]] = field(default_factory=list)  # (t, tracking error)
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (t, latency ms)
    last_status: str = "-"

    def slo(self) -> float:
        return self.within_budget / self.sent if self.sent else float("nan")


class SimRobot(threading.Thread):
    def __init__(self, log: RobotLog, endpoint: str, start: float, duration: float, seed: int) -> None:
        super().__init__(name=log.name, daemon=True)
        self.log = log
        self.endpoint = endpoint
        self.start_at = start
        self.end_at = start + duration
        self.rng = np.random.default_rng(seed)
        self.failure: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # reported in the summary, never swallowed
            self.failure = err

    def _loop(self) -> None:
        from inferential import Connection, RequestFailed

        log = self.log
        period = 1.0 / log.rate_hz
        scenes = [(u, v, render_scene(u, v, rng=self.rng)) for u, v in self.rng.uniform(0.2, 0.8, size=(4, 2))]
        joints = np.zeros(JOINTS, dtype=np.float32)
        with Connection(server=self.endpoint, client_id=log.name, client_type=log.kind) as conn:
            model = conn.model(MODEL, latency_budget_ms=log.budget_ms, priority=log.priority)
            tick = time.monotonic()
            while tick < self.end_at:
                now = time.monotonic()
                u, v, image = scenes[int((now - self.start_at) / 3.0) % len(scenes)]
                sent_at = time.monotonic()
                request_id = model.observe(urgency=0.9 if log.priority == 0 else 0.3, image=image, joints=joints)
                log.sent += 1
                try:
                    result = _wait_for(model, request_id, tick + period)
                except RequestFailed as err:
                    log.statuses[err.status_name] += 1
                    log.last_status = err.status_name
                    result = None
                else:
                    if result is None:
                        log.no_reply += 1
                        log.last_status = "LATE"
                if result is not None:
                    latency = (time.monotonic() - sent_at) * 1000.0
                    log.latencies_ms.append(latency)
                    log.timeline.append((sent_at - self.start_at, latency))
                    log.statuses["OK"] += 1
                    log.last_status = "OK"
                    if latency <= log.budget_ms:
                        log.within_budget += 1
                    chunk = result["actions"]
                    joints = (joints + 0.5 * (chunk[0] - joints)).astype(np.float32)
                log.errors.append((sent_at - self.start_at, float(np.linalg.norm(joints - expert_target(u, v)))))
                tick += period
                sleep = tick - time.monotonic()
                if sleep > 0:
                    time.sleep(sleep)
                else:
                    tick = time.monotonic()  # overran: start the next period now


def _wait_for(model: Any, request_id: int, until: float) -> Any:
    """The reply to ``request_id``, or None when the control period ends first."""
    while True:
        remaining_ms = (until - time.monotonic()) * 1000.0
        if remaining_ms <= 0:
            return None
        result = model.get_result(timeout_ms=max(1, int(remaining_ms)))
        if result is None:
            return None
        if result.request_id == request_id:
            return result


def _fleet(n: int) -> list[RobotLog]:
    logs = []
    for i in range(n):
        kind, rate, budget = PROFILES[i % len(PROFILES)]
        logs.append(RobotLog(f"{kind}-{i:02d}", kind, rate, budget, priority=0 if i % 4 == 3 else 2))
    return logs


def _row(log: RobotLog, elapsed: float) -> str:
    lat = sorted(log.latencies_ms)
    p50 = percentile(lat, 50) if lat else float("nan")
    p99 = percentile(lat, 99) if lat else float("nan")
    rate = log.sent / elapsed if elapsed > 0 else 0.0
    err = log.errors[-1][1] if log.errors else float("nan")
    return (
        f"{log.name:<13}{log.rate_hz:>5.0f}{rate:>7.1f}{log.budget_ms:>7.0f}{p50:>8.2f}{p99:>8.2f}"
        f"{100 * log.slo():>7.1f}%{err:>8.3f}  {log.last_status}"
    )


HEADER = f"{'robot':<13}{'Hz':>5}{'sent/s':>7}{'budget':>7}{'p50 ms':>8}{'p99 ms':>8}{'SLO':>8}{'error':>8}  last"


def run_demo(args: argparse.Namespace) -> int:
    from inferential.logs import configure_logging

    configure_logging("WARNING")
    config = InferentialConfig(
        transport={"bind": "tcp://127.0.0.1:0"},
        backend=args.backend,
        models=[ModelConfig(name=MODEL, target=POLICY_TARGET, num_cpus=0.5)],
        scheduling={"strategy": args.scheduler, "max_batch_size": 8},
    )
    print(
        f"Inferential demo: {args.robots} robots, {args.duration:.0f} s, backend {args.backend}, scheduler {args.scheduler}"
    )
    print(
        "starting the server and loading the policy"
        + (" on an embedded Ray Serve (takes a few seconds)" if args.backend == "ray" else "")
    )
    t0 = time.monotonic()
    server = Server(config=config)
    background = BackgroundServer(server, start_timeout_s=180)
    endpoint = background.start()
    print(f"server ready on {endpoint} in {time.monotonic() - t0:.1f} s")
    logs = _fleet(args.robots)
    start = time.monotonic() + 0.2
    robots = [SimRobot(log, endpoint, start, args.duration, seed=i) for i, log in enumerate(logs)]
    for r in robots:
        r.start()
    live = sys.stdout.isatty()
    try:
        while any(r.is_alive() for r in robots):
            time.sleep(1.0)
            elapsed = max(1e-9, time.monotonic() - start)
            lines = [f"t = {min(elapsed, args.duration):4.1f} s / {args.duration:.0f} s", HEADER] + [
                _row(rec, elapsed) for rec in logs
            ]
            if live:
                sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
            else:
                print(lines[0] + "  " + "  ".join(f"{rec.name}:{rec.sent}" for rec in logs))
            sys.stdout.flush()
    finally:
        for r in robots:
            r.join(timeout=5)
        server_status = background.call(server.status)
        background.stop()
    failures = [r for r in robots if r.failure is not None]
    summary = _summary(logs, args.duration, server_status)
    print()
    print(HEADER)
    for log in logs:
        print(_row(log, args.duration))
    print()
    for line in summary["lines"]:
        print(line)
    report = _write_report(Path(args.report), logs, summary, args)
    print(f"report: {report}")
    for r in failures:
        print(f"robot {r.name} failed: {r.failure!r}", file=sys.stderr)
    return 1 if failures or summary["total_ok"] == 0 else 0


def _summary(logs: list[RobotLog], duration: float, server_status: dict) -> dict[str, Any]:
    sent = sum(rec.sent for rec in logs)
    ok = sum(rec.statuses["OK"] for rec in logs)
    within = sum(rec.within_budget for rec in logs)
    lat = sorted(x for rec in logs for x in rec.latencies_ms)
    statuses: Counter = Counter()
    for rec in logs:
        statuses.update(rec.statuses)
    final_err = [rec.errors[-1][1] for rec in logs if rec.errors]
    initial_err = [rec.errors[0][1] for rec in logs if rec.errors]
    lines = [
        f"observations sent: {sent}   answered OK: {ok}   no reply within the control period: {sum(rec.no_reply for rec in logs)}",
        f"replies by status (robot side): {dict(statuses)}",
        f"replies by status (server side): {server_status.get('replies', {})}",
        f"round trip p50 {percentile(lat, 50):.2f} ms, p99 {percentile(lat, 99):.2f} ms; SLO attainment {100 * within / max(1, sent):.1f}% of observations",
        f"tracking error: mean {np.mean(initial_err):.3f} at the start -> {np.mean(final_err):.3f} at the end (the policy steers the arms to their targets)",
    ]
    return {
        "sent": sent,
        "total_ok": ok,
        "within_budget": within,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "statuses": dict(statuses),
        "server_replies": server_status.get("replies", {}),
        "lines": lines,
        "duration_s": duration,
    }


def _write_report(folder: Path, logs: list[RobotLog], summary: dict, args: argparse.Namespace) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "args": {
            "robots": args.robots,
            "duration": args.duration,
            "backend": args.backend,
            "scheduler": args.scheduler,
        },
        "summary": {k: v for k, v in summary.items() if k != "lines"},
        "robots": [
            {
                "name": rec.name,
                "kind": rec.kind,
                "rate_hz": rec.rate_hz,
                "budget_ms": rec.budget_ms,
                "priority": rec.priority,
                "sent": rec.sent,
                "slo": rec.slo(),
                "statuses": dict(rec.statuses),
                "no_reply": rec.no_reply,
                "p50_ms": percentile(sorted(rec.latencies_ms), 50) if rec.latencies_ms else None,
                "p99_ms": percentile(sorted(rec.latencies_ms), 99) if rec.latencies_ms else None,
            }
            for rec in logs
        ],
    }
    (folder / "demo.json").write_text(json.dumps(data, indent=2, default=float))
    png = _plot(logs)
    (folder / "demo.png").write_bytes(png)
    rows = "".join(
        f"<tr><td>{r['name']}</td><td>{r['rate_hz']:.0f}</td><td>{r['budget_ms']:.0f}</td><td>{r['priority']}</td>"
        f"<td>{r['sent']}</td><td>{(r['p50_ms'] or float('nan')):.2f}</td><td>{(r['p99_ms'] or float('nan')):.2f}</td>"
        f"<td>{100 * r['slo']:.1f}%</td><td>{r['statuses']}</td></tr>"
        for r in data["robots"]
    )
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Inferential demo report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>Inferential demo</h1>
<p>{args.robots} robots for {args.duration:.0f} s, backend <b>{args.backend}</b>, scheduler <b>{args.scheduler}</b>.</p>
<ul>{"".join(f"<li>{line}</li>" for line in summary["lines"])}</ul>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">
<table><tr><th>robot</th><th>Hz</th><th>budget ms</th><th>priority</th><th>sent</th><th>p50 ms</th><th>p99 ms</th><th>SLO</th><th>statuses</th></tr>{rows}</table>
</body></html>"""
    path = folder / "index.html"
    path.write_text(html)
    return path


def _plot(logs: list[RobotLog]) -> bytes:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for rec in logs:
        if rec.timeline:
            t, lat = zip(*rec.timeline, strict=True)
            axes[0].plot(t, lat, ".", markersize=2, label=rec.name)
    axes[0].set_title("round trip per observation")
    axes[0].set_xlabel("time (s)")
    axes[0].set_ylabel("ms")
    axes[0].set_yscale("log")
    names = [rec.name for rec in logs]
    p50 = [percentile(sorted(rec.latencies_ms), 50) if rec.latencies_ms else 0 for rec in logs]
    p99 = [percentile(sorted(rec.latencies_ms), 99) if rec.latencies_ms else 0 for rec in logs]
    x = np.arange(len(logs))
    axes[1].bar(x - 0.2, p50, 0.4, label="p50")
    axes[1].bar(x + 0.2, p99, 0.4, label="p99")
    axes[1].scatter(x, [rec.budget_ms for rec in logs], marker="_", s=300, color="red", label="budget", zorder=3)
    axes[1].set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    axes[1].set_title("latency vs budget per robot")
    axes[1].legend()
    for rec in logs:
        if rec.errors:
            t, e = zip(*rec.errors, strict=True)
            axes[2].plot(t, e, linewidth=0.8)
    axes[2].set_title("tracking error (target changes every 3 s)")
    axes[2].set_xlabel("time (s)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
