"""Runs every case of conformance/cases/ against each selected testee.

Never imports a client: each testee is a process driven over conformance/TESTEE.md, the
reference peer decodes with its own `refwire`, and the real server (for `server` cases)
runs as `python -m inferential.cli serve` in a process of its own.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any, Iterator, Optional

import pytest
import zmq

import refwire
from cases import (
    ENCODE_DEFAULTS,
    Case,
    Mismatch,
    build_reply_frames,
    check_subset,
    expand_tensors,
    item_size,
    resolve,
    tensor_bytes,
    wire_tensors,
)
from peer import AcceptLog, PeerOptions, ReferencePeer, free_port
from testee import ROOT, Testee


def test_runner_never_imports_a_client() -> None:
    assert not any(name == "inferential" or name.startswith("inferential.") for name in sys.modules)


@pytest.fixture(scope="module")
def codec_testees() -> Iterator[dict[str, Testee]]:
    """One long-lived worker per language for socket-free cases (restarted if it dies)."""
    pool: dict[str, Testee] = {}
    yield pool
    for testee in pool.values():
        testee.close()


def _codec_testee(pool: dict[str, Testee], language: str) -> Testee:
    testee = pool.get(language)
    if testee is None or testee.proc.poll() is not None:
        testee = pool[language] = Testee(language)
    return testee


def test_case(case: Case, language: str, codec_testees: dict[str, Testee], real_server: Any) -> None:
    if case.kind in ("encode", "decode", "error_for", "chunks"):
        testee = _codec_testee(codec_testees, language)
        try:
            run = {"encode": run_encode, "decode": run_decode, "error_for": run_error_for, "chunks": run_chunks}
            run[case.kind](case, testee)
        except BaseException:
            testee.close()
            codec_testees.pop(language, None)
            raise
        return
    testee = Testee(language)
    try:
        if case.kind == "session":
            Session(case, testee).run()
        elif case.kind == "server":
            Session(case, testee, server_endpoint=real_server.endpoint).run()
        elif case.kind == "reconnect":
            run_reconnect(case, testee)
        else:
            raise AssertionError(f"{case.source}: unknown case kind {case.kind!r}")
    finally:
        testee.close()


# -- answers -----------------------------------------------------------------------------


def ok(answer: dict[str, Any], what: str) -> dict[str, Any]:
    if not answer.get("ok"):
        raise Mismatch(f"{what}: expected success, got error {answer.get('error')}")
    return answer


def check_error(answer: dict[str, Any], expected: Any, refs: dict[str, list[str]], what: str) -> None:
    if answer.get("ok"):
        raise Mismatch(f"{what}: expected error {expected}, got success {answer}")
    error = answer.get("error") or {}
    if error.get("kind") == "testee_bug":
        raise Mismatch(f"{what}: testee bug: {error.get('message')}")
    if isinstance(expected, str):
        expected = {"kind": expected}
    check_subset(resolve(expected, refs), error, f"{what}.error")


# -- encode ------------------------------------------------------------------------------


def run_encode(case: Case, testee: Testee) -> None:
    spec = case.spec
    inputs = {**ENCODE_DEFAULTS, **spec["input"]}
    tensors = expand_tensors(inputs.get("tensors", []))
    args = {**inputs, "tensors": wire_tensors(tensors)}
    answer = testee.call("encode", **args)
    expect = spec.get("expect", {})
    if "error" in expect:
        check_error(answer, expect["error"], {}, "encode")
        return
    frames = [bytes.fromhex(f) for f in ok(answer, "encode")["frames"]]
    envelope = check_observation_layout(frames, inputs, tensors)
    if "envelope" in expect:
        check_subset(expect["envelope"], envelope, "envelope")
    if "frames_hex" in expect:
        want = [bytes.fromhex(f) for f in expect["frames_hex"]]
        if frames != want:
            raise Mismatch(f"frames differ from the pinned bytes:\n got  {[f.hex() for f in frames]}\n want {expect['frames_hex']}")
    if "payload_frames" in expect and len(frames) - 2 != expect["payload_frames"]:
        raise Mismatch(f"expected {expect['payload_frames']} payload frames, got {len(frames) - 2}")


def check_observation_layout(frames: list[bytes], inputs: dict[str, Any], tensors: list[dict[str, Any]]) -> dict:
    """The framing and layout rules every encoded observation must follow (docs/protocol.md §2, §4)."""
    if len(frames) < 2 or frames[0] != b"":
        raise Mismatch("the first frame must be the empty delimiter, then the envelope")
    try:
        env = refwire.decode("Observation", frames[1])
    except refwire.DecodeError as exc:
        raise Mismatch(f"envelope does not parse as Observation: {exc}") from exc
    payload = frames[2:]
    if len(payload) > 64:
        raise Mismatch(f"{len(payload)} payload frames (limit 64)")
    if inputs.get("single_payload_frame") and len(payload) != 1:
        raise Mismatch(f"single_payload_frame: expected exactly 1 payload frame, got {len(payload)}")
    check_subset(
        {
            "protocol_version": 2,
            "request_id": int(inputs["request_id"]),
            "timestamp_ns": int(inputs["timestamp_ns"]),
            "model_id": inputs["model"]["model_id"],
            "client": {"id": inputs["client_id"], "type": inputs["client_type"]},
            "metadata": inputs.get("metadata", {}),
        },
        env,
        "envelope",
    )
    starts, pos = [], 0
    for frame in payload:
        starts.append(pos)
        pos += len(frame)
    if len(env["tensors"]) != len(tensors):
        raise Mismatch(f"{len(env['tensors'])} tensor descriptors for {len(tensors)} tensors")
    ranges = []
    for desc, t in zip(env["tensors"], tensors):
        where = f"tensor {t['key']}"
        check_subset({"key": t["key"], "dtype": refwire.DTYPES[t["dtype"]][0], "shape": list(t["shape"])}, desc, where)
        if desc["encoding"] not in (0, 1):
            raise Mismatch(f"{where}: encoding {desc['encoding']} (only RAW is sent)")
        data = tensor_bytes(t)
        if desc["byte_length"] != len(data):
            raise Mismatch(f"{where}: byte_length {desc['byte_length']}, data is {len(data)} bytes")
        if not data:
            continue
        offset = desc["byte_offset"]
        frame_index = max((i for i, s in enumerate(starts) if s <= offset), default=None)
        if frame_index is None or offset + len(data) > starts[frame_index] + len(payload[frame_index]):
            raise Mismatch(f"{where}: bytes [{offset}, {offset + len(data)}) are not inside one payload frame")
        in_frame = offset - starts[frame_index]
        if in_frame % item_size(t["dtype"]):
            raise Mismatch(f"{where}: offset {in_frame} in its frame is not a multiple of its item size")
        got = payload[frame_index][in_frame : in_frame + len(data)]
        if got != data:
            raise Mismatch(f"{where}: payload bytes differ from the input")
        ranges.append((offset, offset + len(data), t["key"]))
    ranges.sort()
    for (a0, a1, ak), (b0, b1, bk) in zip(ranges, ranges[1:]):
        if b0 < a1:
            raise Mismatch(f"tensors {ak} and {bk} overlap")
    return env


# -- decode and error_for ----------------------------------------------------------------


def run_decode(case: Case, testee: Testee) -> None:
    spec = case.spec
    base = {"request_id": 5, "model_id": "m", "client_id": "r1", "timestamp_ns": 1700000000000000000}
    frames = build_reply_frames(base, spec["reply"])
    answer = ok(testee.call("decode", frames=[f.hex() for f in frames]), "decode")
    expect = spec.get("expect", {})
    if expect.get("malformed"):
        if "malformed" not in answer:
            raise Mismatch(f"expected the reply to be counted malformed, got {answer.get('reply')}")
        if "request_id" in expect:
            check_subset(str(expect["request_id"]), answer["malformed"].get("request_id"), "malformed.request_id")
        return
    if "reply" not in answer or answer.get("malformed"):
        raise Mismatch(f"expected a valid reply, got malformed: {answer.get('malformed')}")
    reply = answer["reply"]
    check_reply_tensors(spec["reply"].get("tensors", []), reply)
    if "reply" in expect:
        check_subset(expect["reply"], reply, "reply")


def check_reply_tensors(tensors: list[dict[str, Any]], reply: dict[str, Any]) -> None:
    expanded = expand_tensors(tensors)
    got = reply.get("tensors", [])
    if len(got) != len(expanded):
        raise Mismatch(f"reply has {len(got)} tensors, expected {len(expanded)}")
    for want, have in zip(expanded, got):
        check_subset(
            {"key": want["key"], "dtype": want["dtype"], "shape": list(want["shape"]), "data": tensor_bytes(want).hex()},
            have,
            f"reply.tensors[{want['key']}]",
        )


def run_error_for(case: Case, testee: Testee) -> None:
    spec = case.spec
    answer = ok(testee.call("error_for", **spec["input"]), "error_for")
    expect = spec["expect"]
    if expect is None or expect.get("error") is None:
        if answer.get("error") is not None:
            raise Mismatch(f"expected no error, got {answer['error']}")
        return
    check_subset(expect["error"], answer.get("error"), "error")


def run_chunks(case: Case, testee: Testee) -> None:
    spec = case.spec
    args = {
        "blend": spec["blend"],
        "new_weight": spec.get("new_weight", 0.7),
        "start_step": spec.get("start_step", 0),
        "now_ns": str(spec.get("now_ns", "0")),
        "ops": [_chunk_op(op) for op in spec["ops"]],
    }
    answer = ok(testee.call("chunk_queue", **args), "chunk_queue")
    check_subset(spec["expect"], {"results": answer.get("results"), "stats": answer.get("stats")}, "chunk_queue")


def _chunk_op(op: dict[str, Any]) -> dict[str, Any]:
    (name, body), = op.items()
    if name == "add":
        body = {**body, "rows": [[float(x) for x in row] for row in body["rows"]]}
        if body.get("valid_until_ns") is not None:
            body["valid_until_ns"] = str(body["valid_until_ns"])
        else:
            body["valid_until_ns"] = None
    if name == "now_ns":
        return {"now_ns": str(body)}
    return {name: body}


# -- sessions against the reference peer or the real server -----------------------------


class Session:
    """Runs a case's steps: testee commands interleaved with what the peer receives and sends."""

    def __init__(self, case: Case, testee: Testee, server_endpoint: Optional[str] = None) -> None:
        self.case = case
        self.testee = testee
        self.spec = case.spec
        self.peer: Optional[ReferencePeer] = None
        self.curve_keys: dict[str, str] = {}
        if server_endpoint is None:
            opts = dict(self.spec.get("peer", {}))
            if opts.pop("curve", False):
                server_public, server_secret = zmq.curve_keypair()
                client_public, client_secret = zmq.curve_keypair()
                self.curve_keys = {
                    "curve_server_key": server_public.decode(),
                    "curve_public_key": client_public.decode(),
                    "curve_secret_key": client_secret.decode(),
                }
                opts["curve_secret_key"] = server_secret
            self.peer = ReferencePeer(options=PeerOptions(**{k: v for k, v in opts.items() if k != "auto"}))
            self.peer.auto = opts.get("auto")
            self.endpoint = self.peer.endpoint
        else:
            self.endpoint = server_endpoint
        self.refs: dict[str, list[str]] = {"id": [], "recv_id": []}
        self.sent: dict[str, list[dict[str, Any]]] = {}  # request id -> the tensors sent with it

    def run(self) -> None:
        if self.peer is not None:
            self.peer.start()
            self.peer.on_receive = self._auto_reply
        try:
            if self.spec.get("connect", True) is not False:
                options = self.client_options(self.spec.get("options", {}))
                ok(self.testee.call("connect", endpoint=self.endpoint, options=options), "connect")
            for index, step in enumerate(self.spec["steps"]):
                try:
                    self.step(step)
                except Mismatch as exc:
                    raise Mismatch(f"step {index + 1} {list(step)[0]}: {exc}") from None
        finally:
            if self.peer is not None:
                self.peer.close()

    def client_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The connect options of a step: `curve: auto` takes the keys made for the peer,
        `curve: wrong_server_key` the client's own pair with another server's public key."""
        options = {"client_id": "r1", **given}
        curve = options.pop("curve", None)
        if curve == "auto":
            options.update(self.curve_keys)
        elif curve == "wrong_server_key":
            options.update(self.curve_keys)
            options["curve_server_key"] = zmq.curve_keypair()[0].decode()
        return options

    # the peer's automatic answers: a list of reply specs sent for every observation
    def _auto_reply(self, rec: Any) -> None:
        auto = self.peer.auto if self.peer is not None else None
        if not auto or rec.envelope is None:
            return
        time.sleep(auto.get("delay_ms", 0) / 1000.0)
        for reply in auto.get("replies", [{}]):
            reply = dict(reply)
            if reply.get("echo"):
                reply["tensors"] = self._received_tensors(rec)
            self.peer.send(rec.identity, build_reply_frames(self._base(rec), reply))  # type: ignore[union-attr]

    def _base(self, rec: Any) -> dict[str, Any]:
        env = rec.envelope
        return {
            "request_id": env["request_id"],
            "model_id": env["model_id"],
            "client_id": env["client"]["id"] if env["client"] else "",
            "timestamp_ns": env["timestamp_ns"],
        }

    def _received_tensors(self, rec: Any) -> list[dict[str, Any]]:
        payload = b"".join(rec.payload)
        out = []
        for desc in rec.envelope["tensors"]:
            data = payload[desc["byte_offset"] : desc["byte_offset"] + desc["byte_length"]]
            out.append({"key": desc["key"], "dtype": refwire.DTYPE_BY_VALUE[desc["dtype"]], "shape": desc["shape"], "data": data.hex()})
        return out

    def call(self, cmd: str, args: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        started = time.monotonic()
        answer = self.testee.call(cmd, timeout_s=step.get("timeout_s", 10.0), **args)
        elapsed_ms = (time.monotonic() - started) * 1000.0
        if "max_ms" in step and elapsed_ms > step["max_ms"]:
            raise Mismatch(f"{cmd} took {elapsed_ms:.0f} ms (at most {step['max_ms']} ms)")
        if "min_ms" in step and elapsed_ms < step["min_ms"]:
            raise Mismatch(f"{cmd} took {elapsed_ms:.0f} ms (at least {step['min_ms']} ms)")
        return answer

    def observation_args(self, body: dict[str, Any]) -> dict[str, Any]:
        args = {k: v for k, v in body.items() if k not in ("tensors",)}
        if isinstance(args.get("model"), str):
            args["model"] = {"model_id": args["model"]}
        args["tensors"] = wire_tensors(body.get("tensors", []))
        return args

    def step(self, step: dict[str, Any]) -> None:
        (name, body), *_ = [(k, v) for k, v in step.items() if k not in ("expect", "max_ms", "min_ms", "timeout_s", "until_ok_ms")]
        body = body if isinstance(body, dict) else ({} if body is None else body)
        expect = step.get("expect")
        if name in ("observe", "request"):
            args = self.observation_args(body)
            deadline = time.monotonic() + step.get("until_ok_ms", 0) / 1000.0
            while True:
                answer = self.call(name, args, step)
                if answer.get("ok") or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            if expect is not None and "error" in expect:
                check_error(answer, expect["error"], self.refs, name)
                return
            ok(answer, name)
            if name == "observe":
                self.refs["id"].append(answer["request_id"])
                self.sent[answer["request_id"]] = args["tensors"]
            else:
                self.check_reply(answer.get("reply"), expect, args["tensors"])
        elif name == "get_result":
            answer = self.call("get_result", body, step)
            if expect is not None and "error" in expect:
                check_error(answer, expect["error"], self.refs, name)
                return
            ok(answer, name)
            reply = answer.get("reply")
            sent = self.sent.get(reply["request_id"]) if reply else None
            self.check_reply(reply, expect, sent)
        elif name == "stats":
            answer = ok(self.call("stats", {}, step), "stats")
            if expect is not None:
                check_subset(resolve(expect.get("stats", expect), self.refs), answer["stats"], "stats")
        elif name == "server_info":
            answer = self.call("server_info", body, step)
            if expect is not None and "error" in expect:
                check_error(answer, expect["error"], self.refs, name)
            elif expect is not None:
                check_subset(expect, ok(answer, name)["info"], "info")
        elif name == "socket_options":
            answer = ok(self.call("socket_options", {}, step), "socket_options")
            if expect is not None:
                check_subset(expect, answer["options"], "options")
        elif name == "connect":
            options = self.client_options(body.get("options", {}))
            answer = self.call("connect", {"endpoint": self.endpoint, "options": options}, step)
            if expect is not None and "error" in expect:
                check_error(answer, expect["error"], self.refs, name)
            else:
                ok(answer, name)
        elif name == "close":
            ok(self.call("close", {}, step), "close")
        elif name == "peer_stop":
            assert self.peer is not None
            self.peer.stop()
        elif name == "peer_start":
            assert self.peer is not None
            self.peer.start()
        elif name == "sleep_ms":
            time.sleep(float(body) / 1000.0)
        elif name == "peer_wait":
            assert self.peer is not None
            received = self.peer.wait_for(int(body) if not isinstance(body, dict) else body["count"])
            self.refs["recv_id"] = [str(r.envelope["request_id"]) if r.envelope else "0" for r in received]
        elif name == "peer_reply":
            assert self.peer is not None
            rec = self.peer.received[int(body.get("to", 0))]
            reply = dict(body)
            if reply.get("echo"):
                reply["tensors"] = self._received_tensors(rec)
            base = self._base(rec) if rec.envelope else {}
            self.peer.send(rec.identity, build_reply_frames(base, reply))
        elif name == "peer_restart":
            assert self.peer is not None
            self.peer.restart(float(body.get("down_ms", 200)))
        elif name == "peer_auto":
            assert self.peer is not None
            self.peer.auto = body
        elif name == "check_wire":
            self.check_wire(body)
        elif name == "peer_events":
            assert self.peer is not None
            names = [event for _, event in self.peer.events]
            for event, count in body.items():
                if names.count(event) != count:
                    raise Mismatch(f"peer saw {names.count(event)} {event} events, expected {count} ({names})")
        else:
            raise AssertionError(f"{self.case.source}: unknown step {name!r}")

    def check_reply(self, reply: Optional[dict[str, Any]], expect: Optional[dict[str, Any]], sent: Any) -> None:
        if expect is None:
            return
        want = resolve(expect.get("reply"), self.refs) if "reply" in expect else None
        if "reply" in expect and want is None:
            if reply is not None:
                raise Mismatch(f"expected no reply, got request {reply.get('request_id')} ({reply.get('status')})")
            return
        if reply is None:
            raise Mismatch("expected a reply, got none")
        if isinstance(want, dict) and want.get("tensors") == "echo":
            want = {k: v for k, v in want.items() if k != "tensors"}
            got = [{k: t[k] for k in ("key", "dtype", "shape", "data")} for t in reply.get("tensors", [])]
            if sent is None:
                raise Mismatch("a reply to echo, but nothing was sent")
            have = {t["key"]: t for t in got}
            for t in sent:
                if have.get(t["key"]) != t:
                    raise Mismatch(f"echoed tensor {t['key']} differs: sent {t}, got {have.get(t['key'])}"[:600])
            if len(have) != len(sent):
                raise Mismatch(f"echo returned {sorted(have)}, sent {[t['key'] for t in sent]}")
        if want:
            check_subset(want, reply, "reply")

    def check_wire(self, body: dict[str, Any]) -> None:
        assert self.peer is not None
        received = self.peer.wait_for(int(body.get("count", len(self.peer.received))))
        for i, rec in enumerate(received):
            if rec.envelope is None:
                raise Mismatch(f"message {i}: {rec.error}")
        ids = [rec.envelope["request_id"] for rec in received]
        if body.get("request_ids") == "increasing_from_1":
            if not ids or ids[0] != 1 or any(b <= a for a, b in zip(ids, ids[1:])):
                raise Mismatch(f"request ids {ids} are not 1, then strictly increasing")
        if body.get("routing_identity") == "assigned_by_libzmq":
            for rec in received:
                if not (len(rec.identity) == 5 and rec.identity[0] == 0):
                    raise Mismatch(f"routing identity {rec.identity.hex()} was set by the client")
        if body.get("timestamp_near_now"):
            now_ns = time.time_ns()
            for rec in received:
                if abs(rec.envelope["timestamp_ns"] - now_ns) > 60e9:
                    raise Mismatch(f"timestamp_ns {rec.envelope['timestamp_ns']} is not the Unix time in ns")
        if "each" in body:
            for i, rec in enumerate(received):
                check_subset(body["each"], rec.envelope, f"message {i}")
        if "connections" in body:
            count = len({rec.identity for rec in received})
            if count != body["connections"]:
                raise Mismatch(f"messages came over {count} connections, expected {body['connections']}")


# -- reconnection timing ---------------------------------------------------------------


def _schedule(ivl: int, ivl_max: int, until_ms: float) -> list[float]:
    """Attempt times (ms after the first, immediate, attempt) with doubling capped at ivl_max."""
    times, t, delay = [0.0], 0.0, float(ivl)
    while t < until_ms + 10 * max(ivl, ivl_max):
        t += delay
        times.append(t)
        if ivl_max > 0:
            delay = min(delay * 2, ivl_max)
    return times


def _connect_window(ivl: int, ivl_max: int, opened: float, tolerance: float) -> tuple[float, float]:
    """When the first attempt after the port opened may land, for a libzmq that adds a
    jitter in [0, ivl) to each delay (4.3.4 always; 4.3.5 only without a cap) or none.

    Attempt k comes at T_k (the schedule without jitter) plus at most k * ivl of
    accumulated jitter, and one delay (at most min(ivl * 2^(k-1), ivl_max) + ivl) after
    the attempt before it.
    """
    if ivl_max == 0:
        return opened - tolerance, opened + 2 * ivl + tolerance
    times = _schedule(ivl, ivl_max, opened)
    m = next(k for k, t in enumerate(times) if t >= opened)
    previous_latest = times[m - 1] + (m - 1) * ivl
    lo = times[m] - tolerance if previous_latest < opened else opened - tolerance
    delay_before = min(ivl * 2 ** (m - 1), ivl_max)
    hi = min(times[m] + m * ivl, opened + delay_before + ivl) + tolerance
    return lo, hi


def run_reconnect(case: Case, testee: Testee) -> None:
    spec = case.spec
    ivl, ivl_max = int(spec["options"]["reconnect_ivl_ms"]), int(spec["options"]["reconnect_ivl_max_ms"])
    tolerance = float(spec.get("tolerance_ms", 30))
    options = {"client_id": "r1", "heartbeat_ivl_ms": 0, **spec["options"]}
    if spec["scenario"] == "accept_close":
        # Every TCP connect succeeds and is closed at once: each success resets the backoff,
        # so attempts follow one another reconnect_ivl_ms apart.
        listener = AcceptLog()
        try:
            ok(testee.call("connect", endpoint=f"tcp://127.0.0.1:{listener.port}", options=options), "connect")
            time.sleep(spec.get("watch_ms", 600) / 1000.0)
        finally:
            listener.close()
        gaps = [(b - a) * 1000 for a, b in zip(listener.accepted, listener.accepted[1:])]
        if len(gaps) < 3:
            raise Mismatch(f"only {len(listener.accepted)} connection attempts seen")
        median = statistics.median(gaps)
        lo, hi = ivl - 2, ivl + (ivl if ivl_max == 0 else 0) + tolerance
        if not lo <= median <= hi:
            raise Mismatch(f"median gap between attempts {median:.1f} ms, expected in [{lo}, {hi}] (gaps {gaps})")
    elif spec["scenario"] == "refused_then_listen":
        # Nothing listens for down_ms: attempts fail and the delay doubles up to ivl_max. The
        # first connection lands on the first scheduled attempt after the port opens.
        port = free_port()
        down_ms = float(spec["down_ms"])
        ok(testee.call("connect", endpoint=f"tcp://127.0.0.1:{port}", options=options), "connect")
        start = time.monotonic()
        time.sleep(down_ms / 1000.0)
        listener = AcceptLog(port=port)
        try:
            opened = (time.monotonic() - start) * 1000
            time.sleep((2 * max(ivl, ivl_max) + tolerance + 100) / 1000.0)
        finally:
            listener.close()
        if not listener.accepted:
            raise Mismatch("no connection after the port opened")
        got = (listener.accepted[0] - start) * 1000
        lo, hi = _connect_window(ivl, ivl_max, opened, tolerance)
        if not lo <= got <= hi:
            raise Mismatch(f"connected {got:.0f} ms after connect(), expected in [{lo:.0f}, {hi:.0f}] (port opened at {opened:.0f})")
    else:
        raise AssertionError(f"unknown reconnect scenario {spec['scenario']!r}")


# -- the real server ------------------------------------------------------------------------


class RealServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        models = [
            "noop=inferential.models.testing:NoOp",
            "echo=inferential.models.testing:Echo",
            "failing=inferential.models.testing:Failing",
        ]
        args = [sys.executable, "-m", "inferential.cli", "serve", "--bind", self.endpoint]
        for model in models:
            args += ["--model", model]
        log = open(ROOT / "build" / "conformance" / "server.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=str(ROOT), env=dict(os.environ))
        self._wait_ready()

    def _wait_ready(self) -> None:
        import socket

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} (build/conformance/server.log)")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("the server did not start listening within 60 s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="session")
def real_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Started on first use by a `server` case; one server for the whole run."""
    holder: dict[str, RealServer] = {}

    class Lazy:
        @property
        def endpoint(self) -> str:
            if "s" not in holder:
                (ROOT / "build" / "conformance").mkdir(parents=True, exist_ok=True)
                holder["s"] = RealServer()
            return holder["s"].endpoint

    yield Lazy()
    if "s" in holder:
        holder["s"].close()

