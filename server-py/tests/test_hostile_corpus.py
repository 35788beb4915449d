"""The malformed-input corpus against the real server, with a good robot running beside it.

Every kind of malformed or hostile observation, as data: the server-only kinds in
``data/hostile_corpus.yaml`` and the malformed observation cases of the conformance decode
corpus (``conformance/cases/decode.yaml``, shared with the clients). Each is sent on a
connection of its own kind's choosing while a robot on another connection observes at
100 Hz. What must hold (issue 14):

- every malformed message gets exactly one reply with its typed status (and its request id
  when the envelope is readable), or, where the wire cannot carry a reply (a frame over the
  size limit: libzmq closes the connection before the server sees it), it is counted;
- the good robot's every observation is answered OK exactly once;
- the server stays up and keeps serving.
"""

from __future__ import annotations

import pathlib
import sys
import threading
import time
from typing import Any, Callable

import pytest
import yaml
import zmq
from server_helpers import running_server
from test_protocol_cases import RUNNER, observation_frames

from inferential._proto import inferential_pb2 as pb

if str(RUNNER) not in sys.path:  # the conformance runner's modules
    sys.path.insert(0, str(RUNNER))

import cases as conformance  # noqa: E402  (the conformance runner's data and layout)
import refwire  # noqa: E402  (its own protobuf writer: no codec of ours builds the bad bytes)

LIMIT = 1024 * 1024  # a small message limit keeps the oversized kinds cheap
CORPUS = yaml.safe_load((pathlib.Path(__file__).parent / "data" / "hostile_corpus.yaml").read_text())["kinds"]


def _server_expect(case: conformance.Case) -> dict[str, Any]:
    """What the server must do with a decode case's observation twin (observation_expect when the
    rule differs by direction)."""
    return case.spec.get("observation_expect", case.spec.get("expect", {}))


SHARED = [
    c
    for c in conformance.load_cases()
    if c.kind == "decode" and c.spec.get("observation") and _server_expect(c).get("malformed")
]


def disconnects(server: Any) -> float:
    """Connections libzmq ended: inferential_connection_events_total{event="disconnected"}."""
    return server.metrics.counter("connection_events", {"event": "disconnected"})


def _field_key(number: int, wire_type: int) -> bytes:
    return refwire._varint(number << 3 | wire_type)


