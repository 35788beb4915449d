"""The bounds every receiver enforces, and the checks of a message's frames and strings.

Shared by the client (outgoing observations, incoming replies) and the server (incoming
observations), so both sides word a broken rule the same way. Pure: no sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from inferential.errors import WireError

# Every count and length on the wire is a uint64: a sum or product that does not fit is
# rejected, as it would overflow in a language without big integers (docs/protocol.md).
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Limits:
    """Bounds a receiver enforces on every message (docs/protocol.md, Limits)."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_tensors: int = 64
    max_payload_frames: int = 64
    max_dims: int = 8
    max_key_bytes: int = 256
    max_metadata_entries: int = 64
    max_metadata_value_bytes: int = 4096
    max_id_bytes: int = 256  # client.id, client.type, model_id
    max_auth_token_bytes: int = 1024


DEFAULT_LIMITS = Limits()


def nbytes(frame: Any) -> int:
    """Length of a frame given as bytes, a memoryview or a zmq.Frame."""
    buf = frame.buffer if hasattr(frame, "buffer") else frame
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def buffer(frame: Any) -> Any:
    """The bytes of a frame without a copy (a zmq.Frame's buffer, else the frame itself)."""
    return frame.buffer if hasattr(frame, "buffer") else frame


def split_frames(frames: Sequence[Any], limits: Limits) -> tuple[Any, list[Any]]:
    """(envelope, payload segments) of ``[b"", envelope, *payload]``, the frames after the
    routing identity in either direction, after checking the framing rules."""
    if len(frames) < 2:
        raise WireError("frames", f"expected [b'', envelope, payload...], got {len(frames)} frame(s)")
    if nbytes(frames[0]) != 0:
        raise WireError("frames[0]", "the first frame must be the empty delimiter")
    segments = [buffer(f) for f in frames[2:]]
    if len(segments) > limits.max_payload_frames:
        raise WireError("frames", f"{len(segments)} payload frames, limit is {limits.max_payload_frames}")
    envelope = buffer(frames[1])
    total = nbytes(envelope) + sum(nbytes(s) for s in segments)
    if total > limits.max_message_bytes:
        raise WireError("message", f"message of {total} bytes exceeds the {limits.max_message_bytes}-byte limit")
    return envelope, segments


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8, without encoding it when the answer is obvious."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def check_text(field: str, text: str, max_bytes: int, *, required: bool = False) -> None:
    """A string field's bounds: non-empty when ``required``, at most ``max_bytes`` of UTF-8.

    UTF-8 validity itself is checked by the protobuf parser (an invalid string makes the
    whole envelope unparseable); a str built in Python may still hold lone surrogates.
    """
    if not text:
        if required:
            raise WireError(field, "must not be empty")
        return
    if len(text) * 4 > max_bytes and utf8_len(text) > max_bytes:
        raise WireError(field, f"longer than {max_bytes} bytes")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError(field, "not valid UTF-8") from None


def check_metadata(metadata: Mapping[str, str], limits: Limits = DEFAULT_LIMITS) -> None:
    """Entry count, non-empty keys and the key and value lengths of a metadata map."""
    if len(metadata) > limits.max_metadata_entries:
        raise WireError("metadata", f"{len(metadata)} entries, limit is {limits.max_metadata_entries}")
    max_key, max_value = limits.max_key_bytes, limits.max_metadata_value_bytes
    for k, v in metadata.items():
        if not k:
            raise WireError("metadata", "empty key")
        if len(k) * 4 > max_key and utf8_len(k) > max_key:
            raise WireError(f"metadata '{k[:40]}'", f"key longer than {max_key} bytes")
        if len(v) * 4 > max_value and utf8_len(v) > max_value:
            raise WireError(f"metadata '{k}'", f"value longer than {max_value} bytes")
