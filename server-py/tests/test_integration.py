"""The real server on loopback with real clients: replies, errors, queue rules, shutdown, 1.x compatibility."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time

import numpy as np
import pytest
import zmq
from server_helpers import PUBLISHED_PYTHON, eventually, running_server

import inferential
from inferential import Connection
from inferential._proto import inferential_pb2 as pb
from inferential.wire import pack_tensors


class RawPeer:
    """A hand-driven DEALER, to send exactly the frames a test wants."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, obs: pb.Observation, payload: list) -> None:
        self.sock.send_multipart([b"", obs.SerializeToString(), *payload])

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def replies(self, count: int, timeout_s: float = 5.0) -> list[tuple[pb.ModelResponse, list[bytes]]]:
        out = []
        end = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < end:
            if self.sock.poll(50):
                frames = self.sock.recv_multipart()
                out.append((pb.ModelResponse.FromString(frames[1]), frames[2:]))
        return out

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def make_obs(request_id: int, model: str = "noop", client: str = "raw-1", **tensors) -> tuple[pb.Observation, list]:
    obs = pb.Observation(model_id=model, request_id=request_id, protocol_version=2)
    obs.client.id = client
    payload = pack_tensors(tensors.items(), obs.tensors.add)
    return obs, payload


def test_round_trip_of_every_dtype_through_a_model(shared_server):
    _, endpoint = shared_server
    inputs = {
        name: (np.arange(6) % 2).astype(name).reshape(2, 3)
        for name in [
            "float16",
            "float32",
            "float64",
            "uint8",
            "int8",
            "int16",
            "uint16",
            "int32",
            "uint32",
            "int64",
            "uint64",
            "bool",
        ]
    }
    inputs["bf16"] = inferential.BFloat16.from_float32(np.array([1.5, -2.0], np.float32))
    with Connection(server=endpoint, client_id="dtypes") as conn:
        echo = conn.model("echo")
        result = echo.request(timeout_ms=5000, note="hello", **inputs)
    assert result.ok and result.metadata["note"] == "hello"
    for name, arr in inputs.items():
        if name == "bf16":
            assert result[name].view(np.uint16).tolist() == arr.bits.tolist()
        else:
            assert result[name].dtype == arr.dtype and np.array_equal(result[name], arr)
    assert result.timing.batch_size >= 1 and result.timing.total_ms >= result.timing.queue_wait_ms


def test_bad_input_gets_a_typed_reply_and_the_server_keeps_serving(shared_server):
    _, endpoint = shared_server
    peer = RawPeer(endpoint)
    try:
        obs, payload = make_obs(1, x=np.zeros((4, 4), np.float32))
        obs.tensors[0].shape[0] = 1000  # shape disagrees with byte length: killed the 1.x server
        peer.send(obs, payload)
        peer.send_raw([b"", b"\x00garbage\xff"])  # not an Observation
        good, good_payload = make_obs(3, x=np.zeros(3, np.float32))
        peer.send(good, good_payload)
        replies = peer.replies(3)
    finally:
        peer.close()
    by_id = {r.request_id: r for r, _ in replies}
    assert len(replies) == 3
    assert by_id[1].status == pb.INVALID_REQUEST and "byte_length" in by_id[1].error and not by_id[1].retryable
    garbage = [r for r, _ in replies if r.request_id == 0][0]
    assert garbage.status == pb.INVALID_REQUEST and "not a valid Observation" in garbage.error
    assert by_id[3].status == pb.OK


def test_unknown_models_are_answered_and_create_no_work(shared_server):
    server, endpoint = shared_server
    peer = RawPeer(endpoint)
    try:
        for i in range(300):
            obs, payload = make_obs(i + 1, model=f"model-{i}", x=np.zeros(1, np.float32))
            peer.send(obs, payload)
        replies = peer.replies(300)
    finally:
        peer.close()
    assert len(replies) == 300
    assert {r.status for r, _ in replies} == {pb.UNKNOWN_MODEL}
    assert set(server.status()["models"]) == {"noop", "echo", "failing"}


def test_model_errors_fail_only_their_own_request(shared_server):
    _, endpoint = shared_server
    with Connection(server=endpoint, client_id="errors") as conn:
        model = conn.model("failing")
        with pytest.raises(inferential.ModelError) as info:
            model.request(timeout_ms=5000, fail="yes")
        assert info.value.retryable and "failure requested" in str(info.value)
        assert model.request(timeout_ms=5000, fail="no").ok


