"""Issue 14: what a hostile peer or an unlucky robot can do to the others, against the real server.

Each test reproduces one failure on loopback in seconds and states the figure the fix
must reach (for most: no good request fails).
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from typing import Any, Iterator, Optional

import numpy as np
import pytest
import zmq
from server_helpers import eventually, running_server

from inferential._proto import inferential_pb2 as pb
from inferential.wire import pack_tensors

MS = 1_000_000


class Peer:
    """A hand-driven DEALER sending exactly the observations a test wants (a robot or an attacker)."""

    def __init__(
        self, endpoint: str, routing_id: Optional[bytes] = None, curve: Optional[tuple[str, str, str]] = None
    ) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if curve is not None:  # (server public key, own public key, own secret key)
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0].encode())
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1].encode())
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2].encode())
        self.sock.connect(endpoint)
        self.next_id = 0

    def send(self, client: str, model: str = "noop", timestamp_ns: Optional[int] = None, **hints: Any) -> int:
        self.next_id += 1
        obs = pb.Observation(model_id=model, request_id=self.next_id, protocol_version=2, **hints)
        obs.client.id = client
        obs.timestamp_ns = time.time_ns() if timestamp_ns is None else timestamp_ns
        payload = pack_tensors([("x", np.zeros(1, np.float32))], obs.tensors.add)
        self.sock.send_multipart([b"", obs.SerializeToString(), *payload])
        return self.next_id

    def replies(self, timeout_s: float = 0.0) -> list[pb.ModelResponse]:
        out = []
        end = time.monotonic() + timeout_s
        while True:
            wait_ms = max(0, int((end - time.monotonic()) * 1000))
            if not self.sock.poll(wait_ms):
                return out
            frames = self.sock.recv_multipart()
            out.append(pb.ModelResponse.FromString(frames[1]))
            end = time.monotonic()  # then only what is already there

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def _robot_run(peer: Peer, client: str, count: int, period_s: float, stamp=None, between=None, **hints: Any) -> dict:
    """Send ``count`` observations at ``period_s``; every reply by request id."""
    got: dict[int, pb.ModelResponse] = {}
    for i in range(count):
        peer.send(client, timestamp_ns=stamp(i) if stamp else None, **hints)
        if between:
            between(i)
        for r in peer.replies(period_s):
            got[r.request_id] = r
    end = time.monotonic() + 5
    while len(got) < count and time.monotonic() < end:
        for r in peer.replies(0.05):
            got[r.request_id] = r
    return got


def _failures(got: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in got.values():
        if r.status != pb.OK:
            name = pb.Status.Name(r.status)
            out[name] = out.get(name, 0) + 1
    return out


# --- identity and time ----------------------------------------------------------

# No coalescing: a loaded machine's stall can let a robot's newer observation supersede the one
# before it, which is not what these tests are about.
STRICT = {"admission": "reject", "request_ttl_ms": 1000, "coalesce": False}


def test_spoofed_future_timestamps_on_another_connection_do_not_touch_the_victim():
    with running_server(scheduling=STRICT) as (_, endpoint):
        victim, spoofer = Peer(endpoint), Peer(endpoint)
        try:

            def attack(i: int) -> None:
                if i % 10 == 0:  # the victim's id, a timestamp 10 s in the future
                    spoofer.send("victim", timestamp_ns=time.time_ns() + 10_000 * MS)
                    spoofer.replies(0.0)

            got = _robot_run(victim, "victim", 60, 0.02, between=attack, latency_budget_ms=50.0)
        finally:
            victim.close()
            spoofer.close()
    assert len(got) == 60 and _failures(got) == {}


def test_honest_clock_steps_of_one_second_cost_no_request():
    with running_server(scheduling=STRICT) as (_, endpoint):
        robot = Peer(endpoint)
        # The robot's clock steps back 1 s at the 20th observation and forward 1 s at the 50th.
        steps = {range(0, 20): 0, range(20, 50): -1000 * MS, range(50, 80): 0}

        def stamp(i: int) -> int:
            return time.time_ns() + next(v for r, v in steps.items() if i in r)

        try:
            # 150 ms: far under the 1 s step, with room for a loaded test machine's stalls.
            got = _robot_run(robot, "stepper", 80, 0.02, stamp=stamp, latency_budget_ms=150.0)
        finally:
            robot.close()
    assert len(got) == 80 and _failures(got) == {}


def test_stamping_with_jittering_sensor_read_times_costs_no_request():
    rng = random.Random(14)
    with running_server(scheduling=STRICT) as (_, endpoint):
        robot = Peer(endpoint)
        try:  # sensor age 0-200 ms, budget 100 ms: the age is not time spent waiting for the server
            got = _robot_run(
                robot,
                "sensor",
                60,
                0.02,
                stamp=lambda i: time.time_ns() - rng.randint(0, 200) * MS,
                latency_budget_ms=100.0,
            )
        finally:
            robot.close()
    assert len(got) == 60 and _failures(got) == {}


def _sleep_model(ms: float):
    from inferential.models.testing import Sleep

    return Sleep(base_ms=ms)


def test_a_spoofer_sharing_the_victims_id_on_another_connection_cannot_fill_its_queue_share():
    with running_server(
        models={"slow": _sleep_model(20.0)},
        scheduling={"max_batch_size": 1, "per_client_queue_cap": 2, "admission": "off", "coalesce": False},
    ) as (_, endpoint):
        victim, spoofer = Peer(endpoint), Peer(endpoint)
        try:

            def flood(i: int) -> None:
                for _ in range(5):
                    spoofer.send("victim", model="slow")
                spoofer.replies(0.0)

            got = {}
            for i in range(20):
                flood(i)
                rid = victim.send("victim", model="slow")
                end = time.monotonic() + 5
                while rid not in got and time.monotonic() < end:
                    for r in victim.replies(0.05):
                        got[r.request_id] = r
        finally:
            victim.close()
            spoofer.close()
    assert len(got) == 20 and _failures(got) == {}


# --- faults that must end -------------------------------------------------------

import threading  # noqa: E402

RELEASE = threading.Event()


def hang(batch):
    """A model whose batches never return until the test releases them (a hung driver)."""
    RELEASE.wait(60)
    return [{"y": np.zeros(1, np.float32)} for _ in batch]


def test_a_hung_model_is_answered_model_error_written_off_and_reported_not_ready():
    from inferential.server.status import readiness

    RELEASE.clear()
    model = {"name": "hang", "target": "test_hostile:hang", "timeout_s": 0.5, "concurrency": 1}
    try:
        with running_server(model_configs=[model], scheduling={"admission": "off"}) as (server, endpoint):
            peer = Peer(endpoint)
            try:
                start = time.monotonic()
                peer.send("r1", model="hang")
                replies = peer.replies(5.0)
                took = time.monotonic() - start
                assert len(replies) == 1, (replies, took, server.status_threadsafe())
                (reply,) = replies
                health = server.status_threadsafe()["backend"]["models"]["hang"]
                ready, why = readiness(server)
            finally:
                peer.close()
            assert reply.status == pb.MODEL_ERROR and "0.5 s" in reply.error
            assert 0.4 < took < 2.0
            assert health["details"]["timeouts"] == 1 and health["details"]["hung"] == 1 and not health["healthy"]
            assert not ready and "hang" in why
            assert server.metrics.counter("dispatch_errors", {"model": "hang"}) >= 1
            RELEASE.set()  # the driver comes back: the slot is returned
            eventually(lambda: server.status_threadsafe()["backend"]["models"]["hang"]["details"]["hung"] == 0)
            assert readiness(server)[0]
    finally:
        RELEASE.set()


def test_sigterm_with_a_hung_model_exits_within_a_bound(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "hang.yaml"
    config.write_text(
        f"transport: {{bind: 'tcp://127.0.0.1:{port}'}}\n"
        "metrics: {http_port: 0}\n"
        "models: [{name: hang, target: 'test_hostile:hang', timeout_s: 0.5}]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferential.cli", "serve", "--config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # a cold start on a loaded machine can take seconds
            if "serving models" in line:
                break
        peer = Peer(f"tcp://127.0.0.1:{port}")
        try:
            peer.send("r1", model="hang")
            (reply,) = peer.replies(10.0)
        finally:
            peer.close()
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert reply.status == pb.MODEL_ERROR
    assert took < 8.0, f"SIGTERM to exit took {took:.1f} s"
    print(f"SIGTERM to exit with a hung model: {took:.2f} s")


def big(inputs):
    """A model whose output is over a 1 MiB message limit."""
    return {"y": np.zeros(300_000, np.float32)}


def deep(inputs):
    """A model whose output has more dimensions than the protocol allows."""
    return {"y": np.zeros((1,) * 9, np.float32)}


def test_a_reply_over_the_protocol_limits_is_answered_model_error_and_the_client_lives_on():
    from inferential import ClientOptions, Connection
    from inferential.errors import ModelError
    from inferential.wire import Limits

    limit = 1024 * 1024
    with running_server(
        models={"big": big, "deep": deep, "noop": "inferential.models.testing:NoOp"},
        transport={"max_message_bytes": limit},
    ) as (_, endpoint):
        options = ClientOptions(limits=Limits(max_message_bytes=limit))
        with Connection(endpoint, client_id="r1", options=options) as conn:
            x = np.zeros(1, np.float32)
            errors = {}
            for name in ("big", "deep"):
                try:
                    conn.model(name).request(timeout_ms=5000, x=x)
                except ModelError as err:
                    errors[name] = str(err)
            after = conn.model("noop").request(timeout_ms=5000, x=x)
    assert "exceeds the 1048576-byte limit" in errors["big"]
    assert "dimensions" in errors["deep"]
    assert after.ok


def odd(inputs):
    """Outputs the native encoder hands to the Python one (not C-contiguous, another byte
    order): each must reach the robot as it is."""
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    return {"fortran": np.asfortranarray(grid), "strided": grid[:, 1], "big_endian": np.arange(4, dtype=">f8")}


def plain(inputs):
    """Outputs the native encoder takes as they are, the unusual ones among them (a masked
    array is its data by then: the backend takes every output through np.asarray)."""
    frozen = np.arange(5, dtype=np.int32)
    frozen.setflags(write=False)
    return {
        "read_only": frozen,
        "scalar": np.array(2.5, dtype=np.float64),
        "empty": np.zeros((0, 3)),
        "masked": np.ma.masked_array([1.0, 2.0], mask=[False, True]),
        "note": "ok",
    }


def bad_key(inputs):
    """A model whose output dict has a key that is not a string."""
    return {7: np.zeros(1, np.float32)}


def test_outputs_in_any_layout_reach_the_robot_and_a_bad_key_is_a_model_error():
    from inferential import Connection
    from inferential.errors import ModelError

    models = {"odd": odd, "plain": plain, "bad_key": bad_key, "noop": "inferential.models.testing:NoOp"}
    with running_server(models=models) as (_, ep):
        with Connection(ep, client_id="r1") as conn:
            x = np.zeros(1, np.float32)
            got = conn.model("odd").request(timeout_ms=5000, x=x)
            simple = conn.model("plain").request(timeout_ms=5000, x=x)
            with pytest.raises(ModelError, match="not a string"):
                conn.model("bad_key").request(timeout_ms=5000, x=x)
            after = conn.model("noop").request(timeout_ms=5000, x=x)
    grid = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(got["fortran"], grid)
    np.testing.assert_array_equal(got["strided"], grid[:, 1])
    np.testing.assert_array_equal(got["big_endian"], np.arange(4, dtype=np.float64))
    np.testing.assert_array_equal(simple["masked"], [1.0, 2.0])  # the data; a mask does not travel
    np.testing.assert_array_equal(simple["read_only"], np.arange(5, dtype=np.int32))
    assert simple["scalar"].shape == () and float(simple["scalar"]) == 2.5
    assert simple["empty"].shape == (0, 3)
    assert simple.metadata["note"] == "ok"
    assert after.ok


def test_an_oversized_message_with_a_readable_envelope_is_answered_with_its_request_id():
    limit = 1024 * 1024
    with running_server(transport={"max_message_bytes": limit}) as (_, endpoint):
        peer = Peer(endpoint)
        try:
            obs = pb.Observation(model_id="noop", request_id=4242, protocol_version=2)
            obs.client.id = "r1"
            half = np.zeros(limit // 2 // 4 + 16, np.float32)  # each frame under the limit, the sum over it
            payload = pack_tensors([("a", half), ("b", half)], obs.tensors.add)
            peer.sock.send_multipart([b"", obs.SerializeToString(), *payload])
            (reply,) = peer.replies(5.0)
        finally:
            peer.close()
    assert reply.status == pb.INVALID_REQUEST and "exceeds" in reply.error
    assert reply.request_id == 4242 and reply.client.id == "r1"


# --- bounded state --------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _spray(peer: Peer, start: int, count: int) -> None:
    """``count`` observations under fresh client ids, half to fresh unknown model ids; every reply read."""
    for i in range(start, start + count):
        peer.send(f"robot-{i}", model="noop" if i % 2 else f"no-such-model-{i}")
        if i % 200 == 199:
            got = 0
            end = time.monotonic() + 30
            while got < 200 and time.monotonic() < end:
                got += len(peer.replies(5.0))
            assert got == 200, f"{got} of 200 replies to observations {i - 199}-{i}"


def test_distinct_client_and_model_ids_leave_metrics_and_state_flat():
    from inferential.metrics.prometheus import PrometheusExporter

    with running_server(metrics={"max_robot_series": 100}, clients={"max_tracked": 1000}) as (server, endpoint):
        exporter = PrometheusExporter(server)
        peer = Peer(endpoint)
        try:
            _spray(peer, 0, 2000)
            first = len(exporter.render())
            rss_first = _rss_kib()
            _spray(peer, 2000, 20000)
            second = len(exporter.render())
            rss_second = _rss_kib()
            robots = len(server.registry.robots)
        finally:
            peer.close()
    print(f"/metrics after 2k ids: {first} B, after 22k: {second} B; RSS {rss_first} -> {rss_second} KiB")
    assert second <= first * 1.05, (first, second)
    assert robots <= 1000


# --- connections ----------------------------------------------------------------


def test_1100_idle_connections_against_a_1024_descriptor_limit_lock_out_no_one(tmp_path):
    import re
    import resource
    import socket
    import subprocess
    import sys
    import urllib.request

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        import pytest

        pytest.skip(f"the hard descriptor limit ({hard}) leaves no room for 1,100 connections on both sides")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test holds 1,100 sockets itself
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "fd.yaml"
    config.write_text(
        f"transport: {{bind: 'tcp://127.0.0.1:{port}'}}\n"
        "metrics: {http_port: 0}\n"
        "models: [{name: noop, target: 'inferential.models.testing:NoOp'}]\n"
    )

    def low_limit() -> None:  # what a default systemd or shell session gives a process
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))

    proc = subprocess.Popen(
        [sys.executable, "-m", "inferential.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=low_limit,
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        http_url = ""
        for line in proc.stdout:
            m = re.search(r"metrics and health on (http://\S+)/metrics", line)
            if m:
                http_url = m.group(1)
            if "serving models" in line:
                break
        for _ in range(1100):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(0.5)
        start = time.monotonic()
        with urllib.request.urlopen(f"{http_url}/healthz", timeout=5) as resp:
            healthy = resp.status
        healthz_ms = (time.monotonic() - start) * 1000
        peer = Peer(f"tcp://127.0.0.1:{port}")
        try:
            peer.send("newcomer")
            replies = peer.replies(5.0)
        finally:
            peer.close()
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"with 1,100 idle connections: /healthz {healthy} in {healthz_ms:.0f} ms, new robot replies {len(replies)}")
    assert healthy == 200 and len(replies) == 1 and replies[0].status == pb.OK


def test_a_connection_that_never_completes_the_handshake_is_closed():
    import socket

    with running_server(transport={"handshake_timeout_ms": 300}) as (_, endpoint):
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(5.0)
            start = time.monotonic()
            while s.recv(4096):  # libzmq's greeting, then nothing: we never answer it
                pass
            closed_after = time.monotonic() - start
    assert 0.2 < closed_after < 3.0


def test_a_flooding_connection_is_rate_limited_and_the_good_robot_is_untouched():
    with running_server(
        models={"slow": _sleep_model(2.0)},
        transport={"rate_limit_per_s": 50, "rate_limit_burst": 10},
        scheduling={"max_queue_size": 50, "coalesce": False},
    ) as (server, endpoint):
        good, flood = Peer(endpoint), Peer(endpoint)
        statuses: dict[int, int] = {}
        try:

            def burst(i: int) -> None:
                for _ in range(50):
                    flood.send(f"flood-{i}", model="slow")  # invented ids: still one connection
                for r in flood.replies(0.0):
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                time.sleep(0.05)  # the good robot's pace: under 20 Hz

            # A generous budget: on a loaded test machine 50 ms can be missed without any flood.
            got = _robot_run(good, "good", 40, 0.0, between=burst, model="slow", latency_budget_ms=1000.0)
            for r in flood.replies(2.0):
                statuses[r.status] = statuses.get(r.status, 0) + 1
        finally:
            good.close()
            flood.close()
        refused = server.metrics.counter("observation_errors", {"status": "RATE_LIMITED"})
        dropped = server.metrics.counter("observation_errors", {"status": "RATE_LIMITED_DROPPED"})
    assert len(got) == 40 and _failures(got) == {}, {r.error for r in got.values() if r.status != pb.OK}
    # Refused with a reply up to a burst's worth of debt, then dropped unread (a flood); the
    # rest admitted and answered (OK, or SUPERSEDED where coalescing replaced them).
    assert refused == statuses.get(pb.QUEUE_FULL, 0) >= 10 and dropped > 1000
    assert dropped + sum(statuses.values()) == 40 * 50, (dropped, statuses)


# --- CURVE ----------------------------------------------------------------------


def test_with_curve_a_robot_can_only_speak_as_itself_and_keys_reload():
    from inferential import ClientOptions, Connection
    from inferential.config import InferentialConfig
    from inferential.errors import RequestFailed, RequestTimeout, ServerUnavailable

    server_public, server_secret = (k.decode() for k in zmq.curve_keypair())
    keys = {name: tuple(k.decode() for k in zmq.curve_keypair()) for name in ("arm-a", "arm-b", "arm-c")}
    known = [{"id": n, "curve_public_key": keys[n][0]} for n in ("arm-a", "arm-b")]

    def options(name: str) -> ClientOptions:
        public, secret = keys[name]
        return ClientOptions(curve_server_key=server_public, curve_public_key=public, curve_secret_key=secret)

    x = np.zeros(1, np.float32)
    with running_server(auth={"curve_secret_key": server_secret}, clients={"known": known}) as (server, endpoint):
        with Connection(endpoint, client_id="arm-a", options=options("arm-a")) as a:
            assert a.model("noop").request(timeout_ms=5000, x=x).ok
        # arm-b's key, arm-a's id: refused by name, whatever its timestamps say.
        with Connection(endpoint, client_id="arm-a", options=options("arm-b")) as impostor:
            with pytest.raises(RequestFailed) as refused:
                impostor.model("noop").request(timeout_ms=5000, x=x)
        assert refused.value.status_name == "UNAUTHENTICATED" and "arm-b" in str(refused.value)
        # No key at all, or a key not in the list: the handshake fails, nothing is read.
        for opts in (ClientOptions(send_timeout_ms=300), options("arm-c")):
            with Connection(endpoint, client_id="arm-c", options=opts) as stranger:
                with pytest.raises((ServerUnavailable, RequestTimeout)):
                    stranger.model("noop").request(timeout_ms=500, x=x)
        # Hot reload: arm-c's key is added.
        config = InferentialConfig.model_validate(
            {
                "auth": {"curve_secret_key": server_secret},
                "clients": {"known": known + [{"id": "arm-c", "curve_public_key": keys["arm-c"][0]}]},
            }
        )
        server.reconfigure(config)
        with Connection(endpoint, client_id="arm-c", options=options("arm-c")) as c:
            assert c.model("noop").request(timeout_ms=5000, x=x).ok


def test_with_curve_a_timestamp_spoofer_with_its_own_key_causes_the_victim_no_failure():
    """The issue's goal: 0 spoofed-timestamp victim failures with CURVE on. The attacker holds
    a key of its own (a listed robot gone rogue), speaks under the victim's id and stamps its
    observations 10 s in the future, on the victim's schedule."""
    server_public, server_secret = (k.decode() for k in zmq.curve_keypair())
    keys = {name: tuple(k.decode() for k in zmq.curve_keypair()) for name in ("victim", "attacker")}
    known = [{"id": name, "curve_public_key": keys[name][0]} for name in keys]
    sections = {"auth": {"curve_secret_key": server_secret}, "clients": {"known": known}, "scheduling": STRICT}
    with running_server(**sections) as (_, endpoint):
        victim = Peer(endpoint, curve=(server_public, *keys["victim"]))
        attacker = Peer(endpoint, curve=(server_public, *keys["attacker"]))
        attacks: list[pb.ModelResponse] = []
        try:

            def attack(i: int) -> None:
                if i % 5 == 0:
                    attacker.send("victim", timestamp_ns=time.time_ns() + 10_000 * MS, latency_budget_ms=200.0)
                    attacks.extend(attacker.replies(0.0))

            # 200 ms budgets: the spoof (10 s) would fail every one if it reached the victim's state.
            got = _robot_run(victim, "victim", 100, 0.02, between=attack, latency_budget_ms=200.0)
            attacks.extend(attacker.replies(1.0))
        finally:
            victim.close()
            attacker.close()
    failures = _failures(got)
    print(f"CURVE on: victim {len(got)} answered, failures {failures}; attacker {len(attacks)} answered "
          f"{sorted({pb.Status.Name(r.status) for r in attacks})}")  # fmt: skip
    assert len(got) == 100 and failures == {}
    assert len(attacks) == 20 and all(r.status == pb.UNAUTHENTICATED for r in attacks)
    assert all("'attacker', not 'victim'" in r.error for r in attacks)


