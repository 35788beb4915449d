"""The client's sans-I/O core: observation encoding, reply decoding and matching. No sockets."""

from __future__ import annotations

import numpy as np
import pytest

from inferential import errors
from inferential._envelope import decode_reply, encode_observation
from inferential._matching import ReplyMatcher
from inferential._proto import inferential_pb2 as pb
from inferential.result import Result
from inferential.wire import RETRYABLE, BFloat16, Limits, Status, WireError, decode_tensors, pack_tensors

from client_peer import reply_frames

LIMITS = Limits()


def encode(inputs=None, limits=LIMITS, **fields):
    base = dict(client_id="robot-7", client_type="arm", model_id="policy", request_id=5, timestamp_ns=123)
    base.update(fields)
    return encode_observation(inputs=inputs or {}, limits=limits, **base)


def parse(frames):
    assert frames[0] == b""
    obs = pb.Observation.FromString(frames[1])
    return obs, decode_tensors(obs.tensors, [bytes(f) for f in frames[2:]])


# --- encoding -------------------------------------------------------------------


def test_observation_carries_every_v2_field():
    frames = encode(
        {"state": np.arange(3, dtype=np.float32), "prompt": "pick"},
        urgency=0.8,
        steps_remaining=12,
        priority=0,
        latency_budget_ms=30.0,
        deadline_ns=2**62,
        actions_remaining=4,
        control_rate_hz=50.0,
        auth_token="s3cret",
    )
    obs, tensors = parse(frames)
    assert (obs.client.id, obs.client.type, obs.model_id) == ("robot-7", "arm", "policy")
    assert obs.request_id == 5 and obs.protocol_version == 2 and obs.timestamp_ns == 123
    assert obs.urgency == pytest.approx(0.8) and obs.steps_remaining == 12 and obs.priority == 0
    assert obs.latency_budget_ms == 30.0 and obs.deadline_ns == 2**62
    assert obs.actions_remaining == 4 and obs.control_rate_hz == 50.0 and obs.auth_token == "s3cret"
    assert dict(obs.metadata) == {"prompt": "pick"}
    np.testing.assert_array_equal(tensors["state"], [0, 1, 2])
    assert obs.tensors[0].timestamp_ns == 123 and obs.tensors[0].encoding == pb.RAW


def test_optional_fields_stay_unset_when_not_given():
    obs, _ = parse(encode())
    assert not obs.HasField("steps_remaining") and not obs.HasField("actions_remaining")
    assert obs.deadline_ns == 0 and obs.auth_token == "" and len(encode()) == 2  # no payload frame


@pytest.mark.parametrize(
    "value, hint",
    [
        (1.5, "wrap numbers"),
        ([1, 2], "wrap numbers"),
        (np.float32(1), "wrap numbers"),
        (None, "NoneType"),
        (b"x", "bytes"),
    ],
)
def test_a_value_that_is_neither_array_nor_str_raises_type_error_naming_it(value, hint):
    with pytest.raises(TypeError, match="'speed'") as info:
        encode({"ok": np.zeros(1), "speed": value})
    assert hint in str(info.value)


def test_an_array_dtype_with_no_wire_type_raises_type_error_naming_it():
    with pytest.raises(TypeError, match="tensor 'z'.*complex128"):
        encode({"z": np.zeros(2, np.complex128)})


def test_bfloat16_wrapper_is_sent_as_bfloat16():
    obs, tensors = parse(encode({"w": BFloat16.from_float32(np.ones(4, np.float32))}))
    assert obs.tensors[0].dtype == pb.BFLOAT16 and obs.tensors[0].byte_length == 8


@pytest.mark.parametrize(
    "inputs, limits, match",
    [
        ({f"t{i}": np.zeros(1) for i in range(3)}, Limits(max_tensors=2), "3 tensors, limit is 2"),
        ({"deep": np.zeros((1,) * 9)}, LIMITS, "tensor 'deep': 9 dimensions"),
        ({"k" * 300: np.zeros(1)}, LIMITS, "key longer than 256"),
        ({"note": "x" * 5000}, LIMITS, "metadata 'note'"),
        ({"img": np.zeros(2000, np.uint8)}, Limits(max_message_bytes=1000), "observation: .* limit is 1000"),
    ],
)
def test_observations_over_the_limits_are_refused_before_sending(inputs, limits, match):
    with pytest.raises(WireError, match=match):
        encode(inputs, limits=limits)


