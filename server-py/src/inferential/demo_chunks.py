"""`inferential demo --chunk H`: a fleet executing action chunks, with and without the help.

Each simulated robot is a thread running :class:`inferential.ControlLoop` at its own
control rate over its own connection: it executes one joint-position action per step from
its ActionChunkQueue and asks the shipped chunked policy
(:mod:`inferential.models.chunked_policy`) for the next chunk when its queue runs low. Its
target changes every few seconds. The same fleet runs once per *variant*, each against a
fresh server:

- ``rtc``: the policy freezes the prefix the server predicts the robot will execute
  meanwhile (``inference_delay_steps``) and continues from it; the robot takes the newest
  chunk (latest-only, what RTC is designed for);
- ``rtc-blend``: the same, the robot blending overlaps with ``--blend``;
- ``fixed``: ``rtc`` with a hand-set ``--fixed-delay`` instead of the server's prediction;
- ``blend``: no frozen prefix, the robot blends overlaps with ``--blend``;
- ``naive``: no frozen prefix and latest-only: what a robot gets without any of it;
- ``pause``: ``rtc`` with ``scheduling.action_max_age_ms`` set, and the model stalled
  once for ``--pause-ms``: the chunks that come back after their ``valid_until_ns`` must
  all be refused (holds).

The report (``--report``/chunks/) plots per robot the executed trajectory, underruns and
jerk per variant, and the predicted against the measured delay.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from inferential.config import InferentialConfig
from inferential.models.chunked_policy import JOINTS, ChunkedPolicy
from inferential.server import BackgroundServer, Server

MODEL = "chunked"
VARIANTS = ("rtc", "rtc-blend", "fixed", "blend", "naive", "pause")
BLENDED = ("rtc-blend", "blend")
NO_PREFIX = ("blend", "naive")
TARGET_EVERY_S = 3.0


@dataclass
class RobotRun:
    name: str
    rate_hz: float
    positions: list[np.ndarray] = field(default_factory=list)  # the joints after each step
    starved: list[int] = field(default_factory=list)  # steps with no action (underrun or hold)
    stats: dict[str, Any] = field(default_factory=dict)
    arrivals: list[tuple[int, int, float, float]] = field(default_factory=list)
    failure: Optional[str] = None

    def jerk_rms(self, skip: int) -> float:
        """RMS jerk of the executed joint trajectory (rad/s^3), from step ``skip`` on."""
        q = np.asarray(self.positions[skip:], dtype=np.float64)
        if len(q) < 4:
            return float("nan")
        jerk = np.diff(q, n=3, axis=0) * self.rate_hz**3
        return float(np.sqrt(np.mean(np.sum(jerk**2, axis=1))))


class StallingPolicy(ChunkedPolicy):
    """The chunked policy, stalled once for ``stall_ms`` at ``stall_at`` (monotonic s): a
    server that stops answering for a while, then answers what it had."""

    def __init__(self, stall_at: float, stall_ms: float, **options: Any) -> None:
        super().__init__(**options)
        self.stall_at = stall_at
        self.stall_ms = stall_ms
        self._stalled = False

    def execute(self, batch: list[dict[str, Any]]) -> list[Any]:
        if not self._stalled and time.monotonic() >= self.stall_at:
            self._stalled = True
            time.sleep(self.stall_ms / 1000.0)
        return super().execute(batch)


def _robot(run: RobotRun, endpoint: str, variant: str, args: argparse.Namespace, start: float, seed: int) -> None:
    from inferential import Connection, ControlLoop

    rng = np.random.default_rng(seed)
    targets = rng.uniform(0.15, 0.85, size=(16, 2)).astype(np.float32)
    q = np.zeros(JOINTS, np.float32)
    blend = args.blend if variant in BLENDED else "latest"
    try:
        with Connection(server=endpoint, client_id=run.name) as conn:
            loop = ControlLoop(
                conn.model(MODEL),
                rate_hz=run.rate_hz,
                blend=blend,
                request_below=args.request_at,
                prefix_input=None if variant in NO_PREFIX else "prev_actions",
            )

            def observe() -> dict[str, np.ndarray]:
                k = int((time.monotonic() - start) / TARGET_EVERY_S) % len(targets)
                return {"joints": q.copy(), "target": targets[k]}

            def act(action: Optional[np.ndarray]) -> None:
                if action is None:
                    run.starved.append(loop.stats.steps - 1)  # the robot holds its pose
                else:
                    q[:] = action
                run.positions.append(q.copy())

            time.sleep(max(0.0, start - time.monotonic()))
            loop.run(observe, act, duration_s=args.duration)
        qs = loop.queue.stats
        first = loop.arrivals[0].arrived_step if loop.arrivals else loop.stats.steps
        run.stats = {
            "steps": loop.stats.steps,
            "executed": qs.executed,
            "underruns": qs.underruns,
            "startup_underruns": min(first, qs.underruns),
            "held": qs.held,
            "late_rows": qs.late,
            "merged_rows": qs.merged,
            "requests": loop.stats.requests,
            "chunks": loop.stats.chunks,
            "failed": dict(loop.stats.failed),
            "lost": loop.stats.lost,
            "overruns": loop.stats.overruns,
            "stale_chunks": loop.stats.stale_chunks,
            "stale_rows": loop.stats.stale_rows,
            "first_chunk_step": first,
        }
        run.arrivals = [
            (a.sent_step, a.arrived_step, a.predicted_delay_steps, a.actual_delay_steps) for a in loop.arrivals
        ]
    except BaseException as err:  # reported in the summary, never swallowed
        run.failure = repr(err)


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    base_ms, per_item_ms = args.model_ms
    options = dict(horizon=args.chunk, base_ms=base_ms, per_item_ms=per_item_ms, noise=args.noise)
    if variant == "fixed":
        options["fixed_delay_steps"] = args.fixed_delay
    if variant in NO_PREFIX:
        options["freeze"] = False
    policy: ChunkedPolicy
    scheduling: dict[str, Any] = {
        "strategy": args.scheduler or "edf",
        "max_batch_size": 8,
        "admission": args.admission,
    }
    if variant == "pause":
        policy = StallingPolicy(stall_at=float("inf"), stall_ms=args.pause_ms, **options)  # armed below
        scheduling["action_max_age_ms"] = args.max_age_ms
    else:
        policy = ChunkedPolicy(**options)
    config = InferentialConfig.model_validate(
        {"transport": {"bind": "tcp://127.0.0.1:0"}, "backend": "local", "models": [], "scheduling": scheduling}
    )
    server = Server(config=config, models={MODEL: policy})
    background = BackgroundServer(server)
    endpoint = background.start()
    rates = args.rates
    runs = [RobotRun(f"arm-{i:02d}", rates[i % len(rates)]) for i in range(args.robots)]
    start = time.monotonic() + 0.5
    if isinstance(policy, StallingPolicy):
        policy.stall_at = start + args.duration / 2
    busy_before = policy.busy_s
    threads = [
        threading.Thread(target=_robot, args=(run, endpoint, variant, args, start, i), daemon=True)
        for i, run in enumerate(runs)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.duration + 30)
    try:
        status = background.call(server.status)
    finally:
        background.stop()
    utilization = (policy.busy_s - busy_before) / args.duration
    return {"variant": variant, "runs": runs, "utilization": utilization, "server_replies": status.get("replies", {})}


def summarize(result: dict[str, Any], duration_s: float) -> dict[str, Any]:
    runs: list[RobotRun] = result["runs"]
    minutes = duration_s / 60.0
    per_robot = []
    errs: list[float] = []
    robot_errs: list[float] = []
    for run in runs:
        s = run.stats
        skip = s.get("first_chunk_step", 0) + 3
        steady_underruns = s.get("underruns", 0) - s.get("startup_underruns", 0)
        arrivals = run.arrivals[2:]  # the model's first batches are not measured yet
        errs += [abs(a[3] - a[2]) for a in arrivals]
        # The robot's own view: steps between its observation and the chunk's arrival,
        # against the server's prediction (which leaves out the trip to the server).
        robot_errs += [abs((a[1] - a[0]) - a[2]) for a in arrivals]
        per_robot.append(
            {
                "name": run.name,
                "rate_hz": run.rate_hz,
                "underruns_per_min": steady_underruns / minutes,
                "startup_underruns": s.get("startup_underruns", 0),
                "held": s.get("held", 0),
                "jerk_rms": run.jerk_rms(skip),
                "failure": run.failure,
                **{
                    k: s.get(k)
                    for k in (
                        "steps",
                        "executed",
                        "requests",
                        "chunks",
                        "failed",
                        "lost",
                        "overruns",
                        "stale_chunks",
                        "stale_rows",
                    )
                },
            }
        )
    return {
        "variant": result["variant"],
        "utilization": result["utilization"],
        "underruns_per_robot_min": float(np.mean([r["underruns_per_min"] for r in per_robot])),
        "held": int(sum(r["held"] for r in per_robot)),
        "stale_chunks": int(sum(r["stale_chunks"] or 0 for r in per_robot)),
        "stale_rows": int(sum(r["stale_rows"] or 0 for r in per_robot)),
        "failed": int(sum(sum((r["failed"] or {}).values()) for r in per_robot)),
        "executed": int(sum(r["executed"] or 0 for r in per_robot)),
        "jerk_rms_median": float(np.nanmedian([r["jerk_rms"] for r in per_robot])),
        "delay_abs_error_median": float(np.median(errs)) if errs else float("nan"),
        "delay_within_1_step": float(np.mean(np.array(errs) < 1.0)) if errs else float("nan"),
        "robot_delay_abs_error_median": float(np.median(robot_errs)) if robot_errs else float("nan"),
        "server_replies": result["server_replies"],
        "robots": per_robot,
    }


def run_chunk_demo(args: argparse.Namespace) -> int:
    from inferential.logs import configure_logging

    configure_logging("WARNING")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    print(
        f"Inferential chunk demo: {args.robots} robots at {'/'.join(f'{r:g}' for r in args.rates)} Hz, "
        f"chunks of {args.chunk}, asked at {args.request_at} left, model {args.model_ms[0]:g} ms + "
        f"{args.model_ms[1]:g} ms/request, {args.duration:.0f} s per variant: {', '.join(variants)}"
    )
    results = []
    summaries = []
    for variant in variants:
        result = run_variant(variant, args)
        summary = summarize(result, args.duration)
        results.append(result)
        summaries.append(summary)
        print(_line(summary))
    folder = Path(args.report) / "chunks"
    path = _write_report(folder, results, summaries, args)
    print(f"report: {path}")
    failures = [r for res in results for r in res["runs"] if r.failure]
    for r in failures:
        print(f"robot {r.name} failed: {r.failure}")
    return 1 if failures else 0


def _line(s: dict[str, Any]) -> str:
    return (
        f"{s['variant']:<9} model busy {100 * s['utilization']:5.1f}%  underruns/robot-min {s['underruns_per_robot_min']:7.2f}  "
        f"held {s['held']:5d}  stale chunks {s['stale_chunks']:4d} ({s['stale_rows']} rows)  "
        f"errors {s['failed']:4d}  jerk p50 {s['jerk_rms_median']:9.1f} rad/s^3  "
        f"|delay err| p50 {s['delay_abs_error_median']:.2f} steps (robot view {s['robot_delay_abs_error_median']:.2f}), "
        f"within 1 step {100 * s['delay_within_1_step']:.0f}%"
    )


def _write_report(folder: Path, results: list[dict], summaries: list[dict], args: argparse.Namespace) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "args": {
            k: getattr(args, k)
            for k in (
                "robots",
                "duration",
                "chunk",
                "request_at",
                "rates",
                "model_ms",
                "blend",
                "fixed_delay",
                "noise",
                "pause_ms",
                "max_age_ms",
                "scheduler",
                "admission",
            )
        },
        "variants": summaries,
    }
    (folder / "chunks.json").write_text(json.dumps(data, indent=2, default=float))
    png = _plot(results, summaries, args)
    (folder / "chunks.png").write_bytes(png)
    robots_png = _plot_robots(results)
    (folder / "chunks_robots.png").write_bytes(robots_png)
    rows = "".join(
        f"<tr><td>{s['variant']}</td><td>{100 * s['utilization']:.1f}%</td><td>{s['underruns_per_robot_min']:.2f}</td>"
        f"<td>{s['held']}</td><td>{s['stale_chunks']} ({s['stale_rows']})</td><td>{s['failed']}</td><td>{s['jerk_rms_median']:.1f}</td><td>{s['delay_abs_error_median']:.2f}</td>"
        f"<td>{100 * s['delay_within_1_step']:.0f}%</td><td>{s['robot_delay_abs_error_median']:.2f}</td></tr>"
        for s in summaries
    )
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Inferential chunk demo</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}</style></head>
<body><h1>Action chunks: {args.robots} robots, chunks of {args.chunk}</h1>
<p>{_describe(args)}</p>
<table><tr><th>variant</th><th>model busy</th><th>underruns / robot-min (after the first chunk)</th><th>held (stale refused)</th>
<th>stale chunks (rows), none executed</th><th>error replies</th><th>jerk RMS p50 (rad/s&sup3;)</th><th>|actual-predicted delay| p50 (steps)</th><th>within 1 step</th><th>robot-view delay error p50</th></tr>{rows}</table>
<img src="data:image/png;base64,{base64.b64encode(png).decode()}" style="max-width:100%">
<h2>Executed trajectory per robot</h2>
<img src="data:image/png;base64,{base64.b64encode(robots_png).decode()}" style="max-width:100%">
</body></html>"""
    path = folder / "index.html"
    path.write_text(html)
    return path


