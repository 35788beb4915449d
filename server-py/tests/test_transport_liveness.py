"""The server's socket outlives peers that hang up while their input is paused.

libzmq 4.3.x aborts the process (`Assertion failed: !_io_error`) when a ZMTP PING timer
fires on a connection whose input is paused at RCVHWM and whose peer has hung up. The
full soak (200 robots x 20 Hz) killed the server this way twice. These tests run the
scenario in a child process, since the failure is an abort, not an exception.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import zmq

from inferential.config.schema import TransportConfig
from inferential.server.transport import RouterTransport

_SCENARIO = textwrap.dedent(
    """
    import time, zmq
    from inferential.config.schema import TransportConfig
    from inferential.server.transport import RouterTransport

    # Short keepalive settings: with ZMTP PINGs these armed the timer that aborted.
    t = RouterTransport(TransportConfig(bind="tcp://127.0.0.1:0", recv_hwm=5,
                                        heartbeat_ivl_ms=100, heartbeat_timeout_ms=2000))
    endpoint = t.bind()  # never attached: nobody reads, so each peer's input pauses at RCVHWM
    ctx = zmq.Context()
    for _ in range(8):
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.connect(endpoint)
        for _ in range(100):
            try:
                d.send(b"x" * 100_000, zmq.NOBLOCK)
            except zmq.Again:
                break
        time.sleep(0.2)
        d.close()  # hang up while the server's side of the connection is paused
        time.sleep(0.3)  # several PING intervals: the old timer fired here
        while t._sock.poll(0):
            t._sock.recv_multipart()
    t.close()
    print("survived")
    """
)


def test_transport_survives_peer_hangup_at_hwm() -> None:
    proc = subprocess.run([sys.executable, "-c", _SCENARIO], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert "survived" in proc.stdout


def _tcp_option(sock: zmq.Socket, option: int) -> int:
    return int(sock.getsockopt(option))


def test_heartbeat_settings_become_tcp_keepalive_not_pings() -> None:
    t = RouterTransport(TransportConfig(bind="tcp://127.0.0.1:0", heartbeat_ivl_ms=1500, heartbeat_timeout_ms=5000))
    t.bind()
    try:
        s = t._sock
        assert s is not None
        assert _tcp_option(s, zmq.HEARTBEAT_IVL) == 0  # no PING timer on the server's connections
        assert _tcp_option(s, zmq.TCP_KEEPALIVE) == 1
        assert _tcp_option(s, zmq.TCP_KEEPALIVE_IDLE) == 2  # whole seconds, rounded up
        assert _tcp_option(s, zmq.TCP_KEEPALIVE_INTVL) == 2
        assert _tcp_option(s, zmq.TCP_KEEPALIVE_CNT) == 3  # 5 s of unanswered probes
        assert _tcp_option(s, zmq.TCP_MAXRT) == 5000
    finally:
        t.close()


def test_robot_pings_still_answered_and_silent_robot_dropped() -> None:
    """A robot's own PINGs are still answered although the server sends none."""
    t = RouterTransport(TransportConfig(bind="tcp://127.0.0.1:0"))
    endpoint = t.bind()
    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.HEARTBEAT_IVL, 50)
    d.setsockopt(zmq.HEARTBEAT_TIMEOUT, 200)
    monitor = d.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        d.connect(endpoint)
        d.send(b"hello")
        assert t._sock is not None and t._sock.poll(2000)
        # 1 s of PINGs every 50 ms, each needing a PONG within 200 ms: none missed.
        assert not monitor.poll(1000), "the robot timed the server out: its PINGs were not answered"
    finally:
        monitor.close()
        d.close()
        t.close()
        ctx.term()


_HANGUP_DURING_CLOSE = textwrap.dedent(
    """
    import threading, time, zmq
    from inferential.config.schema import TransportConfig
    from inferential.server.transport import RouterTransport

    ctx = zmq.Context()  # shared with a socket opened after the server closes
    t = RouterTransport(TransportConfig(bind="tcp://127.0.0.1:0"), context=ctx)
    endpoint = t.bind()  # never attached: the scenario reads the socket itself
    robot_ctx = zmq.Context()
    robot = robot_ctx.socket(zmq.DEALER)
    robot.setsockopt(zmq.LINGER, 0)
    robot.setsockopt(zmq.RCVHWM, 1)  # reads nothing and buffers little:
    robot.setsockopt(zmq.RCVBUF, 4096)  # the replies below wait in the server's session
    robot.connect(endpoint)
    robot.send(b"hello")
    identity = t._sock.recv_multipart()[0]
    for _ in range(200):
        t._sock.send_multipart([identity, b"", b"x" * 1_000_000])
    time.sleep(0.05)
    threading.Timer(0.05, robot.close).start()  # the robot hangs up during the server's linger
    t.close()
    time.sleep(0.3)
    other = ctx.socket(zmq.ROUTER)
    other.setsockopt(zmq.LINGER, 0)
    other.bind("tcp://127.0.0.1:0")
    probe = robot_ctx.socket(zmq.DEALER)
    probe.setsockopt(zmq.LINGER, 0)
    probe.setsockopt(zmq.IMMEDIATE, 1)
    probe.setsockopt(zmq.SNDTIMEO, 5000)
    probe.connect(other.getsockopt_string(zmq.LAST_ENDPOINT))
    try:
        probe.send(b"ping")
        served = bool(other.poll(5000))
    except zmq.Again:
        served = False
    print("served" if served else "wedged", flush=True)
    probe.close(); other.close(); ctx.term(); robot_ctx.term()
    """
)