@pytest.mark.parametrize(
    "field, value, exc",
    [
        ("urgency", float("nan"), ValueError),
        ("urgency", -0.1, ValueError),
        ("priority", -1, ValueError),
        ("priority", 1.5, TypeError),
        ("steps_remaining", 2**32, ValueError),
        ("deadline_ns", -5, ValueError),
        ("control_rate_hz", float("inf"), ValueError),
    ],
)
def test_out_of_range_fields_raise_naming_the_field(field, value, exc):
    with pytest.raises(exc, match=field):
        encode(**{field: value})


def test_single_payload_frame_joins_the_tensors_for_1x_servers():
    big = np.arange(4096, dtype=np.float32)
    inputs = {"a": np.ones(2, np.float32), "big": big}
    assert len(encode(inputs)) == 4
    frames = encode(inputs, single_payload_frame=True)
    assert len(frames) == 3
    _, tensors = parse(frames)
    np.testing.assert_array_equal(tensors["big"], big)
    assert encode(single_payload_frame=True)[2:] == [b""]


# --- decoding -------------------------------------------------------------------


def test_reply_decodes_into_a_result_with_views_timing_and_status():
    actions = np.arange(14, dtype=np.float32).reshape(2, 7)
    frames = reply_frames("policy", 9, tensors={"actions": actions}, metadata={"note": "hi"})
    res = decode_reply(frames, LIMITS)
    assert isinstance(res, Result) and res.ok and res.status is Status.OK
    np.testing.assert_array_equal(res["actions"], actions)
    assert list(res) == ["actions"] and len(res) == 1 and res.metadata == {"note": "hi"}
    assert (res.model_id, res.request_id, res.protocol_version) == ("policy", 9, 2)
    assert res.timing.batch_size == 1 and res.timing.inference_ms == 2.0
    assert res.inference_latency_ms == 2.0
    with pytest.raises(KeyError, match="metadata"):
        res["note"]


def test_a_1x_reply_reads_as_ok_without_timing():
    res = decode_reply(reply_frames("m", 0, status=0, protocol_version=0, timing=None), LIMITS)
    assert res.ok and res.status == Status.OK and res.timing is None


@pytest.mark.parametrize("status", [s for _, s in pb.Status.items() if s not in (pb.OK, pb.STATUS_UNSPECIFIED)])
def test_every_error_status_raises_its_own_subclass_with_the_table_retryable(status):
    res = decode_reply(reply_frames("m", 3, status=status, error="why"), LIMITS)
    assert not res.ok
    with pytest.raises(errors.RequestFailed) as info:
        res.raise_for_status()
    err = info.value
    cls = errors.STATUS_ERRORS[status]
    assert type(err) is cls and cls.__name__.upper() == pb.Status.Name(status).replace("_", "")
    assert (err.status, err.request_id, err.model_id, err.message) == (status, 3, "m", "why")
    assert err.retryable == (status in RETRYABLE) and err.result is res
    assert isinstance(err, errors.InferentialError)


def test_retryable_comes_from_the_server_when_it_speaks_v2():
    res = decode_reply(reply_frames("m", 3, status=pb.MODEL_ERROR, retryable=False), LIMITS)
    with pytest.raises(errors.ModelError) as info:
        res.raise_for_status()
    assert info.value.retryable is False


def test_an_unknown_future_status_raises_the_base_class():
    res = decode_reply(reply_frames("m", 3, status=77), LIMITS)
    with pytest.raises(errors.RequestFailed, match="Status\\(77\\)") as info:
        res.raise_for_status()
    assert type(info.value) is errors.RequestFailed


# --- matching -------------------------------------------------------------------


def sent(matcher, model, awaited=False):
    rid = matcher.next_request_id()
    matcher.track(rid, model, awaited)
    matcher.sent()
    return rid


def test_request_ids_start_at_one_and_increase():
    matcher = ReplyMatcher(LIMITS)
    assert [matcher.next_request_id() for _ in range(3)] == [1, 2, 3]