def _describe(args: argparse.Namespace) -> str:
    return (
        f"Rates {'/'.join(f'{r:g}' for r in args.rates)} Hz, a new chunk asked at {args.request_at} actions left, "
        f"model {args.model_ms[0]:g} ms + {args.model_ms[1]:g} ms per request (slept), scheduler "
        f"{args.scheduler or 'edf'} (admission {args.admission}), blend '{args.blend}' for rtc-blend and blend (latest-only otherwise), fixed delay {args.fixed_delay} steps, "
        f"pause {args.pause_ms:g} ms with action_max_age_ms {args.max_age_ms:g}; {args.duration:g} s per variant."
    )


def _trajectories(ax: Any, results: list[dict], robot: int) -> None:
    """Robot ``robot``'s executed joint 0 in every variant, one above the other (the same
    targets at the same times), the steps with no action (underrun or hold) marked x."""
    for k, res in enumerate(results):
        run = res["runs"][robot]
        if not run.positions:
            continue
        t = np.arange(len(run.positions)) / run.rate_hz
        q0 = np.asarray(run.positions)[:, 0] - 1.0 * k
        (line,) = ax.plot(t, q0, linewidth=0.8, label=f"{res['variant']} (-{k})")
        if run.starved:
            idx = np.asarray(run.starved)
            idx = idx[idx < len(q0)]
            ax.plot(idx / run.rate_hz, q0[idx], "x", color=line.get_color(), markersize=4)
    first = results[0]["runs"][robot]
    ax.set_title(f"{first.name} ({first.rate_hz:g} Hz): joint 0 (rad), variants shifted by 1, x: no action", fontsize=9)
    ax.set_xlabel("time (s)")
    ax.legend(fontsize=6)


