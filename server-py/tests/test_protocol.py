"""Server-side decoding and validation: every rule yields INVALID_REQUEST naming the problem."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inferential._proto import inferential_pb2 as pb
from inferential.result import Timing
from inferential.server.protocol import Describe, Rejection, decode_request, describe_reply, encode_reply
from inferential.wire import DESCRIBE_KEY, Limits, pack_tensors

LIMITS = Limits()


def observation(**tensors) -> tuple[pb.Observation, list]:
    obs = pb.Observation(model_id="policy", protocol_version=2, request_id=7)
    obs.client.id = "arm-1"
    frames = pack_tensors(tensors.items(), obs.tensors.add)
    return obs, frames


def frames_of(obs: pb.Observation, payload: list) -> list:
    return [b"peer", b"", obs.SerializeToString(), *payload]


def test_valid_observation_decodes_to_views_over_the_frames():
    image = np.arange(224 * 224 * 3, dtype=np.uint8).reshape(224, 224, 3)
    obs, payload = observation(image=image, joints=np.ones(7, np.float32))
    obs.metadata["prompt"] = "pick"
    identity, decoded = decode_request(frames_of(obs, payload), LIMITS)
    assert identity == b"peer"
    np.testing.assert_array_equal(decoded.inputs["image"], image)
    np.testing.assert_array_equal(decoded.inputs["joints"], np.ones(7, np.float32))
    assert decoded.inputs["prompt"] == "pick"
    assert decoded.payload_bytes == image.nbytes + 28


def test_one_x_single_payload_frame_decodes():
    obs = pb.Observation(model_id="policy")
    obs.client.id = "legacy"
    a, b = np.arange(4, dtype=np.float32), np.arange(3, dtype=np.int64)
    for key, arr, off in (("a", a, 0), ("b", b, 16)):
        t = obs.tensors.add(
            key=key,
            dtype=pb.FLOAT32 if arr.dtype == np.float32 else pb.INT64,
            byte_offset=off,
            byte_length=arr.nbytes,
            encoding=pb.RAW,
        )
        t.shape.extend(arr.shape)
    _, decoded = decode_request(frames_of(obs, [a.tobytes() + b.tobytes()]), LIMITS)
    np.testing.assert_array_equal(decoded.inputs["b"], b)


def _mutate(fn):
    obs, payload = observation(x=np.zeros((4, 4), np.float32))
    fn(obs)
    return frames_of(obs, payload)


CASES = [
    (
        "shape disagrees with byte length",
        lambda o: o.tensors[0].shape.__setitem__(0, 5),
        "needs 80 bytes but byte_length is 64",
    ),
    ("negative dimension", lambda o: o.tensors[0].shape.__setitem__(0, -4), "negative dimension"),
    ("unknown dtype", lambda o: setattr(o.tensors[0], "dtype", 99), "unknown or unspecified dtype"),
    (
        "unspecified dtype",
        lambda o: setattr(o.tensors[0], "dtype", pb.DTYPE_UNSPECIFIED),
        "unknown or unspecified dtype",
    ),
    ("jpeg encoding", lambda o: setattr(o.tensors[0], "encoding", pb.JPEG), "encoding JPEG is not supported"),
    ("offset past payload", lambda o: setattr(o.tensors[0], "byte_offset", 10), "outside the 64-byte payload"),
    ("offset overflow", lambda o: setattr(o.tensors[0], "byte_offset", 2**64 - 8), "outside"),
    ("empty key", lambda o: setattr(o.tensors[0], "key", ""), "empty key"),
    ("empty client id", lambda o: o.client.__setattr__("id", ""), "client.id: must not be empty"),
    ("empty model id", lambda o: setattr(o, "model_id", ""), "model_id: must not be empty"),
    ("NaN urgency", lambda o: setattr(o, "urgency", math.nan), "urgency is nan"),
    ("negative budget", lambda o: setattr(o, "latency_budget_ms", -1.0), "latency_budget_ms is negative"),
    ("too many dims", lambda o: o.tensors[0].shape.extend([1] * 8), "dimensions, limit is 8"),
    ("huge shape product", lambda o: o.tensors[0].shape.extend([2**40, 2**40]), "needs"),
]


@pytest.mark.parametrize("name,mutate,expected", CASES, ids=[c[0] for c in CASES])
def test_each_violation_is_rejected_with_a_precise_message(name, mutate, expected):
    with pytest.raises(Rejection) as info:
        decode_request(_mutate(mutate), LIMITS)
    assert info.value.status == pb.INVALID_REQUEST
    assert expected in info.value.message
    assert info.value.obs is not None  # the reply can echo request_id


def test_duplicate_keys_are_rejected():
    obs, payload = observation(x=np.zeros(2, np.float32))
    dup = obs.tensors.add()
    dup.CopyFrom(obs.tensors[0])
    with pytest.raises(Rejection, match="duplicate key"):
        decode_request(frames_of(obs, payload), LIMITS)


def test_tensor_spanning_two_frames_is_rejected():
    obs, _ = observation(x=np.zeros(4, np.float32))
    with pytest.raises(Rejection, match="span two payload frames"):
        decode_request(frames_of(obs, [b"\0" * 8, b"\0" * 8]), LIMITS)


def test_garbage_envelope_and_missing_delimiter_are_rejected():
    with pytest.raises(Rejection, match="not a valid Observation"):
        decode_request([b"peer", b"", b"\xff\xff\xff\xff", b""], LIMITS)
    with pytest.raises(Rejection, match="empty delimiter"):
        decode_request([b"peer", b"x", b"", b""], LIMITS)
    with pytest.raises(Rejection, match="frames"):
        decode_request([b"peer"], LIMITS)


def test_message_size_limit():
    obs, payload = observation(x=np.zeros(1024, np.uint8))
    with pytest.raises(Rejection, match="exceeds"):
        decode_request(frames_of(obs, payload), Limits(max_message_bytes=512))


def test_too_many_tensors_and_metadata_limits():
    obs, payload = observation(**{f"t{i}": np.zeros(1, np.uint8) for i in range(5)})
    with pytest.raises(Rejection, match="5 tensors, limit is 4"):
        decode_request(frames_of(obs, payload), Limits(max_tensors=4))
    obs, payload = observation(x=np.zeros(1, np.uint8))
    obs.metadata["k"] = "v" * 5000
    with pytest.raises(Rejection, match="value longer than 4096"):
        decode_request(frames_of(obs, payload), LIMITS)


def test_reply_to_v2_peer_keeps_frames_and_status():
    big = np.ones((64, 64), np.float32)
    frames = encode_reply(
        identity=b"peer",
        client_id="arm-1",
        model_id="policy",
        request_id=9,
        protocol_version=2,
        status=pb.OK,
        outputs={"actions": big, "small": np.zeros(3, np.int8), "note": "hi"},
        timing=Timing(1.0, 2.0, 3.5, 4),
    )
    assert frames[0] == b"peer" and frames[1] == b""
    resp = pb.ModelResponse.FromString(frames[2])
    assert resp.request_id == 9 and resp.status == pb.OK and resp.metadata["note"] == "hi"
    assert resp.timing.batch_size == 4 and resp.timing.total_ms == pytest.approx(3.5)
    assert len(frames) == 5  # envelope + the big array as its own frame + small ones joined


def test_reply_to_one_x_peer_is_one_payload_frame_with_status_in_metadata():
    frames = encode_reply(
        identity=b"legacy",
        client_id="legacy",
        model_id="policy",
        request_id=0,
        protocol_version=0,
        status=pb.QUEUE_FULL,
        error="queue is full",
    )
    assert len(frames) == 4
    resp = pb.ModelResponse.FromString(frames[2])
    assert resp.metadata["status"] == "QUEUE_FULL" and resp.metadata["error"] == "queue is full"
    assert resp.retryable


# --- the protocol fixes: zero-size tensors, UTF-8, limits, checked arithmetic --------


@pytest.mark.parametrize("payload", [[], [b""]], ids=["no payload frame", "empty payload frame"])
def test_zero_size_tensors_are_accepted_with_or_without_payload_frames(payload):
    obs = pb.Observation(model_id="policy", protocol_version=2, request_id=7)
    obs.client.id = "arm-1"
    obs.tensors.add(key="none", dtype=pb.FLOAT32, shape=[0, 3], byte_offset=0, byte_length=0, encoding=pb.RAW)
    _, decoded = decode_request(frames_of(obs, payload), LIMITS)
    assert decoded.inputs["none"].shape == (0, 3) and decoded.payload_bytes == 0


def _with_invalid_utf8(obs: pb.Observation, placeholder: str) -> bytes:
    return obs.SerializeToString().replace(placeholder.encode(), b"\xff" * len(placeholder))


@pytest.mark.parametrize(
    "where, build",
    [
        ("client.id", lambda o: setattr(o.client, "id", "ZZZZ")),
        ("client.type", lambda o: setattr(o.client, "type", "ZZZZ")),
        ("metadata value", lambda o: o.metadata.__setitem__("k", "ZZZZ")),
        ("tensors[0].key", lambda o: o.tensors.add(key="ZZZZ", dtype=pb.UINT8, shape=[0])),
    ],
)
def test_an_envelope_with_invalid_utf8_is_rejected_naming_the_field_and_echoing_the_ids(where, build):
    obs = pb.Observation(model_id="policy", protocol_version=2, request_id=2**63 + 5, timestamp_ns=99)
    obs.client.id = "arm-1"
    build(obs)
    with pytest.raises(Rejection) as info:
        decode_request([b"peer", b"", _with_invalid_utf8(obs, "ZZZZ")], LIMITS)
    rej = info.value
    assert rej.status == pb.INVALID_REQUEST and rej.message.startswith(f"{where} is not valid UTF-8")
    assert rej.obs.request_id == 2**63 + 5 and rej.obs.protocol_version == 2 and rej.obs.model_id == "policy"
    assert rej.obs.timestamp_ns == 99


def test_garbage_that_is_not_protobuf_is_rejected_without_ids():
    with pytest.raises(Rejection) as info:
        decode_request([b"peer", b"", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"], LIMITS)
    assert "not a valid Observation" in info.value.message and info.value.obs is None


LIMIT_CASES = [
    ("client id at 257 bytes", lambda o: setattr(o.client, "id", "c" * 257), "client.id: longer than 256 bytes"),
    ("client type at 257 bytes", lambda o: setattr(o.client, "type", "t" * 257), "client.type: longer than 256 bytes"),
    ("model id at 257 bytes", lambda o: setattr(o, "model_id", "é" * 129), "model_id: longer than 256 bytes"),
    ("auth token at 1025 bytes", lambda o: setattr(o, "auth_token", "s" * 1025), "auth_token: longer than 1024 bytes"),
    ("empty metadata key", lambda o: o.metadata.__setitem__("", "v"), "metadata: empty key"),
]


@pytest.mark.parametrize("name,mutate,expected", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_string_limits_are_enforced(name, mutate, expected):
    with pytest.raises(Rejection) as info:
        decode_request(_mutate(mutate), LIMITS)
    assert info.value.status == pb.INVALID_REQUEST and expected in info.value.message
    assert info.value.obs is not None


def test_string_limits_allow_their_exact_bound():
    obs, payload = observation(x=np.zeros(1, np.uint8))
    obs.client.id, obs.client.type, obs.model_id = "c" * 256, "t" * 256, "é" * 128
    obs.auth_token = "s" * 1024
    _, decoded = decode_request(frames_of(obs, payload), LIMITS)
    assert decoded.obs.model_id == "é" * 128


def test_more_than_64_payload_frames_are_rejected():
    obs, _ = observation()
    decode_request(frames_of(obs, [b""] * 64), LIMITS)
    with pytest.raises(Rejection, match="65 payload frames, limit is 64"):
        decode_request(frames_of(obs, [b""] * 65), LIMITS)


def test_bool_bytes_other_than_0_and_1_are_rejected():
    obs = pb.Observation(model_id="policy", protocol_version=2, request_id=7)
    obs.client.id = "arm-1"
    obs.tensors.add(key="mask", dtype=pb.BOOL, shape=[2], byte_offset=0, byte_length=2, encoding=pb.RAW)
    with pytest.raises(Rejection, match="BOOL bytes must be 0 or 1"):
        decode_request(frames_of(obs, [b"\x00\xff"]), LIMITS)


def test_replies_align_tensor_offsets_and_carry_the_retry_hint():
    frames = encode_reply(
        identity=b"peer",
        client_id="arm-1",
        model_id="policy",
        request_id=9,
        protocol_version=2,
        status=pb.QUEUE_FULL,
        error="full",
        retry_after_ms=30,
        outputs={"a": np.arange(3, dtype=np.uint8), "b": np.ones(2, np.float64)},
    )
    resp = pb.ModelResponse.FromString(frames[2])
    assert resp.retry_after_ms == 30 and resp.retryable
    assert [t.byte_offset for t in resp.tensors] == [0, 8]


def test_a_bfloat16_input_a_model_echoes_is_answered_as_bfloat16():
    from inferential.wire import BFloat16

    obs, payload = observation(b=BFloat16.from_float32(np.array([1.5, 3.0], np.float32)), u=np.ones(2, np.uint16))
    _, decoded = decode_request(frames_of(obs, payload), LIMITS)
    frames = encode_reply(
        identity=b"peer",
        client_id="arm-1",
        model_id="policy",
        request_id=7,
        protocol_version=2,
        status=pb.OK,
        outputs=dict(decoded.inputs),
    )
    resp = pb.ModelResponse.FromString(frames[2])
    assert {t.key: t.dtype for t in resp.tensors} == {"b": pb.BFLOAT16, "u": pb.UINT16}


def test_a_describe_request_is_recognised_and_answered_with_version_and_limits():
    obs = pb.Observation(request_id=12, protocol_version=2, timestamp_ns=5)
    obs.client.id = "asker"
    obs.metadata[DESCRIBE_KEY] = "1"
    with pytest.raises(Describe) as info:
        decode_request(frames_of(obs, []), LIMITS)
    frames = describe_reply(b"peer", info.value.obs, LIMITS, "inferential-server/test", now_ns=7)
    assert frames[0] == b"peer" and frames[1] == b""
    resp = pb.ModelResponse.FromString(frames[2])
    assert (resp.status, resp.request_id, resp.model_id, resp.client.id) == (pb.OK, 12, "", "asker")
    assert resp.metadata["protocol_version"] == "2" and resp.metadata["server"] == "inferential-server/test"
    assert int(resp.metadata["max_message_bytes"]) == LIMITS.max_message_bytes
    assert int(resp.metadata["max_auth_token_bytes"]) == LIMITS.max_auth_token_bytes


def test_the_describe_key_with_a_model_id_is_plain_metadata():
    obs, payload = observation(x=np.zeros(2, np.float32))
    obs.metadata[DESCRIBE_KEY] = "1"
    _, decoded = decode_request(frames_of(obs, payload), LIMITS)
    assert decoded.inputs[DESCRIBE_KEY] == "1"


def test_an_empty_model_id_without_the_describe_key_is_still_invalid():
    obs = pb.Observation(request_id=1, protocol_version=2)
    obs.client.id = "r"
    with pytest.raises(Rejection, match="model_id"):
        decode_request(frames_of(obs, []), LIMITS)