def test_replies_are_kept_per_model():
    matcher = ReplyMatcher(LIMITS)
    a, b = sent(matcher, "a"), sent(matcher, "b")
    assert matcher.on_reply(reply_frames("b", b)) == (("b", b, False),)
    assert matcher.on_reply(reply_frames("a", a)) == (("a", a, False),)
    assert matcher.take_latest("a").request_id == a and matcher.take_latest("b").request_id == b
    assert matcher.take_latest("a") is None


def test_a_reply_older_than_a_delivered_one_is_stale():
    matcher = ReplyMatcher(LIMITS)
    r1, r2 = sent(matcher, "m"), sent(matcher, "m")
    matcher.on_reply(reply_frames("m", r2))
    assert matcher.take_latest("m").request_id == r2
    assert matcher.on_reply(reply_frames("m", r1)) == ()
    assert matcher.take_latest("m") is None and matcher.stats.stale_dropped == 1


def test_an_unread_reply_is_replaced_by_a_newer_one_and_counted_stale():
    matcher = ReplyMatcher(LIMITS)
    r1, r2 = sent(matcher, "m"), sent(matcher, "m")
    matcher.on_reply(reply_frames("m", r1))
    matcher.on_reply(reply_frames("m", r2))
    assert matcher.take_latest("m").request_id == r2
    assert matcher.stats.stale_dropped == 1 and matcher.stats.by_status == {"OK": 2}


def test_unknown_duplicate_and_mismatched_replies_are_counted_and_dropped():
    matcher = ReplyMatcher(LIMITS)
    r1 = sent(matcher, "m")
    assert matcher.on_reply(reply_frames("m", 42)) == ()  # never sent
    assert matcher.on_reply(reply_frames("other", r1)) == ()  # wrong model
    assert matcher.on_reply(reply_frames("m", r1)) != ()
    assert matcher.on_reply(reply_frames("m", r1)) == ()  # duplicate
    assert matcher.stats.unknown_dropped == 3 and matcher.stats.received == 4


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b""],
        [b"not-empty", b""],
        [b"", b"\xff\xff\xff"],
    ],
)
def test_malformed_frames_are_counted_and_dropped(frames):
    matcher = ReplyMatcher(LIMITS)
    sent(matcher, "m")
    assert matcher.on_reply(frames) == ()
    assert matcher.stats.malformed_dropped == 1


def test_a_malformed_tensor_is_dropped_but_fails_the_request_waiting_for_it():
    matcher = ReplyMatcher(LIMITS)
    r1 = sent(matcher, "m")
    r2 = sent(matcher, "m", awaited=True)
    for rid in (r1, r2):
        frames = reply_frames("m", rid, tensors={"a": np.zeros(4, np.float32)})
        assert matcher.on_reply(frames[:2] + [b"short"]) == (() if rid == r1 else (("m", r2, True),))
    assert matcher.take_latest("m") is None
    failure = matcher.take_awaited(r2)
    assert type(failure) is errors.ProtocolError and not isinstance(failure, ValueError)
    assert "malformed reply to request 2" in str(failure) and isinstance(failure.__cause__, WireError)
    assert matcher.stats.malformed_dropped == 2


def test_a_superseded_reply_is_skipped_by_latest_but_given_to_its_waiter():
    matcher = ReplyMatcher(LIMITS)
    r1, r2 = sent(matcher, "m"), sent(matcher, "m", awaited=True)
    assert matcher.on_reply(reply_frames("m", r1, status=pb.SUPERSEDED)) == ()
    assert matcher.take_latest("m") is None
    matcher.on_reply(reply_frames("m", r2, status=pb.SUPERSEDED))
    assert matcher.take_awaited(r2).status == Status.SUPERSEDED
    assert matcher.stats.by_status == {"SUPERSEDED": 2}


def test_a_late_reply_to_an_abandoned_request_is_stale():
    matcher = ReplyMatcher(LIMITS)
    rid = sent(matcher, "m", awaited=True)
    matcher.abandon(rid)
    assert matcher.on_reply(reply_frames("m", rid)) == ()
    assert matcher.take_latest("m") is None and matcher.stats.stale_dropped == 1