def test_keys_generate_prints_a_yaml_key_pair():
    import subprocess
    import sys

    import yaml

    out = subprocess.run(
        [sys.executable, "-m", "inferential.cli", "keys", "generate"], capture_output=True, text=True, check=True
    ).stdout
    pair = yaml.safe_load(out)
    assert zmq.curve_public(pair["secret_key"].encode()).decode() == pair["public_key"]


def test_binding_beyond_loopback_without_auth_warns_at_start(caplog):
    with caplog.at_level("WARNING", logger="inferential.server"):
        with running_server(transport={"bind": "tcp://0.0.0.0:0"}):
            pass
        exposed = [r.getMessage() for r in caplog.records if "without authentication" in r.getMessage()]
        caplog.clear()
        with running_server():  # loopback
            pass
        quiet = [r.getMessage() for r in caplog.records if "without authentication" in r.getMessage()]
    assert len(exposed) == 1 and "0.0.0.0" in exposed[0] and not quiet


# --- two connections, one routing identity (1.x robots use their client id) -----------


def _connection_counts(server) -> Any:
    """The transport's tally of connection events (connections.ConnectionWatch)."""
    return server._transport.connections.counts


def _ended(sock: zmq.Socket, monitor: zmq.Socket, timeout_s: float) -> bool:
    """Whether the DEALER's monitor reports its connection ended within ``timeout_s``."""
    from zmq.utils.monitor import recv_monitor_message

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if monitor.poll(50) and recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
            return True
    return False


