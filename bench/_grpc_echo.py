"""A gRPC bytes echo, the transport gRPC-based robot servers use, and the load it takes.

As a script it is the server (run in a subprocess by bench/compare.py):

    .venv/bin/python bench/_grpc_echo.py --bind 127.0.0.1:PORT [--workers 32]

A generic handler (``grpc.method_handlers_generic_handler``) with no
serializers, so messages are the very bytes sent: no protobuf on either side,
the least gRPC can cost. The sync server with a thread pool, as LeRobot's
policy server runs it. Methods of service ``bench.Echo``:

    Unary   unary echo of the whole message
    Head    unary; answers with the first HEAD_BYTES bytes (a reply as small as a server's)
    Stream  bidirectional stream echoing each message

Imported, it provides the robot side: a sequential round trip (unary or
stream), an open-loop fleet returning a :class:`_fleet.FleetRun` (so it is
summarized like the ZMQ ones), and a closed loop of robots with one request
in flight each.
"""

from __future__ import annotations

import argparse
import heapq
import queue
import random
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import grpc

SERVICE = "bench.Echo"
HEAD_BYTES = 128
MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


def serve(bind: str, workers: int) -> None:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def head(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request[:HEAD_BYTES]

    def stream(requests, context):  # type: ignore[no-untyped-def]
        for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Head": grpc.unary_unary_rpc_method_handler(head),
            "Stream": grpc.stream_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=workers), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(bind)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


# --- the robot side -------------------------------------------------------------------