def test_1x_replies_without_request_id_match_the_oldest_outstanding_request():
    matcher = ReplyMatcher(LIMITS)
    r1, r2 = sent(matcher, "m"), sent(matcher, "m")
    legacy = reply_frames("m", 0, status=0, protocol_version=0, timing=None)
    matcher.on_reply(legacy)
    assert matcher.take_latest("m").request_id == r1
    matcher.on_reply(legacy)
    assert matcher.take_latest("m").request_id == r2
    assert matcher.on_reply(legacy) == () and matcher.stats.unknown_dropped == 1


def test_outstanding_requests_are_bounded():
    matcher = ReplyMatcher(LIMITS)
    first = sent(matcher, "m")
    for _ in range(ReplyMatcher.MAX_OUTSTANDING):
        sent(matcher, "m")
    assert matcher.outstanding() == ReplyMatcher.MAX_OUTSTANDING
    assert matcher.on_reply(reply_frames("m", first)) == () and matcher.stats.unknown_dropped == 1


def test_a_failed_send_is_forgotten_and_counted():
    matcher = ReplyMatcher(LIMITS)
    rid = matcher.next_request_id()
    matcher.track(rid, "m", False)
    matcher.untrack(rid)
    assert matcher.outstanding() == 0 and matcher.stats.send_failed == 1 and matcher.stats.sent == 0


# --- limits on the strings of an observation and a reply --------------------------


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"client_id": ""}, "client.id: must not be empty"),
        ({"client_id": "r" * 257}, "client.id: longer than 256 bytes"),
        ({"client_type": "t" * 257}, "client.type: longer than 256 bytes"),
        ({"model_id": ""}, "model_id: must not be empty"),
        ({"model_id": "m" * 257}, "model_id: longer than 256 bytes"),
        ({"auth_token": "s" * 1025}, "auth_token: longer than 1024 bytes"),
        ({"inputs": {"": "v"}}, "metadata: empty key"),
    ],
)
def test_observations_breaking_a_string_limit_are_refused_before_sending(fields, match):
    with pytest.raises(WireError, match=match):
        encode(**fields)


def test_a_bool_array_holding_bytes_other_than_0_and_1_is_refused_before_sending():
    with pytest.raises(WireError, match="tensor 'mask': BOOL bytes must be 0 or 1"):
        encode({"mask": np.frombuffer(b"\x01\x02", np.bool_)})
    obs, tensors = parse(encode({"mask": np.array([True, False])}))
    assert tensors["mask"].tolist() == [True, False]


def test_string_limits_allow_their_exact_bound():
    obs, _ = parse(encode(client_id="r" * 256, model_id="m" * 256, client_type="t" * 256, auth_token="s" * 1024))
    assert len(obs.client.id) == 256 and len(obs.auth_token) == 1024


def _reply_with(**changes):
    frames = reply_frames("m", 1)
    resp = pb.ModelResponse.FromString(frames[1])
    for key, value in changes.items():
        if key == "metadata":
            resp.metadata.update(value)
        elif key == "client_id":
            resp.client.id = value
        else:
            setattr(resp, key, value)
    return [b"", resp.SerializeToString()]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"client_id": "c" * 257}, "client.id: longer than 256"),
        ({"metadata": {"": "v"}}, "metadata: empty key"),
        ({"metadata": {"k": "v" * 4097}}, "value longer than 4096"),
        ({"metadata": {str(i): "" for i in range(65)}}, "65 entries"),
    ],
)
def test_the_reply_decoder_enforces_the_limits_on_reply_strings(changes, match):
    with pytest.raises(WireError, match=match):
        decode_reply(_reply_with(**changes), LIMITS)


def test_a_reply_breaking_a_string_limit_is_malformed_and_fails_its_waiter():
    matcher = ReplyMatcher(LIMITS)
    rid = sent(matcher, "m", awaited=True)
    assert matcher.on_reply(_reply_with(metadata={"": "v"})) == (("m", rid, True),)
    assert type(matcher.take_awaited(rid)) is errors.ProtocolError
    assert matcher.stats.malformed_dropped == 1 and matcher.stats.by_status == {}


# --- replies with request id 0 ------------------------------------------------------