def test_every_observation_gets_exactly_one_reply_under_overflow():
    with running_server(
        models={"slow": _sleep_model(5.0)},
        scheduling={"max_queue_size": 4, "overflow_policy": "reject_newest", "strategy": "fifo", "max_batch_size": 1},
    ) as (server, endpoint):
        peer = RawPeer(endpoint)
        try:
            for i in range(40):
                obs, payload = make_obs(i + 1, model="slow", x=np.zeros(1, np.float32))
                peer.send(obs, payload)
            replies = peer.replies(40, timeout_s=10)
            eventually(lambda: server.status_threadsafe()["pending"] == 0, what="every request answered")
            extra = peer.replies(1, timeout_s=0.3)
        finally:
            peer.close()
    ids = sorted(r.request_id for r, _ in replies)
    assert ids == list(range(1, 41)) and not extra  # one reply each, none twice
    statuses = {r.status for r, _ in replies}
    assert statuses == {pb.OK, pb.QUEUE_FULL}
    assert all(r.retryable for r, _ in replies if r.status == pb.QUEUE_FULL)


def test_two_connections_sharing_a_client_id_never_supersede_each_other():
    """Coalescing keys on the connection: each gets the reply to its own newest observation."""
    with running_server(
        models={"slow": _sleep_model(100.0)},
        scheduling={"strategy": "edf", "max_batch_size": 1, "admission": "off"},
    ) as (server, endpoint):
        first, second = RawPeer(endpoint), RawPeer(endpoint)
        try:
            first.send(*make_obs(1, model="slow", client="shared", x=np.zeros(1, np.float32)))
            eventually(lambda: server.status_threadsafe()["models"]["slow"]["in_flight"] == 1, what="1 running")
            first.send(*make_obs(2, model="slow", client="shared", x=np.zeros(1, np.float32)))
            second.send(*make_obs(3, model="slow", client="shared", x=np.zeros(1, np.float32)))
            mine = {r.request_id: r.status for r, _ in first.replies(2)}
            theirs = {r.request_id: r.status for r, _ in second.replies(1)}
        finally:
            first.close()
            second.close()
    assert mine == {1: pb.OK, 2: pb.OK} and theirs == {3: pb.OK}


def test_queue_full_replies_carry_a_retry_hint_once_the_model_is_measured():
    run_ms = 20.0
    with running_server(
        models={"slow": _sleep_model(run_ms)},
        # Admission off: with the default 50 ms budget these would be DEADLINE_UNMEETABLE (hinted alike).
        scheduling={
            "max_queue_size": 2,
            "overflow_policy": "reject_newest",
            "strategy": "fifo",
            "max_batch_size": 1,
            "admission": "off",
        },
    ) as (_, endpoint):
        peer = RawPeer(endpoint)
        try:
            peer.send(*make_obs(1, model="slow", x=np.zeros(1, np.float32)))
            ((first, _),) = peer.replies(1)  # the model's run time is measured now
            for i in range(2, 8):  # two queue (max_queue_size), the others are refused
                peer.send(*make_obs(i, model="slow", x=np.zeros(1, np.float32)))
            replies = [r for r, _ in peer.replies(6)]
        finally:
            peer.close()
    assert first.status == pb.OK and first.retry_after_ms == 0
    full = [r for r in replies if r.status == pb.QUEUE_FULL]
    assert len(full) >= 3 and {r.status for r in replies} == {pb.OK, pb.QUEUE_FULL}
    # At least the two queued batches must clear first (plus what is left of the running one).
    assert all(r.retry_after_ms >= 2 * run_ms for r in full), [r.retry_after_ms for r in full]
    assert all(r.retry_after_ms == 0 for r in replies if r.status == pb.OK)


def _sleep_model(ms: float):
    from inferential.models.testing import Sleep

    return Sleep(base_ms=ms)


def test_requests_past_their_ttl_are_answered_expired():
    with running_server(
        models={"slow": _sleep_model(80.0)},
        scheduling={"request_ttl_ms": 50, "strategy": "fifo", "max_batch_size": 1},
    ) as (_, endpoint):
        peer = RawPeer(endpoint)
        try:
            for i in range(3):
                obs, payload = make_obs(i + 1, model="slow", x=np.zeros(1, np.float32))
                peer.send(obs, payload)
            replies = {r.request_id: r for r, _ in peer.replies(3)}
        finally:
            peer.close()
    assert replies[1].status == pb.OK  # running when its TTL passed: it finishes
    for i in (2, 3):
        assert replies[i].status == pb.EXPIRED and "TTL" in replies[i].error
        assert replies[i].timing.total_ms < 80  # answered on the timer, not when the model freed up


