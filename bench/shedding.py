"""Overload by the server's own CPU: the native transport's refusals on and off, same run.

    make bench-shedding         (about 4 minutes)
    .venv/bin/python bench/shedding.py [--rounds R] [--seconds S] [--robots N] [--image small|150kb]

Two servers on the native transport (``--python``: the Python transport, where the same
switch turns admission's early refusal on and off), identical but for ``transport.native_shedding``, take
turns (the other paused) under the same open-loop fleet: N robots x 50 Hz (default 100:
5,000 observations/s, beyond what this server's event loop can take on 2 cores), each with a
20 ms budget, the 1 ms model. With shedding off, every observation the server cannot serve in
time still costs the event loop nearly a request's worth of Python to refuse; with it on, the
module refuses what has already waited too long before the loop sees it. Per run: OK replies
within budget per second (goodput), OK late (and of those, late already when the server
handed the reply to its socket, by the reply's timing), refusals by status, silent losses, the server's
CPU, and the ratio on/off of goodput. Medians over rounds; JSON in bench/results/shedding.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fleet import FAST, RobotSpec, run_fleet, summarize  # noqa: E402
from _fleet import IMAGE as SMALL_IMAGE  # noqa: E402
from _peers import IMAGE, REPO, cpu_seconds, pause, resume, start_server, stop  # noqa: E402

RESULTS = REPO / "bench" / "results"
MODELS = {"sleep1": "inferential.models.testing:Sleep"}
VARIANTS = ("shedding on", "shedding off")


def _config(shedding: bool, native: bool = True) -> Path:
    path = RESULTS / f".bench-shedding-{'on' if shedding else 'off'}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "on" if native else "off"
    path.write_text(f'transport:\n  native: "{mode}"\n  native_shedding: {"true" if shedding else "false"}\n')
    return path


def _settle(pid: int, quiet: float = 0.3, limit_s: float = 20.0) -> None:
    """Until the server uses less than ``quiet`` of a core (it may still be working off a backlog)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        c0 = cpu_seconds(pid)
        time.sleep(0.25)
        if (cpu_seconds(pid) - c0) / 0.25 < quiet:
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--robots", type=int, default=100)
    ap.add_argument("--image", choices=("small", "150kb"), default="small")
    ap.add_argument("--v1", action="store_true", help="1.x robots: no budget sent (the server's default, 50 ms, applies)")
    ap.add_argument(
        "--python",
        action="store_true",
        help="both servers on the Python transport, where the switch turns admission's early refusal on and off",
    )
    ap.add_argument("--out", default=str(RESULTS / "shedding.json"))
    args = ap.parse_args()
    image = IMAGE if args.image == "150kb" else SMALL_IMAGE
    procs = {}
    try:
        for name in VARIANTS:
            procs[name] = start_server(MODELS, ["--config", str(_config(name == "shedding on", not args.python))])
        rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for name in order:
                proc, endpoint = procs[name]
                for other, (p, _) in procs.items():
                    (resume if other == name else pause)(p)
                rng = random.Random(r + 1)
                robots = [
                    RobotSpec(f"s{r}-{name[-3:].strip()}-{i:03d}", 50.0, 20.0, 1, FAST, False, rng.randrange(20_000_000))
                    for i in range(args.robots)
                ]
                cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                run = run_fleet(
                    endpoint, robots, args.seconds, warmup_s=1.0, grace_s=6.0, image=image, model="sleep1", v1_robots=args.v1
                )
                cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
                s = summarize(run)
                row = {
                    "submitted": s["submitted"],
                    "goodput_per_s": s["goodput_per_s"],
                    "ok": s["answered_ok"],
                    "ok_late": s["ok_late"],
                    "ok_late_in_server": s["ok_late_in_server"],
                    "sheds": s["sheds"],
                    "lost": s["silent_losses"],
                    "server_cpu": cpu,
                    "p50_ms": s["p50_ms"],
                    "p99_ms": s["p99_ms"],
                    "send_lag_p99_ms": s["send_lag_p99_ms"],
                }
                rows[name].append(row)
                print(
                    f"  round {r + 1} {name:12s}: {row['goodput_per_s']:7.0f} OK/s within budget of "
                    f"{row['submitted'] / args.seconds:5.0f}/s offered, late {row['ok_late']} "
                    f"({row['ok_late_in_server']} in the server), "
                    f"sheds {dict(row['sheds'])}, lost {row['lost']}, server {cpu:.2f} cores",
                    flush=True,
                )
                _settle(proc.pid)
            for p, _ in procs.values():
                resume(p)
    finally:
        for p, _ in procs.values():
            resume(p)
            stop(p)
    summary = {}
    for name, rs in rows.items():
        summary[name] = {
            "goodput_per_s": statistics.median(x["goodput_per_s"] for x in rs),
            "server_cpu": statistics.median(x["server_cpu"] for x in rs),
            "ok_late": sum(x["ok_late"] for x in rs),
            "ok_late_in_server": sum(x["ok_late_in_server"] for x in rs),
            "lost": sum(x["lost"] for x in rs),
            "submitted": sum(x["submitted"] for x in rs),
        }
    on, off = summary["shedding on"], summary["shedding off"]
    ratio = on["goodput_per_s"] / off["goodput_per_s"] if off["goodput_per_s"] else float("inf")
    print(f"\n{'Python transport: ' if args.python else ''}{args.robots} {'1.x ' if args.v1 else ''}robots x 50 Hz, {image.nbytes + 28:,}-byte observations, "
          f"20 ms budget{' (judged; not sent)' if args.v1 else ''}, 1 ms model "
          f"(medians of {args.rounds} rounds x {args.seconds:.0f} s):")
    for name in VARIANTS:
        x = summary[name]
        print(f"  {name:12s}: goodput {x['goodput_per_s']:7.0f} OK/s within budget, server {x['server_cpu']:.2f} cores, "
              f"{x['ok_late']} OK late ({x['ok_late_in_server']} in the server), {x['lost']} lost of {x['submitted']}")
    print(f"  goodput with shedding / without: {ratio:.2f}x")
    out = {"args": vars(args), "rounds": rows, "summary": summary, "goodput_ratio": ratio,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")
    lost = sum(x["lost"] for x in summary.values())
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