def _plot_robots(results: list[dict]) -> bytes:
    """Every robot's executed trajectory, one panel each."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    n = len(results[0]["runs"])
    cols = 2
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.2 * rows), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i < n:
            _trajectories(ax, results, i)
        else:
            ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=70)
    plt.close(fig)
    return buf.getvalue()


def _plot(results: list[dict], summaries: list[dict], args: argparse.Namespace) -> bytes:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    n_robots = args.robots
    fig, axes = plt.subplots(2, 2, figsize=(16, 9))
    # (a) One robot's executed trajectory; every robot's is in the second figure.
    _trajectories(axes[0][0], results, 0)
    # (b) Jerk per robot and variant.
    ax = axes[0][1]
    width = 0.8 / max(1, len(summaries))
    x = np.arange(n_robots)
    for k, s in enumerate(summaries):
        ax.bar(x + k * width, [r["jerk_rms"] for r in s["robots"]], width, label=s["variant"])
    ax.set_yscale("log")
    ax.set_xticks(x + 0.4 - width / 2, [r["name"] for r in summaries[0]["robots"]], rotation=45, fontsize=7)
    ax.set_title("jerk RMS per robot (rad/s^3, log)")
    ax.legend(fontsize=8)
    # (c) Underruns and holds per robot and variant.
    ax = axes[1][0]
    for k, s in enumerate(summaries):
        ax.bar(
            x + k * width,
            [r["underruns_per_min"] + 0.0 for r in s["robots"]],
            width,
            label=f"{s['variant']} underruns/min",
        )
    for k, s in enumerate(summaries):
        held = [r["held"] / (args.duration / 60.0) for r in s["robots"]]
        if any(held):
            ax.plot(x + k * width, held, "k^", markersize=5, label=f"{s['variant']} held/min")
    ax.set_xticks(x + 0.4 - width / 2, [r["name"] for r in summaries[0]["robots"]], rotation=45, fontsize=7)
    ax.set_title("underruns (after the first chunk) and stale actions refused, per robot-minute")
    ax.legend(fontsize=7)
    # (d) Predicted against measured delay, every chunk of the first variant.
    ax = axes[1][1]
    for res in results[:2]:
        pred = [a[2] for run in res["runs"] for a in run.arrivals[2:]]
        act = [a[3] for run in res["runs"] for a in run.arrivals[2:]]
        ax.plot(pred, act, ".", markersize=3, alpha=0.5, label=res["variant"])
    lim = ax.get_xlim()
    ax.plot(lim, lim, "k-", linewidth=0.6)
    ax.plot(lim, [v + 1 for v in lim], "k:", linewidth=0.6)
    ax.plot(lim, [v - 1 for v in lim], "k:", linewidth=0.6)
    ax.set_xlabel("predicted delay (control steps)")
    ax.set_ylabel("measured delay (control steps)")
    ax.set_title("server delay: predicted at dispatch vs measured (dotted: +-1 step)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