def build(spec: dict[str, Any], request_id: int) -> list[bytes]:
    """The frames a DEALER sends for one server-only kind (after them the ROUTER adds the identity)."""
    if "frames_hex" in spec:
        return [bytes.fromhex(f) for f in spec["frames_hex"]]
    fields: dict[str, Any] = {
        "client": {"id": "attacker"},
        "model_id": "noop",
        "request_id": request_id,
        "protocol_version": 2,
        "timestamp_ns": time.time_ns(),
    }
    for key, value in spec.get("fields", {}).items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    if "repeat_client_id" in spec:
        fields["client"] = {"id": "x" * spec["repeat_client_id"]}
    if "repeat_client_type" in spec:
        fields["client"] = {"id": "attacker", "type": "x" * spec["repeat_client_type"]}
    if "repeat_model_id" in spec:
        fields["model_id"] = "x" * spec["repeat_model_id"]
    if "repeat_auth_token" in spec:
        fields["auth_token"] = "x" * spec["repeat_auth_token"]
    tensors = spec.get("tensors", [{"key": "x", "dtype": "FLOAT32", "shape": [2]}])
    descriptors, payload = conformance.layout_reply(tensors, spec.get("layout", "packed"))
    fields["tensors"] = descriptors
    envelope = bytes.fromhex(spec["envelope_hex"]) if "envelope_hex" in spec else refwire.encode("Observation", fields)
    envelope += bytes.fromhex(spec.get("append_hex", ""))
    if "append_pad" in spec:  # the field key is in append_hex; its length and bytes here
        envelope += refwire._varint(spec["append_pad"]) + b"\0" * spec["append_pad"]
    cut = spec.get("truncate")
    if cut == "half":
        envelope = envelope[: len(envelope) // 2]
    elif cut is not None:
        envelope = envelope[:cut]
    if "big_envelope" in spec:  # an unknown field padding the envelope frame itself over the limit
        target = LIMIT + spec["big_envelope"]
        pad = target - len(envelope) - 8
        envelope += _field_key(1000, 2) + refwire._varint(pad) + b"\0" * pad
        envelope += b"\0" * (target - len(envelope))  # trailing zero bytes: still over, never parsed
    payload += [bytes.fromhex(f) for f in spec.get("extra_frames_hex", [])]
    if "split_over" in spec:
        count = spec["split_over"]
        payload = [b"\0" * (LIMIT // count + 1024) for _ in range(count)]
    if "big_frame" in spec:
        payload.append(b"\0" * (LIMIT + spec["big_frame"]))
    frames = [envelope, *payload]
    if not spec.get("drop_delimiter"):
        frames.insert(0, bytes.fromhex(spec.get("delimiter_hex", "")) * spec.get("delimiter_repeat", 1))
    return [bytes.fromhex(f) for f in spec.get("prepend_frames_hex", [])] + frames


class GoodRobot(threading.Thread):
    """A well-behaved robot on its own connection: 100 observations a second until stopped,
    every reply recorded by request id."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.stop_flag = threading.Event()
        self.sent = 0
        self.replies: dict[int, list[int]] = {}  # request id -> statuses received

    def _observation(self, request_id: int) -> list[bytes]:
        descriptors, payload = conformance.layout_reply([{"key": "x", "dtype": "FLOAT32", "shape": [7]}], "packed")
        fields = {
            "client": {"id": "good"},
            "model_id": "noop",
            "request_id": request_id,
            "protocol_version": 2,
            "timestamp_ns": time.time_ns(),
            "tensors": descriptors,
            "latency_budget_ms": 2000.0,  # a loaded test machine's stalls are not what is tested
        }
        return [b"", refwire.encode("Observation", fields), *payload]

    def _read(self, sock: zmq.Socket, wait_ms: int) -> None:
        while sock.poll(wait_ms):
            frames = sock.recv_multipart()
            reply = pb.ModelResponse.FromString(frames[1])
            self.replies.setdefault(reply.request_id, []).append(reply.status)
            wait_ms = 0

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        try:
            start = time.monotonic()
            while not self.stop_flag.is_set():
                self.sent += 1
                sock.send_multipart(self._observation(self.sent))
                due = start + self.sent * 0.01
                while (left := due - time.monotonic()) > 0:
                    self._read(sock, max(1, int(left * 1000)))
            end = time.monotonic() + 5
            while len(self.replies) < self.sent and time.monotonic() < end:
                self._read(sock, 50)
            self._read(sock, 200)  # anything extra (a second reply) shows up here
        finally:
            sock.close()
            ctx.term()


def eventually_count(value: Callable[[], float], timeout_s: float = 2.0) -> float:
    """``value()`` once it is positive (the watch counts on its own thread), or its last reading."""
    end = time.monotonic() + timeout_s
    while (got := value()) < 1 and time.monotonic() < end:
        time.sleep(0.01)
    return got


def _connect(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _replies(sock: zmq.Socket, timeout_s: float) -> list[pb.ModelResponse]:
    out = []
    if sock.poll(int(timeout_s * 1000)):
        while sock.poll(0):
            frames = sock.recv_multipart()
            out.append(pb.ModelResponse.FromString(frames[1]))
    return out


def _check(name: str, expect: dict[str, Any], request_id: int, got: list[pb.ModelResponse]) -> list[str]:
    if len(got) != 1:
        return [f"{name}: {len(got)} replies ({[pb.Status.Name(r.status) for r in got]})"]
    reply = got[0]
    wanted = expect["status"]
    wanted = wanted if isinstance(wanted, list) else [wanted]
    problems = []
    status = pb.Status.Name(reply.status)
    if status not in wanted:
        problems.append(f"{name}: {status} ({reply.error!r}), wanted {wanted}")
    rid = expect.get("request_id", "echo")
    if rid == "echo" and reply.request_id != request_id:
        problems.append(f"{name}: request id {reply.request_id}, wanted its own {request_id}")
    elif isinstance(rid, int) and reply.request_id != rid:
        problems.append(f"{name}: request id {reply.request_id}, wanted {rid}")
    if "error" in expect and expect["error"] not in reply.error:
        problems.append(f"{name}: error {reply.error!r} does not name {expect['error']!r}")
    return problems


def test_the_corpus_has_at_least_80_kinds() -> None:
    names = [k["name"] for k in CORPUS] + [c.name for c in SHARED]
    assert len(set(names)) == len(names)
    malformed = [k for k in CORPUS if k["expect"].get("dropped") or k["expect"].get("status") != "OK"]
    assert len(malformed) + len(SHARED) >= 80, (len(malformed), len(SHARED))


def test_every_malformed_kind_is_answered_or_counted_while_a_good_robot_is_served_exactly_once() -> None:
    problems: list[str] = []
    # No coalescing: a loaded machine's stall would let one good observation supersede the one
    # before it, which is scheduling policy, not what is tested here.
    sections = {"transport": {"max_message_bytes": LIMIT}, "scheduling": {"coalesce": False}}
    with running_server(**sections) as (server, endpoint):
        robot = GoodRobot(endpoint)
        robot.start()
        ctx = zmq.Context()
        attacker = _connect(ctx, endpoint)
        try:
            time.sleep(0.2)  # the robot is running before the first attack
            for index, kind in enumerate(CORPUS):
                request_id = 1000 + index
                frames = build(kind, request_id)
                expect = kind["expect"]
                if kind.get("fresh_connection"):
                    sock = _connect(ctx, endpoint)
                    before = disconnects(server)
                    sock.send_multipart(frames)
                    got = _replies(sock, 1.0)
                    dropped = eventually_count(lambda before=before: disconnects(server) - before)
                    sock.close()
                    if expect.get("dropped"):
                        if got or dropped < 1:
                            problems.append(f"{kind['name']}: {len(got)} replies, {dropped:g} disconnects counted")
                        continue
                else:
                    attacker.send_multipart(frames)
                    got = _replies(attacker, 5.0)
                problems += _check(kind["name"], expect, request_id, got)
            for case in SHARED:  # the client-side corpus, as observations (request id 5, model "m")
                attacker.send_multipart(observation_frames(case.spec["reply"])[1:])
                rid = _server_expect(case).get("request_id")
                expect = {"status": "INVALID_REQUEST", "request_id": int(rid) if rid else "any"}
                if _server_expect(case).get("error"):
                    expect["error"] = _server_expect(case)["error"]
                problems += _check(case.name, expect, 5, _replies(attacker, 5.0))
            extra = _replies(attacker, 0.5)
            if extra:
                problems.append(f"{len(extra)} replies beyond one per kind: {[r.request_id for r in extra]}")
        finally:
            robot.stop_flag.set()
            robot.join(15)
            attacker.close()
            ctx.term()
        alive = server.ready and server.loop_alive()
    answered = {rid: statuses for rid, statuses in robot.replies.items()}
    not_ok = {rid: [pb.Status.Name(x) for x in s] for rid, s in answered.items() if s != [pb.OK]}
    print(
        f"corpus: {len(CORPUS)} server-only + {len(SHARED)} shared kinds; "
        f"good robot: {robot.sent} sent, {len(answered)} answered, {len(not_ok)} not exactly one OK"
    )
    assert not problems, "\n".join(problems)
    assert robot.sent > 50 and set(answered) == set(range(1, robot.sent + 1)) and not not_ok, not_ok
    assert alive


@pytest.mark.parametrize("kind", CORPUS, ids=[k["name"] for k in CORPUS])
def test_each_kind_builds(kind: dict[str, Any]) -> None:
    """The data is well formed: every kind builds frames and states what must happen."""
    frames = build(kind, 7)
    assert frames and ("status" in kind["expect"] or kind["expect"].get("dropped"))