@pytest.mark.parametrize("strategy", ["deadline_aware", "my_scheduler"])
def test_failed_batches_are_retried_then_answered_model_error(strategy, readme_custom_scheduler):
    """max_retries holds for a README-style custom scheduler too (the interface's requeue)."""
    from inferential.models.testing import Flaky

    sched = {"max_retries": 1, "strategy": strategy}
    with running_server(models={"flaky": Flaky(failures=1)}, scheduling=sched) as (_, endpoint):
        with Connection(server=endpoint, client_id="retry") as conn:
            assert conn.model("flaky").request(timeout_ms=5000, x=np.zeros(1, np.float32)).ok
    with running_server(models={"flaky": Flaky(failures=5)}, scheduling=sched) as (server, endpoint):
        with Connection(server=endpoint, client_id="retry") as conn:
            with pytest.raises(inferential.ModelError, match="failed on all 2 attempts"):
                conn.model("flaky").request(timeout_ms=5000, x=np.zeros(1, np.float32))
        assert server.metrics.counter("dispatch_retries") == 1


def test_shutdown_answers_queued_requests_and_finishes_running_ones():
    ctx = running_server(models={"slow": _sleep_model(300.0)}, scheduling={"strategy": "fifo", "max_batch_size": 1})
    server, endpoint = ctx.__enter__()
    peer = RawPeer(endpoint)
    try:
        for i in range(4):
            obs, payload = make_obs(i + 1, model="slow", x=np.zeros(1, np.float32))
            peer.send(obs, payload)
        # The first is running, three are queued.
        eventually(lambda: server.status_threadsafe()["pending"] == 4, what="four admitted")
        ctx.__exit__(None, None, None)
        replies = peer.replies(4, timeout_s=5)
    finally:
        peer.close()
    statuses = {r.request_id: r.status for r, _ in replies}
    assert statuses[1] == pb.OK
    assert [statuses[i] for i in (2, 3, 4)] == [pb.SHUTTING_DOWN] * 3


def test_auth_token_is_required_when_configured():
    with running_server(auth={"token": "s3cret"}) as (_, endpoint):
        with Connection(server=endpoint, client_id="no-token") as conn:
            with pytest.raises(inferential.Unauthenticated):
                conn.model("noop").request(timeout_ms=5000, x=np.zeros(1, np.float32))
        opts = inferential.ClientOptions(auth_token="s3cret")
        with Connection(server=endpoint, client_id="with-token", options=opts) as conn:
            assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(1, np.float32)).ok


def test_pinned_priority_and_known_client_budget_apply():
    with running_server(
        clients={"known": [{"id": "weld-1", "priority": 4, "pin_priority": True, "latency_budget_ms": 33.0}]},
    ) as (server, endpoint):
        seen = []
        original = server.scheduler.submit

        def spy(req):
            seen.append((req.priority, req.latency_budget_ms))
            return original(req)

        server.scheduler.submit = spy
        peer = RawPeer(endpoint)
        obs, payload = make_obs(1, client="weld-1", x=np.zeros(1, np.float32))
        obs.priority = 0  # asks for the highest priority; the config pins 4
        peer.send(obs, payload)
        assert peer.replies(1)[0][0].status == pb.OK
        peer.close()
    assert seen == [(4, 33.0)]


def test_a_disconnected_robot_is_unregistered_once(shared_server):
    server, endpoint = shared_server
    with Connection(server=endpoint, client_id="leaver") as conn:
        assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(1, np.float32)).ok
    assert "leaver" in server.registry.robots
    # A reply to a closed connection is undeliverable: the robot is unregistered.
    with running_server(models={"slow": _sleep_model(200.0)}) as (srv, ep):
        peer = RawPeer(ep)
        obs, payload = make_obs(1, model="slow", client="gone", x=np.zeros(1, np.float32))
        peer.send(obs, payload)
        eventually(lambda: "gone" in srv.registry.robots, what="the observation admitted")
        peer.close()
        eventually(lambda: "gone" not in srv.registry.robots, timeout_s=5, what="the robot unregistered")
        assert srv.metrics.counter("replies_undeliverable") == 1