@pytest.mark.parametrize("policy", ["handover", "reject"])
def test_the_two_connections_one_identity_policy_is_explicit_counted_and_seen_by_both(policy, caplog):
    transport = {"duplicate_identity": policy}
    with caplog.at_level("INFO", logger="inferential.transport"):
        with running_server(transport=transport) as (server, endpoint):
            first = Peer(endpoint, routing_id=b"arm-1")
            monitor = first.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            try:
                first.send("arm-1")
                assert [r.status for r in first.replies(5.0)] == [pb.OK]
                second = Peer(endpoint, routing_id=b"arm-1")  # the same identity, a new connection
                try:
                    time.sleep(0.3)
                    second.send("arm-1")
                    got_second = second.replies(1.0)
                    # Handover: it ends at once (10 s: a loaded machine's bound); reject: never.
                    first_cut = _ended(first.sock, monitor, 10.0 if policy == "handover" else 2.0)
                    first.send("arm-1")
                    got_first = first.replies(2.0)
                    counts = dict(_connection_counts(server))
                finally:
                    second.close()
            finally:
                monitor.close()
                first.close()
    lines = [r.getMessage() for r in caplog.records if "arm-1" in r.getMessage()]
    if policy == "handover":
        # The newcomer takes the identity over; the first sees its connection end (and
        # reconnects) instead of sending into one libzmq no longer reads; counted and logged.
        assert [r.request_id for r in got_second] == [1]
        assert first_cut and counts.get("identity_handover", 0) >= 1
        assert any("handover" in line and "closed" in line for line in lines), lines
    else:
        # The newcomer waits, unread, while the first keeps its connection and its replies.
        assert got_second == [] and not first_cut and [r.request_id for r in got_first] == [2]
        assert counts.get("identity_handover", 0) == 0


