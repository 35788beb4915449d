"""Where the server's time goes under load: py-spy samples of `inferential serve`.

    make profile                      (about 1 minute)
    .venv/bin/python bench/profile_server.py [--robots 20] [--hz 50] [--seconds 8] [--image 150kb|small]
                                          [--model sleep1|noop|vision]

Runs the server (local backend, the 1 ms `sleep1` model, `noop` and the demo's VisionPolicy
as `vision`) in a subprocess,
drives it with the open-loop fleet of bench/_fleet.py (default 20 robots x 50 Hz,
150 KB observations) and samples it with py-spy meanwhile, only while a thread holds
the GIL (``--gil``; ``--nonblocking``: the server is never paused): the Python work of the event loop and the model threads, not
their waits. Prints the functions with the most samples of their own ("self") and
including their callees ("total"), as shares of all samples, plus the server's CPU
per reply. Raw samples go to bench/results/profile.txt (flamegraph.pl reads them).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fleet import IMAGE as SMALL_IMAGE, RobotSpec, FAST, run_fleet, summarize  # noqa: E402
from _peers import IMAGE, REPO, cpu_seconds, start_server, stop  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"
RESULTS = REPO / "bench" / "results"


def aggregate(path: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    if not samples:
        print("no samples (is ptrace allowed here?)")
        return
    print(f"\n{samples} samples with the GIL held")
    for title, counter in (("self", own), ("total (with callees)", total)):
        print(f"\n  top {top} by {title}")
        for frame, n in counter.most_common(top):
            print(f"  {100 * n / samples:5.1f}%  {frame[:120]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--robots", type=int, default=20)
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--image", choices=("150kb", "small"), default="150kb")
    ap.add_argument("--model", default="sleep1", choices=("sleep1", "noop", "vision"))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    args = ap.parse_args()
    if not PY_SPY.exists():
        print(f"py-spy not found at {PY_SPY}: run `make setup`", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / "profile.txt"
    proc, endpoint = start_server(
        {"noop": "inferential.models.testing:NoOp", "sleep1": "inferential.models.testing:Sleep",
         "vision": "inferential.models.vision_policy:VisionPolicy"}
    )
    try:
        image = IMAGE if args.image == "150kb" else SMALL_IMAGE
        period_ms = 1000.0 / args.hz
        robots = [RobotSpec(f"prof-{i:03d}", args.hz, period_ms, 1, FAST, False, i * 997) for i in range(args.robots)]
        warmup = 1.5
        spy = subprocess.Popen(
            [str(PY_SPY), "record", "--pid", str(proc.pid), "--gil", "--nonblocking", "--rate", str(args.rate), "--format", "raw",
             "--output", str(raw), "--duration", str(int(args.seconds))],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        # py-spy starts sampling at once; the fleet's warm-up runs inside its window too.
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        result: dict = {}
        driver = threading.Thread(target=lambda: result.setdefault(
            "run", run_fleet(endpoint, robots, args.seconds - warmup, warmup_s=warmup, image=image, model=args.model)))
        driver.start()
        driver.join()
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - t0)
        _, err = spy.communicate(timeout=60)
        s = summarize(result["run"])
        print(f"{args.robots} robots x {args.hz:g} Hz, {image.nbytes + 28:,}-byte observations, model {args.model}: "
              f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, OK {s['answered_ok']}, lost {s['silent_losses']}, "
              f"server CPU {100 * cpu:.0f}% of a core (while sampled)")
        if spy.returncode != 0:
            print(f"py-spy failed: {err.strip()[-400:]}", file=sys.stderr)
            return 1
        aggregate(raw, args.top)
        print(f"\nraw samples: {raw}")
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