def test_silent_robots_are_unregistered_after_the_timeout():
    with running_server(response_tracking={"disconnect_timeout_s": 0.3}) as (server, endpoint):
        with Connection(server=endpoint, client_id="quiet") as conn:
            assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(1, np.float32)).ok
            assert "quiet" in server.registry.robots
            eventually(lambda: "quiet" not in server.registry.robots, timeout_s=5, what="the silent robot unregistered")
            # and it comes back with its next observation
            assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(1, np.float32)).ok
            assert "quiet" in server.registry.robots


def test_use_scheduler_at_run_time_keeps_queued_work():
    # A budget the four 100 ms requests in a row fit in: results past their deadline are
    # withheld (DEADLINE_UNMEETABLE), and this test is about the hand-over, not deadlines.
    with running_server(
        models={"slow": _sleep_model(100.0)},
        scheduling={"strategy": "fifo", "max_batch_size": 1},
        clients={"defaults": {"latency_budget_ms": 5000}},
    ) as (server, endpoint):
        peer = RawPeer(endpoint)
        for i in range(4):
            obs, payload = make_obs(i + 1, model="slow", x=np.zeros(1, np.float32))
            peer.send(obs, payload)
        eventually(lambda: server.status_threadsafe()["pending"] == 4, what="four admitted")
        server.use_scheduler("deadline_aware", cadence_weight=50.0)
        replies = peer.replies(4, timeout_s=5)
        peer.close()
        assert server.config.scheduling.strategy == "deadline_aware"
    assert sorted(r.request_id for r, _ in replies) == [1, 2, 3, 4]
    assert {r.status for r, _ in replies} == {pb.OK}


def test_metrics_of_the_readme_are_recorded(shared_server):
    server, endpoint = shared_server
    with Connection(server=endpoint, client_id="metrics") as conn:
        for _ in range(5):
            conn.model("noop").request(timeout_ms=5000, x=np.zeros(1, np.float32))
    for name in [
        "inference_latency_ms",
        "scheduling_wait_ms",
        "e2e_latency_ms",
        "observation_staleness_ms",
        "payload_size_bytes",
        "queue_depth",
        "batch_size",
        "active_clients",
    ]:
        assert server.metrics.get_stats(name).count > 0, name
    # The server records a reply's metrics just after sending it: the fifth may trail the reply.
    eventually(
        lambda: server.metrics.get_stats("e2e_latency_ms", window_seconds=60, labels={"client": "metrics"}).count == 5,
        what="five end-to-end latencies",
    )
    assert server.metrics.counter("replies", {"status": "OK"}) >= 5