def test_a_robot_hanging_up_while_the_server_closes_leaves_its_zmq_context_working() -> None:
    """libzmq sends monitor events blocking, on the context's I/O thread: one sent after the
    connection watch's reader closed stalled that thread for good, and with it every socket
    of the context (in the test suite, every later server on the shared context: their
    robots never connected). The server now stops the monitor before anything closes."""
    proc = subprocess.run(
        [sys.executable, "-c", _HANGUP_DURING_CLOSE], capture_output=True, text=True, timeout=60
    )  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert "served" in proc.stdout, proc.stdout


def test_the_backlog_bound_counts_only_selects_that_could_wait() -> None:
    """A drain that stops at its burst leaves messages queued and schedules itself again, so
    the loop's next select has a timeout of 0: it proves nothing about the queue, and the bound
    must keep growing from the moment the queue was last empty (a bound reset by such selects
    let observations queued for 0.25 s pass as fresh)."""
    from inferential.server import transport as tr

    class Inner:
        def select(self, timeout):
            if timeout is None:
                time.sleep(0.003)  # waited until a message woke it
            return []

    t = RouterTransport(TransportConfig(bind="tcp://127.0.0.1:0"))
    try:
        ms = 1_000_000
        sel = tr._TimedSelector(Inner())
        t._selector = sel
        t.empty_ns = 1000 * ms  # the queue last seen empty
        sel.select(0)  # the loop only looked (callbacks ready)
        assert t.backlog_bound_ns(1300 * ms) == 300 * ms
        # A select that could wait, begun after the queue was empty: a message read after it
        # arrived during the wait (it woke the loop) or while the loop was busy before it, so
        # the wait itself is left out of the bound.
        t.empty_ns = tr._monotonic_ns()
        sel.select(None)
        now = sel.woke + 5 * ms
        bound = t.backlog_bound_ns(now)
        assert bound == (now - sel.woke) + (sel.began - t.empty_ns)
        assert bound <= now - t.empty_ns - 3 * ms
        sel.select(0.0)
        assert t.backlog_bound_ns(now) == now - t.empty_ns
    finally:
        t.close()


def test_at_most_one_drain_waits_on_the_loop_under_a_flood() -> None:
    """Each drain reads for a slice; one that ends its slice with input left queues another,
    and a send from outside a drain (a finished batch's replies) queued one more. Under a
    flood the queued drains piled up (twenty at once with robots refused and sending again
    at once) and a finished batch's callback waited behind all of them: the model sat idle
    while the loop read. Now a drain is queued only when none is."""
    import asyncio

    t = RouterTransport(TransportConfig(bind="tcp://127.0.0.1:0"))
    endpoint = t.bind()
    ctx = zmq.Context()
    robot = ctx.socket(zmq.DEALER)
    robot.setsockopt(zmq.LINGER, 0)
    robot.setsockopt(zmq.SNDHWM, 0)
    robot.connect(endpoint)
    for i in range(3000):
        robot.send_multipart([b"", b"%d" % i])
    loop = asyncio.new_event_loop()
    queued: list[int] = []
    identity: list[bytes] = []
    handled = [0]

    def drains_queued() -> int:
        ready = getattr(loop, "_ready", ())  # the default loop's queue of callbacks to run
        return sum(1 for h in ready if getattr(h, "_callback", None) in (t.drain, getattr(t, "_drain_queued", None)))

    def on_message(frames: list) -> None:
        identity[:] = [frames[0].bytes]
        handled[0] += 1
        until = time.perf_counter() + 0.0001  # a refusal's worth of work
        while time.perf_counter() < until:
            pass
        t.send([identity[0], b"", b"refused"])
        queued.append(drains_queued())

    def finished_batch() -> None:  # replies sent from outside a drain, as a batch's callback does
        if identity:
            t.send([identity[0], b"", b"ok"])
        if handled[0] < 3000:
            loop.call_soon(finished_batch)

    async def run() -> None:
        t.attach(loop, on_message, lambda: None)
        loop.call_soon(finished_batch)
        deadline = time.monotonic() + 30
        while handled[0] < 3000 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)

    try:
        loop.run_until_complete(run())
    finally:
        t.close()
        loop.close()
        robot.close(linger=0)
        ctx.term()
    assert handled[0] == 3000
    assert max(queued) <= 1, f"up to {max(queued)} drains queued at once"