def test_a_v2_reply_with_request_id_0_is_malformed_and_fails_every_waiting_request():
    matcher = ReplyMatcher(LIMITS)
    plain = sent(matcher, "a")
    waiting = [sent(matcher, "a", awaited=True), sent(matcher, "b", awaited=True)]
    frames = reply_frames("", 0, status=pb.INVALID_REQUEST, error="client.id is not valid UTF-8")
    assert matcher.on_reply(frames) == (("a", waiting[0], True), ("b", waiting[1], True))
    for rid in waiting:
        err = matcher.take_awaited(rid)
        assert type(err) is errors.ProtocolError and "client.id is not valid UTF-8" in str(err)
    assert matcher.stats.malformed_dropped == 1 and matcher.stats.unknown_dropped == 0
    # A request() sent afterwards is not failed by it; the observe() before it still matches.
    later = sent(matcher, "a", awaited=True)
    assert matcher.on_reply(reply_frames("a", plain)) == (("a", plain, False),)
    assert matcher.take_awaited(later) is None
    # The failed requests' own replies, should they still come, are stale.
    assert matcher.on_reply(reply_frames("a", waiting[0])) == ()
    assert matcher.stats.stale_dropped == 1


def test_a_v2_reply_with_request_id_0_and_nobody_waiting_is_only_counted():
    matcher = ReplyMatcher(LIMITS)
    sent(matcher, "m")
    assert matcher.on_reply(reply_frames("m", 0, status=pb.INVALID_REQUEST)) == ()
    assert matcher.stats.malformed_dropped == 1 and matcher.outstanding() == 1


# --- retry hint, clock, hints -------------------------------------------------------


def test_retry_after_ms_reaches_the_result_and_the_error():
    frames = reply_frames("m", 3, status=pb.QUEUE_FULL, error="full")
    resp = pb.ModelResponse.FromString(frames[1])
    resp.retry_after_ms = 40
    res = decode_reply([b"", resp.SerializeToString()], LIMITS)
    assert res.retry_after_ms == 40
    with pytest.raises(errors.QueueFull) as info:
        res.raise_for_status()
    assert info.value.retry_after_ms == 40 and info.value.retryable


def test_the_matcher_times_round_trips_on_the_injected_clock():
    now = [1_000_000]
    matcher = ReplyMatcher(LIMITS, clock=lambda: now[0])
    rid = sent(matcher, "m")
    now[0] += 7_500_000
    matcher.on_reply(reply_frames("m", rid))
    assert matcher.take_latest("m").round_trip_ms == 7.5


def test_the_hints_are_declared_once_and_shown_in_every_signature():
    import inspect

    from inferential import AsyncModelHandle, ModelHandle, ObservationHints

    names = list(ObservationHints._fields)
    for method in (ModelHandle.observe, ModelHandle.request, AsyncModelHandle.observe, AsyncModelHandle.request):
        params = inspect.signature(method).parameters
        assert [p for p in params if p in names] == names
        assert list(params)[-1] == "inputs"
    obs, _ = parse(encode(hints=ObservationHints(urgency=0.5, deadline_ns=9), default_priority=4))
    assert obs.urgency == 0.5 and obs.deadline_ns == 9 and obs.priority == 4


def test_a_v2_reply_with_request_id_0_is_malformed_for_the_decoder_too():
    with pytest.raises(WireError, match="request_id: 0 in a version-2 reply.*why not"):
        decode_reply(reply_frames("m", 0, status=pb.INVALID_REQUEST, error="why not"), LIMITS)
    assert decode_reply(reply_frames("m", 0, status=0, protocol_version=0, timing=None), LIMITS).ok  # 1.x


def test_a_result_tells_the_wire_dtype_of_each_output():
    bits = BFloat16.from_float32(np.ones(2, np.float32))
    frames = reply_frames("m", 1)
    resp = pb.ModelResponse.FromString(frames[1])
    payload = pack_tensors([("b", bits), ("u", np.ones(2, np.uint16))], resp.tensors.add)
    res = decode_reply([b"", resp.SerializeToString(), *[bytes(p) for p in payload]], LIMITS)
    assert (res.wire_dtype("b"), res.wire_dtype("u")) == ("BFLOAT16", "UINT16")
    with pytest.raises(KeyError, match="no such output"):
        res.wire_dtype("nope")