@pytest.mark.skipif(not PUBLISHED_PYTHON.exists(), reason="published 1.4.0 venv missing: run make setup")
def test_published_1_4_0_client_works_unchanged(shared_server):
    _, endpoint = shared_server
    script = textwrap.dedent(f"""
        import json, numpy as np
        from inferential import Connection
        conn = Connection(server={endpoint!r}, client_id="legacy-arm", client_type="sensor")
        echo = conn.model("echo", latency_budget_ms=30.0)
        readings = np.array([0.0, -0.78, 0.0, -2.35, 0.0, 1.57, 0.78], dtype=np.float32)
        echo.observe(urgency=0.8, sensor_readings=readings, prompt="classify anomaly")
        r = echo.get_result(timeout_ms=5000)
        noop = conn.model("noop")
        noop.observe(image=np.zeros((3, 224, 224), dtype=np.uint8))
        a = noop.get_result(timeout_ms=5000)
        bad = conn.model("missing")
        bad.observe(x=np.zeros(2, dtype=np.float32))
        e = bad.get_result(timeout_ms=5000)
        print(json.dumps({{
            "readings": r["sensor_readings"].tolist(), "prompt": r["prompt"],
            "actions": a["actions"].tolist(), "error_status": e.get("status"), "error": e.get("error"),
        }}))
        conn.close()
    """)
    out = subprocess.run([str(PUBLISHED_PYTHON), "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["readings"] == pytest.approx([0.0, -0.78, 0.0, -2.35, 0.0, 1.57, 0.78])
    assert data["prompt"] == "classify anomaly"
    assert data["actions"] == [0.0] * 7
    assert data["error_status"] == "UNKNOWN_MODEL" and "missing" in data["error"]


def test_a_model_runs_batches_concurrently_up_to_its_configured_concurrency():
    models = [
        {
            "name": "slow",
            "target": "inferential.models.testing:Sleep",
            "options": {"base_ms": 300.0},
            "concurrency": 2,
            "max_batch_size": 1,
        }
    ]
    with running_server(model_configs=models) as (server, endpoint):
        peer = RawPeer(endpoint)
        try:
            for i in range(4):
                obs, payload = make_obs(i + 1, model="slow", client=f"robot-{i}", x=np.zeros(1, np.float32))
                peer.send(obs, payload)
            # Two batches at once; the event loop stays free meanwhile (status is computed on it).
            eventually(
                lambda: server.status_threadsafe()["models"]["slow"]["in_flight"] == 2, what="two batches running"
            )
            replies = peer.replies(4, timeout_s=5)
        finally:
            peer.close()
    assert {r.status for r, _ in replies} == {pb.OK}


def test_a_robot_that_never_reads_does_not_stall_the_others():
    # Coalescing off: under edf's default a queued echo of the greedy robot would be
    # SUPERSEDED by its next one, and small SUPERSEDED replies never fill its send queue.
    with running_server(transport={"send_hwm": 4}, scheduling={"coalesce": False}) as (server, endpoint):
        ctx = zmq.Context()
        greedy = ctx.socket(zmq.DEALER)
        greedy.setsockopt(zmq.RCVHWM, 1)
        greedy.setsockopt(zmq.RCVBUF, 4096)
        greedy.setsockopt(zmq.LINGER, 0)
        greedy.connect(endpoint)
        big = np.zeros(256 * 1024, np.uint8)
        try:
            for i in range(120):  # ~30 MB of echoed replies it will never read
                obs, payload = make_obs(i + 1, model="echo", client="greedy", x=big)
                greedy.send_multipart([b"", obs.SerializeToString(), *payload])
            with Connection(server=endpoint, client_id="polite") as conn:
                for _ in range(20):
                    assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(1, np.float32)).ok
            eventually(lambda: server.metrics.counter("replies", {"model": "echo"}) >= 120, what="120 echo replies")
        finally:
            greedy.close()
            ctx.term()
    assert server.metrics.counter("replies", {"model": "echo"}) == 120
    assert server.metrics.counter("replies_undeliverable", {"reason": "peer is not reading (send queue full)"}) > 0


def test_observations_that_waited_past_their_ttl_are_answered_at_once_whatever_the_robot_clock():
    import threading

    with running_server(scheduling={"request_ttl_ms": 1000}) as (server, endpoint):
        peer = RawPeer(endpoint)
        skew = -60_000_000_000  # this robot's clock is a minute behind the server's
        try:
            fresh, payload = make_obs(1, client="skewed", x=np.zeros(1, np.float32))
            fresh.timestamp_ns = time.time_ns() + skew
            peer.send(fresh, payload)
            assert peer.replies(1)[0][0].status == pb.OK  # skew alone is not age
            # A real backlog: the server's loop is held for 1.5 s while the next one waits
            # in the socket. Its timestamp says so, and the transport measured it.
            blocker = threading.Thread(target=server._call_in_loop, args=(time.sleep, 1.5))
            blocker.start()
            time.sleep(0.1)
            stale, payload = make_obs(2, client="skewed", x=np.zeros(1, np.float32))
            stale.timestamp_ns = time.time_ns() + skew
            peer.send(stale, payload)
            reply = peer.replies(1)[0][0]
            blocker.join()
        finally:
            peer.close()
    assert reply.status == pb.EXPIRED and "before the server could read it" in reply.error and reply.retryable


def test_buffer_wait_follows_the_quickest_transit_and_clock_steps():
    from inferential.server.registry import BufferWait

    w = BufferWait()
    ms = 1_000_000
    assert w.waited_ns(1000 * ms, 990 * ms) == 0  # baseline: 10 ms offset + transit
    assert w.waited_ns(1100 * ms, 1088 * ms) == 2 * ms
    assert w.waited_ns(1200 * ms, 1195 * ms) == 0  # a quicker transit lowers the baseline
    assert w.waited_ns(1300 * ms, 1270 * ms) == 25 * ms
    later = 1300 * ms + 2 * BufferWait.WINDOW_NS + ms  # the robot's clock stepped back 1 s
    w.waited_ns(later, later - 1005 * ms)
    assert w.waited_ns(later + 1 * ms + BufferWait.WINDOW_NS, later + 1 * ms + BufferWait.WINDOW_NS - 1005 * ms) == 0


def test_a_custom_scheduler_that_holds_requests_back_does_not_stall_the_server():
    from inferential.scheduler.base import Scheduler, register_scheduler

    @register_scheduler("pairs_only")
    class PairsOnly(Scheduler):
        """Releases requests two at a time: a lone request waits for a partner."""

        def __init__(self, config):
            self._queue = []

        def submit(self, request):
            self._queue.append(request)

        def next_batch(self):
            if len(self._queue) < 2:
                return []
            batch, self._queue = self._queue[:2], self._queue[2:]
            return batch

        def tick(self):
            pass

        def status(self):
            return {"queue_len": len(self._queue)}

        def queue_len(self):
            return len(self._queue)

    with running_server(scheduling={"strategy": "pairs_only", "request_ttl_ms": 300}) as (server, endpoint):
        peer = RawPeer(endpoint)
        try:
            obs, payload = make_obs(1, x=np.zeros(1, np.float32))
            peer.send(obs, payload)
            assert peer.replies(1, timeout_s=0.1) == []  # held back, and the loop is still free:
            assert server.loop_alive()
            obs, payload = make_obs(2, x=np.zeros(1, np.float32))
            peer.send(obs, payload)
            replies = {r.request_id: r.status for r, _ in peer.replies(2)}
            obs, payload = make_obs(3, x=np.zeros(1, np.float32))
            peer.send(obs, payload)  # alone forever: the server's own TTL answers it
            late = peer.replies(1, timeout_s=3)
        finally:
            peer.close()
    # Request 1 was held past its 50 ms default budget: its result is withheld (a late
    # action is worse than none, scheduling.late_results); request 2 ran at once.
    assert replies == {1: pb.DEADLINE_UNMEETABLE, 2: pb.OK}
    assert late[0][0].request_id == 3 and late[0][0].status == pb.EXPIRED


def test_a_custom_scheduler_refusing_a_request_gets_it_answered():
    """QueueFullError from submit is QUEUE_FULL; any other exception is the scheduler's bug,
    answered INVALID_REQUEST: either way the robot gets its one reply."""
    from inferential.scheduler import QueueFullError, Scheduler, register_scheduler

    @register_scheduler("refuses")
    class Refuses(Scheduler):
        def __init__(self, config):
            pass

        def submit(self, request):
            if request.request_id == 1:
                raise QueueFullError(request, "no room")
            raise RuntimeError("bug")

        def next_batch(self):
            return []

        def tick(self):
            pass

        def status(self):
            return {}

        def queue_len(self):
            return 0

    with running_server(scheduling={"strategy": "refuses"}) as (server, endpoint):
        peer = RawPeer(endpoint)
        try:
            peer.send(*make_obs(1, x=np.zeros(1, np.float32)))
            peer.send(*make_obs(2, x=np.zeros(1, np.float32)))
            replies = {r.request_id: (r.status, r.error) for r, _ in peer.replies(2)}
        finally:
            peer.close()
        assert server.status_threadsafe()["pending"] == 0
    assert replies[1][0] == pb.QUEUE_FULL and "no room" in replies[1][1]
    assert replies[2] == (pb.INVALID_REQUEST, "RuntimeError: bug")


def test_a_burst_to_an_inline_model_gets_exactly_one_reply_each():
    """Batches of a model that runs in microseconds complete synchronously on the loop
    (no trip through it per batch); a burst of thousands from several robots is still
    answered exactly once per observation, and nothing is left pending."""
    with running_server(scheduling={"max_queue_size": 10_000, "per_client_queue_cap": None}) as (server, endpoint):
        peers = [RawPeer(endpoint) for _ in range(4)]
        try:
            warm = peers[0]
            for i in range(200):  # long enough for the no-op model to be measured and moved inline
                warm.send(*make_obs(i + 1, client="warm"))
                assert len(warm.replies(1)) == 1
            assert server.backend.health().models["noop"].details["inline"]
            per_peer = 1500
            for p, peer in enumerate(peers):
                for i in range(per_peer):
                    peer.send(*make_obs(10_000 + i, client=f"burst-{p}"))
            for peer in peers:
                replies = peer.replies(per_peer, timeout_s=30)
                assert sorted(r.request_id for r, _ in replies) == list(range(10_000, 10_000 + per_peer))
                # SUPERSEDED: the default strategy (edf) coalesces a robot's queued observations.
                assert {r.status for r, _ in replies} <= {pb.OK, pb.DEADLINE_UNMEETABLE, pb.EXPIRED, pb.SUPERSEDED}
                assert sum(r.status == pb.OK for r, _ in replies) > 0
                assert peer.replies(1, timeout_s=0.3) == []  # and nothing twice
            assert server.status_threadsafe()["pending"] == 0
        finally:
            for peer in peers:
                peer.close()
