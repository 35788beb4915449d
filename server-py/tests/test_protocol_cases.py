"""The server's decoder against the conformance corpus (conformance/cases/decode.yaml).

Tensor, metadata and framing rules hold in both directions, so the decode cases marked
``observation: true`` are replayed here as observations: the malformed ones must be
answered INVALID_REQUEST, the valid ones must decode to exactly the bytes laid out. The
frames are built by the conformance runner's own encoder (refwire), not by our codec.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from inferential.server.protocol import Rejection, decode_request
from inferential.wire import Limits

RUNNER = pathlib.Path(__file__).resolve().parents[2] / "conformance" / "runner"
sys.path.insert(0, str(RUNNER))

import cases as conformance  # noqa: E402
import refwire  # noqa: E402

LIMITS = Limits()
CASES = [c for c in conformance.load_cases() if c.kind == "decode" and c.spec.get("observation")]


def observation_frames(spec: dict) -> list[bytes]:
    """What a ROUTER receives for the observation twin of a reply case."""
    if "frames_hex" in spec:
        return [b"peer", *(bytes.fromhex(f) for f in spec["frames_hex"])]
    descriptors, payload = conformance.layout_reply(spec.get("tensors", []), spec.get("layout", "packed"))
    fields = {
        "client": {"id": "r1"},
        "model_id": "m",
        "request_id": 5,
        "protocol_version": int(spec.get("protocol_version", 2)),
        "tensors": descriptors,
        "metadata": spec.get("metadata", {}),
    }
    envelope = bytes.fromhex(spec["envelope_hex"]) if "envelope_hex" in spec else refwire.encode("Observation", fields)
    payload += [bytes.fromhex(f) for f in spec.get("extra_frames", [])]
    frames = [envelope, *payload]
    if not spec.get("drop_delimiter"):
        frames.insert(0, bytes.fromhex(spec.get("delimiter_hex", "")))
    return [b"peer", *frames]


def test_the_corpus_is_shared() -> None:
    assert len(CASES) >= 30  # a guard against a corpus silently filtered away


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decode_case_as_an_observation(case: conformance.Case) -> None:
    spec = case.spec["reply"]
    frames = observation_frames(spec)
    # A rule that differs by direction states the server's side in observation_expect.
    expect = case.spec.get("observation_expect", case.spec.get("expect", {}))
    if expect.get("malformed"):
        with pytest.raises(Rejection) as info:
            decode_request(frames, LIMITS)
        assert info.value.status == refwire.STATUS_VALUE["INVALID_REQUEST"]
        assert expect.get("error", "") in info.value.message
        if expect.get("request_id") is not None and info.value.obs is not None:
            assert info.value.obs.request_id == int(expect["request_id"])
        return
    _, decoded = decode_request(frames, LIMITS)
    for t in conformance.expand_tensors(spec.get("tensors", [])):
        array = decoded.inputs[t["key"]]
        assert list(array.shape) == list(t["shape"])
        assert np.ascontiguousarray(array).tobytes() == conformance.tensor_bytes(t), t["key"]
    for key, value in spec.get("metadata", {}).items():
        assert decoded.inputs[key] == value