def test_with_reject_a_newcomer_under_a_taken_identity_is_never_read_and_a_later_reconnect_is_counted():
    """What libzmq 4.3 does with ROUTER_HANDOVER off, measured: the newcomer's connection is
    parked unread for as long as it stays open, even after the first connection has gone.
    A robot that reconnects (a new connection) once the first has gone is served, and the
    server counts the identity's move to a new connection."""
    with running_server(transport={"duplicate_identity": "reject"}) as (server, endpoint):
        first = Peer(endpoint, routing_id=b"arm-2")
        first.send("arm-2")
        assert [r.status for r in first.replies(5.0)] == [pb.OK]
        second = Peer(endpoint, routing_id=b"arm-2")  # connected once the first holds the identity
        try:
            time.sleep(0.3)
            second.send("arm-2")
            parked = second.replies(0.5)
            first.close()
            time.sleep(0.3)
            second.send("arm-2")
            still_parked = second.replies(1.0)
        finally:
            second.close()
        third = Peer(endpoint, routing_id=b"arm-2")  # the robot reconnects
        try:
            third.send("arm-2")
            got = third.replies(5.0)
            moved = eventually(lambda: _connection_counts(server).get("identity_moved", 0))
            handovers = _connection_counts(server).get("identity_handover", 0)
        finally:
            third.close()
    assert parked == [] and still_parked == []
    assert [(r.request_id, r.status) for r in got] == [(1, pb.OK)] and moved == 1 and handovers == 0