def channel(target: str) -> grpc.Channel:
    """One robot's channel: its own connection (no subchannel shared with other channels)."""
    ch = grpc.insecure_channel(target, options=OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch


def _unary(ch: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable:
    return ch.unary_unary(f"/{SERVICE}/{method}")  # no serializers: bytes in, bytes out


def sequential_unary(target: str, message: bytes, n: int, warmup: int) -> list[float]:
    """Round trips in ms, one call at a time."""
    ch = channel(target)
    call = _unary(ch, "Unary")
    out = []
    try:
        for i in range(n + warmup):
            t = time.perf_counter()
            reply = call(message)
            if i >= warmup:
                out.append((time.perf_counter() - t) * 1e3)
        assert len(reply) == len(message)
    finally:
        ch.close()
    return out


def sequential_stream(target: str, message: bytes, n: int, warmup: int) -> list[float]:
    """Round trips in ms over one bidirectional stream, one message at a time."""
    ch = channel(target)
    requests: "queue.SimpleQueue[Optional[bytes]]" = queue.SimpleQueue()

    def feed():  # type: ignore[no-untyped-def]
        while (item := requests.get()) is not None:
            yield item

    replies = ch.stream_stream(f"/{SERVICE}/Stream")(feed())
    out = []
    try:
        for i in range(n + warmup):
            t = time.perf_counter()
            requests.put(message)
            next(replies)
            if i >= warmup:
                out.append((time.perf_counter() - t) * 1e3)
    finally:
        requests.put(None)
        replies.cancel()
        ch.close()
    return out


def run_fleet(target: str, robots: list, seconds: float, message: bytes, *, warmup_s: float = 1.0,
              grace_s: float = 6.0, seed: int = 1, method: str = "Head"):  # -> _fleet.FleetRun
    """The open-loop fleet of bench/_fleet.run_fleet over gRPC: one channel per robot,
    non-blocking calls (``future``), replies timed in gRPC's callback thread."""
    from _fleet import FleetRun, Sent

    rng = random.Random(seed + 7)
    channels = [channel(target) for _ in robots]
    calls = [_unary(ch, method) for ch in channels]
    run = FleetRun(robots, seconds, warmup_s, start_ns=time.monotonic_ns() + 50_000_000)
    run.records = [[] for _ in robots]
    end_ns = run.start_ns + int((warmup_s + seconds) * 1e9)
    heap = [(run.start_ns + r.phase_ns, i) for i, r in enumerate(robots)]
    heapq.heapify(heap)
    lock = threading.Lock()
    outstanding = [0]
    closing = [False]
    futures = []
    cpu0 = _cpu_seconds()

    def done(sent: Sent, fut: grpc.Future) -> None:
        now = time.monotonic_ns()
        with lock:
            if closing[0]:
                return
            outstanding[0] -= 1
            if fut.cancelled():
                return
            err = fut.exception()
            sent.reply_ns = now
            sent.status = "OK" if err is None else f"grpc:{err.code().name}"
            sent.batch_size = 1

    while heap:
        planned, i = heap[0]
        now = time.monotonic_ns()
        if planned > now:
            time.sleep(min((planned - now) / 1e9, 0.005))
            continue
        heapq.heappop(heap)
        sent = Sent(i, planned, time.monotonic_ns())
        with lock:
            if run.records[i]:
                run.records[i][-1].next_sent_ns = sent.sent_ns
            run.records[i].append(sent)
            outstanding[0] += 1
        fut = calls[i].future(message, timeout=warmup_s + seconds + grace_s)
        fut.add_done_callback(lambda f, s=sent: done(s, f))
        futures.append(fut)
        following = planned + int(robots[i].period_ns * rng.uniform(0.95, 1.05))
        if following < end_ns:
            heapq.heappush(heap, (following, i))
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        with lock:
            if outstanding[0] == 0:
                break
        time.sleep(0.01)
    with lock:
        closing[0] = True
    for fut in futures:
        fut.cancel()
    run.loadgen_cpu_s = _cpu_seconds() - cpu0
    for ch in channels:
        ch.close()
    return run


def closed_loop(target: str, robots: int, seconds: float, message: bytes, *, warmup_s: float = 0.5,
                timeout_s: float = 2.0, method: str = "Head",
                cpu_probe: Optional[Callable[[], float]] = None) -> dict:
    """``robots`` channels, each with one call in flight, answered calls replaced at once."""
    channels = [channel(target) for _ in range(robots)]
    calls = [_unary(ch, method) for ch in channels]
    lock = threading.Lock()
    start = time.monotonic_ns()
    win0 = start + int(warmup_s * 1e9)
    win1 = win0 + int(seconds * 1e9)
    stats = {"replies": 0, "lost": 0, "errors": 0, "latencies": []}
    stopping = threading.Event()
    marks: dict[str, float] = {}

    def launch(i: int) -> None:
        t = time.monotonic_ns()
        fut = calls[i].future(message, timeout=timeout_s)
        fut.add_done_callback(lambda f: finished(i, t, f))

    def finished(i: int, t: int, fut: grpc.Future) -> None:
        now = time.monotonic_ns()
        with lock:
            if fut.cancelled() or fut.exception() is not None:
                code = None if fut.cancelled() else fut.exception().code()
                if win0 <= now < win1:
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        stats["lost"] += 1
                    else:
                        stats["errors"] += 1
            elif win0 <= now < win1:
                stats["replies"] += 1
                stats["latencies"].append((now - t) / 1e6)
        if not stopping.is_set():
            launch(i)

    for i in range(robots):
        launch(i)
    _sleep_until(win0)
    marks["cpu0"], marks["probe0"] = _cpu_seconds(), (cpu_probe() if cpu_probe else 0.0)
    _sleep_until(win1)
    marks["cpu1"], marks["probe1"] = _cpu_seconds(), (cpu_probe() if cpu_probe else 0.0)
    stopping.set()
    time.sleep(0.2)
    for ch in channels:
        ch.close()
    with lock:
        return _closed_summary(stats, seconds, marks, cpu_probe is not None)


def _closed_summary(stats: dict, seconds: float, marks: dict, probed: bool) -> dict:
    import numpy as np

    lat = stats["latencies"]
    return {
        "replies_per_s": stats["replies"] / seconds,
        "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"),
        "lost": stats["lost"],
        "sheds": stats["errors"],
        "loadgen_cpu_fraction": (marks["cpu1"] - marks["cpu0"]) / seconds,
        "server_cpu_fraction": (marks["probe1"] - marks["probe0"]) / seconds if probed else None,
    }


def _sleep_until(t_ns: int) -> None:
    while (left := t_ns - time.monotonic_ns()) > 0:
        time.sleep(min(left / 1e9, 0.05))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bind", required=True, help="host:port")
    ap.add_argument("--workers", type=int, default=32)
    args = ap.parse_args()
    try:
        serve(args.bind, args.workers)
    except KeyboardInterrupt:
        sys.exit(0)
