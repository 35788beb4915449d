"""Closed-loop load for maximum throughput: robots that each keep one request in flight.

One process, one thread, one DEALER socket per robot and a ``zmq.Poller`` loop
(as bench/_fleet.py). Each robot sends its next observation as soon as the
reply to the previous one arrives, so the offered load adapts to the server:
the number of robots is the number of requests in flight. Replies are matched
by request id (v2 servers), by the echoed ``seq`` metadata (the 1.4.0 runner),
or by the echoed envelope's request id (a raw echo). A request unanswered
after ``timeout_s`` counts as lost and the robot sends a new one; an explicit
non-OK status counts as a shed and the robot sends a new one.

Envelopes are built once per robot and only the request id (and ``seq``)
change per send, so the load generator costs ~10 us per message and the
server, not the generator, is what saturates (the raw echo's row shows the
generator's own ceiling).
"""

from __future__ import annotations

import resource
import time
from typing import Callable, Optional

import numpy as np
import zmq

from inferential._envelope import encode_observation, parse_reply
from inferential._proto import inferential_pb2 as pb
from inferential.wire import DEFAULT_LIMITS

from _fleet import without_gc_pauses

JOINTS = np.linspace(-1, 1, 7, dtype=np.float32)


@without_gc_pauses
def run_closed_loop(
    endpoint: str,
    robots: int,
    seconds: float,
    *,
    mode: str = "v2",
    model: str = "noop",
    image: Optional[np.ndarray] = None,
    warmup_s: float = 0.5,
    timeout_s: float = 2.0,
    name_prefix: str = "cl",
    cpu_probe: Optional[Callable[[], float]] = None,
    latency_budget_ms: float = 0.0,
) -> dict:
    """Replies/s over ``seconds`` after ``warmup_s``, with latency, losses and sheds.

    ``mode``: "v2" (our server), "v1" (the 1.4.0 server: routing id = robot name,
    one payload frame), "echo" (a raw ZMQ echo of the envelope).
    ``cpu_probe``: returns the server's CPU seconds; sampled at the window's ends.
    """
    ctx = zmq.Context(io_threads=1)
    poller = zmq.Poller()
    sockets, templates, payloads = [], [], []
    inputs = {"joints": JOINTS, "seq": "1"}
    if image is not None:
        inputs["image"] = image
    for i in range(robots):
        name = f"{name_prefix}-{i:03d}"
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        if mode == "v1":
            sock.setsockopt(zmq.ROUTING_ID, name.encode())
        sock.connect(endpoint)
        poller.register(sock, zmq.POLLIN)
        sockets.append(sock)
        frames = encode_observation(
            client_id=name, client_type="bench-robot", model_id=model, request_id=1, inputs=inputs,
            latency_budget_ms=latency_budget_ms, limits=DEFAULT_LIMITS, single_payload_frame=mode == "v1",
        )
        templates.append(pb.Observation.FromString(frames[1]))
        payloads.append([bytes(f) for f in frames[2:]])
    index = {sock: i for i, sock in enumerate(sockets)}
    time.sleep(0.3)  # connections complete before the clock starts

    next_rid = [0] * robots
    inflight: list[Optional[tuple[int, int]]] = [None] * robots  # (request id, sent ns)
    start = time.monotonic_ns()
    win0 = start + int(warmup_s * 1e9)
    win1 = win0 + int(seconds * 1e9)
    timeout_ns = int(timeout_s * 1e9)
    replies = lost = unknown = 0
    sheds: dict[str, int] = {}
    latencies: list[float] = []
    marks: dict[str, float] = {}

    def send(i: int) -> None:
        next_rid[i] += 1
        rid = next_rid[i]
        obs = templates[i]
        obs.request_id = rid
        obs.metadata["seq"] = str(rid)
        sockets[i].send_multipart([b"", obs.SerializeToString(), *payloads[i]], copy=False)
        inflight[i] = (rid, time.monotonic_ns())

    def window(now: int) -> bool:
        return win0 <= now < win1

    for i in range(robots):
        send(i)
    sending = True
    last_sweep = start
    while True:
        now = time.monotonic_ns()
        if "cpu0" not in marks and now >= win0:
            marks["cpu0"], marks["probe0"] = _cpu_seconds(), cpu_probe() if cpu_probe else 0.0
        if sending and now >= win1:
            marks["cpu1"], marks["probe1"] = _cpu_seconds(), cpu_probe() if cpu_probe else 0.0
            sending = False
            drain_until = now + timeout_ns
        if not sending and (all(x is None for x in inflight) or now >= drain_until):
            break
        if now - last_sweep > 50_000_000:  # requests past their timeout: lost, replaced
            last_sweep = now
            for i, pending in enumerate(inflight):
                if pending is not None and now - pending[1] > timeout_ns:
                    if window(now) or not sending:
                        lost += 1
                    inflight[i] = None
                    if sending:
                        send(i)
        for sock, _ in poller.poll(50):
            i = index[sock]
            while True:
                try:
                    frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                if mode == "echo":
                    rid, status = pb.Observation.FromString(frames[1].bytes).request_id, pb.OK
                else:
                    resp, _ = parse_reply(frames, DEFAULT_LIMITS)
                    rid = resp.request_id or int(resp.metadata.get("seq", "0") or 0)
                    status = resp.status
                pending = inflight[i]
                if pending is None or pending[0] != rid:
                    unknown += 1  # the reply to a request already counted lost
                    continue
                inflight[i] = None
                if window(now):
                    if status in (pb.OK, pb.STATUS_UNSPECIFIED):
                        replies += 1
                        latencies.append((now - pending[1]) / 1e6)
                    else:
                        name = pb.Status.Name(status)
                        sheds[name] = sheds.get(name, 0) + 1
                if sending:
                    send(i)
    for sock in sockets:
        sock.close(linger=0)
    ctx.term()
    return {
        "robots": robots,
        "replies": replies,
        "replies_per_s": replies / seconds,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
        "lost": lost,
        "sheds": sum(sheds.values()),
        "shed_kinds": sheds,
        "late_unknown": unknown,
        "loadgen_cpu_fraction": (marks["cpu1"] - marks["cpu0"]) / seconds,
        "server_cpu_fraction": (marks["probe1"] - marks["probe0"]) / seconds if cpu_probe else None,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: sheds a step may have, as a share of its answers, and still count as served: one
#: DEADLINE_UNMEETABLE in thousands (an estimate still stale from the run before) says
#: nothing about the load, and stopping the search on it left rows with 1 robot in flight
SHED_TOLERANCE = 0.001


def clean(step: dict) -> bool:
    """Whether a step served its load: nothing lost, and sheds (when its answers are
    counted) at most ``SHED_TOLERANCE`` of them."""
    if step["lost"]:
        return False
    replies = step.get("replies")
    if replies is None:
        return not step["sheds"]
    return step["sheds"] <= SHED_TOLERANCE * (replies + step["sheds"])


def stalled(curve: list[dict], gain: float = 0.05, patience: int = 2) -> bool:
    """Stop stepping the load up: the last step was not ``clean`` (it lost requests, or
    shed more than ``SHED_TOLERANCE`` of them), or the last ``patience`` steps each failed
    to beat the best before them by ``gain``."""
    last = curve[-1]
    if not clean(last):
        return True
    if len(curve) <= patience:
        return False
    best_before = max(x["replies_per_s"] for x in curve[:-patience])
    return all(x["replies_per_s"] < (1 + gain) * best_before for x in curve[-patience:])