class _SrcFdFrame:
    """A received frame as the connection watch reads it: only its source descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def get(self, option: int) -> int:
        assert option == zmq.SRCFD
        return self.fd


@contextlib.contextmanager
def _unstarted_watch() -> Iterator[tuple[Any, list[str], socket.socket]]:
    """A connection watch whose thread never runs (the test plays the monitor events), the
    events it counts, and a plain TCP listener whose accepted descriptors it is shown."""
    from inferential.server.connections import ConnectionWatch

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    events: list[str] = []
    watch = ConnectionWatch(router, count=events.append, max_message_bytes=1 << 20)
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield watch, events, listener
    finally:
        listener.close()
        watch.stop()
        router.close(linger=0)
        ctx.term()


def test_a_reconnect_on_the_descriptor_number_of_the_old_connection_is_counted_before_the_monitor_says_so():
    """A robot that reconnects can get the descriptor number its old connection had, and its
    first message can reach the loop before the watch thread has read the monitor events
    that end the old connection: the peer address tells the two apart."""
    with _unstarted_watch() as (watch, events, listener):
        robot1 = socket.create_connection(listener.getsockname())
        served1, _ = listener.accept()
        fd = served1.fileno()
        watch.note_identity(b"arm-2", _SrcFdFrame(fd))
        watch.note_identity(b"arm-2", _SrcFdFrame(fd))  # the same connection again: nothing to count
        assert events == []
        served1.close()
        robot1.close()
        robot2 = socket.create_connection(listener.getsockname())
        served2, _ = listener.accept()
        assert served2.fileno() == fd  # the lowest free descriptor: the old one
        watch.note_identity(b"arm-2", _SrcFdFrame(fd))
        assert events == ["identity_moved"]
        served2.close()
        robot2.close()


def test_a_connection_whose_accept_event_is_read_after_its_first_message_is_still_one_connection():
    """On a loaded machine the watch thread can read a connection's ACCEPTED event after the
    loop has handled its first message: that must not make the robot look like it moved,
    nor hide a real handover to a second connection."""
    with _unstarted_watch() as (watch, events, listener):
        robot1 = socket.create_connection(listener.getsockname())
        served1, _ = listener.accept()
        watch.note_identity(b"arm-3", _SrcFdFrame(served1.fileno()))
        watch._generation[served1.fileno()] = 1  # the watch thread reads the accept only now
        watch.note_identity(b"arm-3", _SrcFdFrame(served1.fileno()))
        assert events == []
        robot2 = socket.create_connection(listener.getsockname())  # the first is still open
        served2, _ = listener.accept()
        watch.note_identity(b"arm-3", _SrcFdFrame(served2.fileno()))
        assert events == ["identity_handover"]
        for s in (served1, robot1, served2, robot2):
            s.close()


# --- frames over the size limit, the connection cap --------------------------------


def test_a_frame_over_the_size_limit_is_counted_and_logged_at_a_bounded_rate(caplog):
    limit = 1024 * 1024
    with caplog.at_level("INFO", logger="inferential.transport"):
        with running_server(transport={"max_message_bytes": limit}) as (server, endpoint):
            counts = _connection_counts(server)
            obs = pb.Observation(model_id="noop", request_id=1, protocol_version=2)
            obs.client.id = "big"
            for _ in range(5):  # libzmq closes each before the server sees a byte of it
                peer = Peer(endpoint)
                try:
                    peer.sock.send_multipart([b"", obs.SerializeToString(), b"\0" * (limit + 1)])
                    got = peer.replies(1.0)
                    assert got == []
                finally:
                    peer.close()
            eventually(lambda: server.metrics.counter("connection_events", {"event": "disconnected"}) >= 5)
            good = Peer(endpoint)
            try:
                good.send("good")
                assert [r.status for r in good.replies(5.0)] == [pb.OK]
            finally:
                good.close()
    lines = [r.getMessage() for r in caplog.records if "max_message_bytes" in r.getMessage()]
    print(f"5 oversized frames: {counts['disconnected']} disconnects counted, {len(lines)} log line(s)")
    assert len(lines) == 1 and str(limit) in lines[0]  # one line per 10 s, the rest counted


def test_a_connection_watch_that_falls_behind_cannot_stall_libzmq():
    """libzmq sends monitor events blocking: with the monitor's queue full (1,000 events unread,
    as when the watch thread waits for the GIL through a connection storm) the whole socket
    stalled (measured before the fix: a message sent after 1,500 connects never arrived).
    The watch's receive side is unbounded, so a watch that never reads stalls nothing."""
    import socket

    from inferential.server.connections import ConnectionWatch

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    watch = ConnectionWatch(router, count=lambda event: None, max_message_bytes=1 << 20)  # never started
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        for _ in range(1500):
            socket.create_connection(("127.0.0.1", port)).close()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send_multipart([b"", b"still served"])
        arrived = router.poll(10_000)
        dealer.close()
    finally:
        watch.stop()
        router.close(linger=0)
        ctx.term()
    assert arrived


