"""What answering a flood costs the good robots, against dropping it (issue 14, the rate-limit decision).

    python server-py/tools/ratelimit_cost.py --seconds 10 --rounds 2

Past its token bucket's burst, a flooding connection's messages can be dropped unread
(counted, no reply: that connection loses "every observation ends in exactly one reply")
or each answered QUEUE_FULL with retry_after_ms. This runs the same fleet against a real
server process (the Python transport) under five variants, alternated in rounds so a busy
machine hurts them alike: no flood, a flood with no rate limit, a flood dropped past the
burst, a flood answered one by one from the envelope alone, and one answered by the full
receive path. Good robots (one process) and the flooder (another, sending at --flood-per-s
and reading what comes back) run beside it. Reported per variant: the good robots' p50/p99 round
trip, their failures, the server's CPU, and what the flooder sent and got back.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

import numpy as np
import zmq

# The soak's helpers (this file's directory is on sys.path when it runs as a script).
from soak import _free_port
from soak import _observation as soak_observation

from inferential._proto import inferential_pb2 as pb
from inferential.server.protocol import encode_reply
from inferential.wire.limits import buffer, nbytes

VARIANTS = ("no-flood", "flood-unlimited", "flood-drop", "flood-answer", "flood-answer-envelope")


def _observation(client: str, rid: int) -> list[bytes]:
    return soak_observation(client, rid, model="noop")


def _serve(variant: str, port: int, rate: float, burst: int, admission: str) -> None:
    """The server process: `inferential serve`'s Server, with the variant's rate limit."""
    import asyncio

    from inferential.config import InferentialConfig
    from inferential.server import Server

    transport: dict[str, Any] = {"bind": f"tcp://127.0.0.1:{port}", "native": "off"}
    if variant.startswith("flood-") and variant != "flood-unlimited":
        transport.update(rate_limit_per_s=rate, rate_limit_burst=burst)
    config = InferentialConfig.model_validate(
        {
            "transport": transport,
            "models": [{"name": "noop", "target": "inferential.models.testing:NoOp"}],
            "scheduling": {"admission": admission},
            "logging": {"level": "WARNING"},
        }
    )
    server = Server(config=config)
    if server._rate is not None:
        server._rate.drop_excess = variant != "flood-answer"
    if variant == "flood-answer-envelope":
        _answer_from_the_envelope(server, rate)
    asyncio.run(server.run())


def excess_reply(frames: Sequence[Any], wait_ms: int, rate_per_s: float, now_ns: int) -> Optional[list[Any]]:
    """A QUEUE_FULL reply with ``retry_after_ms`` to an observation over its connection's rate,
    built from its envelope alone (no payload, tensor or admission work); None when the
    message is not framed as an observation (it is then dropped, counted by the caller)."""
    if len(frames) < 3 or nbytes(frames[1]) != 0 or nbytes(frames[2]) > 65536:
        return None
    obs = pb.Observation()
    try:
        obs.ParseFromString(buffer(frames[2]))
    except Exception:  # DecodeError and friends: not worth a closer look at this rate
        return None
    if len(obs.client.id) > 256 or len(obs.model_id) > 256:
        return None
    return encode_reply(
        identity=bytes(buffer(frames[0])),
        client_id=obs.client.id,
        model_id=obs.model_id,
        request_id=obs.request_id,
        protocol_version=obs.protocol_version,
        status=pb.QUEUE_FULL,
        error=f"this connection sends over transport.rate_limit_per_s ({rate_per_s:g}/s)",
        observation_timestamp_ns=obs.timestamp_ns,
        now_ns=now_ns,
        retry_after_ms=wait_ms,
    )


def _answer_from_the_envelope(server: Any, rate_per_s: float) -> None:
    """Past the burst, answer each message with ratelimit.excess_reply instead of dropping it
    (the measured alternative: wired around the server's receive path, not in it)."""
    from inferential.server.ratelimit import DROP
    from inferential.wire import Status

    limiter = server._rate
    take = limiter.take
    received = server._on_frames

    def on_frames(frames: list[Any]) -> None:
        identity = bytes(frames[0].buffer)
        wait = take(identity, server.clock())
        if wait == DROP:
            server.metrics.increment("observation_errors", {"status": "RATE_LIMITED"})
            reply = excess_reply(frames, max(1, int(1000 / rate_per_s)), rate_per_s, time.time_ns())
            if reply is not None:
                server._ledger.send(reply, identity, "", Status.QUEUE_FULL)
            return
        limiter.take = lambda _identity, _now: wait  # the decision already taken, for this message
        try:
            received(frames)
        finally:
            limiter.take = take

    server._on_frames = on_frames


def _robots(endpoint: str, robots: int, hz: float, seconds: float, out: Any) -> None:
    """``robots`` DEALERs at ``hz`` each; every round trip in ms, and failures by status."""
    ctx = zmq.Context()
    socks = []
    for _ in range(robots):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        socks.append(s)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    sent: dict[tuple[int, int], int] = {}
    rtts: list[float] = []
    failures: dict[str, int] = {}
    period = 1.0 / hz
    start = time.monotonic() + 0.5  # connections settle first
    ticks = int(seconds * hz)
    due = [(start + i * period / robots + k * period, i, k + 1) for k in range(ticks) for i in range(robots)]
    due.sort()
    j = 0
    end = start + seconds + 2.0
    while time.monotonic() < end and (j < len(due) or len(rtts) + sum(failures.values()) < len(sent)):
        now = time.monotonic()
        while j < len(due) and due[j][0] <= now:
            _, i, rid = due[j]
            socks[i].send_multipart(_observation(f"good-{i}", rid))
            sent[(i, rid)] = time.perf_counter_ns()
            j += 1
        wait = max(0.0, (due[j][0] - time.monotonic()) if j < len(due) else 0.05)
        for s, _ in poller.poll(int(wait * 1000) + 1):
            while s.poll(0):
                reply = pb.ModelResponse.FromString(s.recv_multipart()[1])
                i = socks.index(s)
                t0 = sent.get((i, reply.request_id))
                if t0 is None:
                    continue
                if reply.status == pb.OK:
                    rtts.append((time.perf_counter_ns() - t0) / 1e6)
                else:
                    name = pb.Status.Name(reply.status)
                    failures[name] = failures.get(name, 0) + 1
    out.put({"sent": len(sent), "rtts": rtts, "failures": failures})
    for s in socks:
        s.close()
    ctx.term()


def _flood(endpoint: str, seconds: float, per_s: float, out: Any) -> None:
    """One connection sending ``per_s`` observations a second (0: as fast as it can), reading
    whatever comes back."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 100000)
    s.connect(endpoint)
    time.sleep(0.5)
    message = _observation("flood", 1)
    sent = got = 0
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        if per_s and sent >= (now - start) * per_s:
            s.poll(1)
        for _ in range(50 if not per_s else max(0, min(50, int((now - start) * per_s) - sent))):
            try:
                s.send_multipart(message, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                break
        while s.poll(0):
            s.recv_multipart()
            got += 1
    out.put({"flood_sent": sent, "flood_replies": got})
    s.close()
    ctx.term()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", variant, "--port", str(port), "--rate", str(args.rate),
         "--burst", str(args.burst), "--admission", args.admission],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        probe = zmq.Context.instance().socket(zmq.DEALER)
        probe.setsockopt(zmq.LINGER, 0)
        probe.connect(endpoint)
        probe.send_multipart(_observation("probe", 1))
        if not probe.poll(60000):
            raise RuntimeError(f"{variant}: the server did not answer")
        probe.recv_multipart()
        probe.close()
        out: Any = multiprocessing.Queue()
        workers = [multiprocessing.Process(target=_robots, args=(endpoint, args.robots, args.hz, args.seconds, out))]
        if variant != "no-flood":
            workers.append(multiprocessing.Process(target=_flood, args=(endpoint, args.seconds, args.flood_per_s, out)))
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        for w in workers:
            w.start()
        result: dict[str, Any] = {}
        for _ in workers:
            result.update(out.get(timeout=args.seconds + 60))
        cpu = (_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        for w in workers:
            w.join(10)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    rtts = np.array(result["rtts"]) if result["rtts"] else np.array([np.nan])
    return {
        "variant": variant,
        "sent": result["sent"],
        "ok": len(result["rtts"]),
        "failures": result["failures"],
        "p50_ms": float(np.percentile(rtts, 50)),
        "p99_ms": float(np.percentile(rtts, 99)),
        "server_cpu": cpu,
        "flood_sent": result.get("flood_sent", 0),
        "flood_replies": result.get("flood_replies", 0),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--robots", type=int, default=8)
    parser.add_argument("--hz", type=float, default=50.0)
    parser.add_argument("--rate", type=float, default=100.0, help="transport.rate_limit_per_s of the limited variants")
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--flood-per-s", type=float, default=20000.0, help="the flood's offered rate (0: flat out)")
    parser.add_argument("--admission", default="off", help="scheduling.admission of the server")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.port, args.rate, args.burst, args.admission)
        return 0
    rows = []
    for r in range(args.rounds):
        for variant in args.variants.split(","):
            row = run_variant(variant, args)
            row["round"] = r + 1
            rows.append(row)
            print(
                f"round {r + 1} {variant:16s} good: {row['ok']}/{row['sent']} OK, p50 {row['p50_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, failures {row['failures']}; server CPU {row['server_cpu'] * 100:.0f} %; "
                f"flood sent {row['flood_sent']}, replies {row['flood_replies']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
