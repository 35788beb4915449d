"""Round trip of one robot sending a 150 KB observation, against the raw ZMQ floor.

    .venv/bin/python bench/roundtrip.py [--n 2000] [--rounds 5]   (make bench runs bench/compare.py,
    which measures the same rows and more)

Peers, each in its own process, measured in interleaved rounds in one run:
  floor   raw pyzmq ROUTER echoing the very frames our client sends (DEALER -> ROUTER -> DEALER)
  ours    our server (local backend) with a no-op model, through the Python client
  ours-1ms  the same with a 1 ms model
The table gives medians over rounds of each round's p50/p99, and the ratio to the floor.
Results are saved to bench/results/roundtrip.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import REPO, cpu_seconds, start_echo, start_server, stop  # noqa: E402

from inferential import Connection  # noqa: E402
from inferential._proto import inferential_pb2 as pb  # noqa: E402
from inferential.wire import pack_tensors  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
JOINTS = np.zeros(7, dtype=np.float32)


def observation_frames() -> list:
    obs = pb.Observation(model_id="noop", request_id=1, protocol_version=2)
    obs.client.id = "bench"
    payload = pack_tensors([("image", IMAGE), ("joints", JOINTS)], obs.tensors.add)
    return [b"", obs.SerializeToString(), *[bytes(p) for p in payload]]


def measure_echo(endpoint: str, n: int, warmup: int) -> list[float]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    frames = observation_frames()
    out = []
    for i in range(n + warmup):
        t = time.perf_counter()
        sock.send_multipart(frames, copy=False)
        sock.recv_multipart(copy=False)
        if i >= warmup:
            out.append((time.perf_counter() - t) * 1e3)
    sock.close()
    ctx.term()
    return out


def measure_client(endpoint: str, model_id: str, n: int, warmup: int) -> list[float]:
    out = []
    with Connection(server=endpoint, client_id=f"bench-{model_id}") as conn:
        model = conn.model(model_id)
        for i in range(n + warmup):
            t = time.perf_counter()
            model.request(timeout_ms=5000, image=IMAGE, joints=JOINTS)
            if i >= warmup:
                out.append((time.perf_counter() - t) * 1e3)
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="round trips per round and peer")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=100)
    args = ap.parse_args()

    echo, echo_ep = start_echo()
    ours, ours_ep = start_server({"noop": "inferential.models.testing:NoOp", "sleep1": "inferential.models.testing:Sleep"})
    peers = {
        "floor (raw pyzmq echo)": lambda: measure_echo(echo_ep, args.n, args.warmup),
        "ours, no-op model": lambda: measure_client(ours_ep, "noop", args.n, args.warmup),
        "ours, 1 ms model": lambda: measure_client(ours_ep, "sleep1", args.n, args.warmup),
    }
    rounds: dict[str, list[tuple[float, float]]] = {k: [] for k in peers}
    try:
        idle_cpu0 = cpu_seconds(ours.pid)
        time.sleep(2.0)
        idle_cpu = (cpu_seconds(ours.pid) - idle_cpu0) / 2.0
        for r in range(args.rounds):
            for name, fn in peers.items():
                lat = fn()
                rounds[name].append((pct(lat, 50), pct(lat, 99)))
    finally:
        stop(echo)
        stop(ours)

    floor = statistics.median(p50 for p50, _ in rounds["floor (raw pyzmq echo)"])
    rows = []
    for name, rs in rounds.items():
        p50 = statistics.median(x for x, _ in rs)
        p99 = statistics.median(y for _, y in rs)
        rows.append({"peer": name, "p50_ms": p50, "p99_ms": p99, "p50_ratio_to_floor": p50 / floor})
    print(f"\n1 robot, sequential, 150,528-byte image + 7 float32 joints; {args.rounds} rounds x {args.n} round trips (medians of per-round figures)\n")
    print(f"{'peer':<26}{'p50 ms':>9}{'p99 ms':>9}{'p50 / floor':>13}")
    for row in rows:
        print(f"{row['peer']:<26}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}{row['p50_ratio_to_floor']:>12.2f}x")
    print(f"\nidle server CPU: {100 * idle_cpu:.2f}% of a core (2 s, no traffic)")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "roundtrip.json").write_text(json.dumps({"rows": rows, "rounds": rounds, "idle_cpu_fraction": idle_cpu, "n": args.n}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