def test_a_connection_cap_refuses_the_excess_counts_it_and_healthz_keeps_answering():
    import urllib.request

    from inferential import ClientOptions, Connection
    from inferential.errors import RequestTimeout, ServerUnavailable
    from inferential.server.http import HttpEndpoint

    cap = 4
    with running_server(transport={"max_connections": cap}) as (server, endpoint):
        http = HttpEndpoint(server, "127.0.0.1", 0)
        idle = [Peer(endpoint) for _ in range(3 * cap)]  # DEALERs connect (and handshake) at once, then idle
        try:
            counts = _connection_counts(server)
            eventually(lambda: counts["refused_over_cap"] >= 2 * cap, what="refusals")
            live = server._transport.connections.live()
            start = time.monotonic()
            with urllib.request.urlopen(f"{http.url}/healthz", timeout=5) as resp:
                healthy = resp.status
            healthz_ms = (time.monotonic() - start) * 1000
            # The connections admitted are served, the refused ones never read. (A refused DEALER
            # may have no pipe to queue on between its retries: its send would block.)
            answered = 0
            for p in idle:
                obs = pb.Observation(model_id="noop", request_id=1, protocol_version=2)
                obs.client.id = "idle"
                try:
                    p.sock.send_multipart([b"", obs.SerializeToString()], zmq.NOBLOCK)
                except zmq.Again:
                    pass
            for p in idle:
                answered += len(p.replies(0.3))
            # A robot over the cap: libzmq never retries a refused handshake, the Python client
            # opens a new socket on its next send (stats.socket_resets) and gets in once there is room.
            options = ClientOptions(send_timeout_ms=300)
            with Connection(endpoint, client_id="newcomer", options=options) as newcomer:
                with pytest.raises((ServerUnavailable, RequestTimeout)):
                    newcomer.model("noop").request(timeout_ms=500, x=np.zeros(1, np.float32))
                for p in idle[:cap]:
                    p.close()
                late = None
                end = time.monotonic() + 30  # a few seconds at most when idle; more with both cores loaded
                while late is None and time.monotonic() < end:
                    try:
                        late = newcomer.model("noop").request(timeout_ms=1000, x=np.zeros(1, np.float32))
                    except (ServerUnavailable, RequestTimeout):
                        pass
                resets = newcomer.stats.socket_resets
            refused = counts["refused_over_cap"]
            exported = server.metrics.counter("connection_events", {"event": "refused_over_cap"})
        finally:
            for p in idle[cap:]:
                p.close()
            http.close()
    print(
        f"cap {cap}, {3 * cap} idle: live {live}, refused {refused}, /healthz {healthy} in {healthz_ms:.0f} ms, "
        f"newcomer's socket resets {resets}"
    )
    assert live == cap and answered == cap and healthy == 200 and exported == refused
    assert late is not None and late.ok and resets >= 1
