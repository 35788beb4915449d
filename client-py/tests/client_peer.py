"""A scripted reference server for the client tests: a plain ZMQ ROUTER driven by the test.

It shares no code with the client beyond the generated protobuf classes and the
wire codec's pack_tensors/decode_tensors (themselves tested without sockets).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np
import zmq

from inferential._proto import inferential_pb2 as pb
from inferential.wire import RETRYABLE, decode_tensors, pack_tensors


@dataclass
class Received:
    identity: bytes
    frames: list[bytes]  # everything after the identity: [b"", envelope, *payload]
    obs: pb.Observation
    tensors: dict[str, np.ndarray]

    @property
    def payload_frames(self) -> list[bytes]:
        return self.frames[2:]


def reply_frames(
    model_id: str,
    request_id: int,
    status: int = pb.OK,
    tensors: Optional[Mapping[str, np.ndarray]] = None,
    metadata: Optional[Mapping[str, str]] = None,
    error: str = "",
    retryable: Optional[bool] = None,
    protocol_version: int = 2,
    timing: Optional[tuple[float, float, float, int]] = (0.5, 2.0, 2.6, 1),
    single_payload_frame: bool = False,
) -> list[bytes]:
    """``[b"", envelope, *payload]`` of a ModelResponse, as the server's ROUTER sends it after the identity."""
    resp = pb.ModelResponse(model_id=model_id, request_id=request_id, protocol_version=protocol_version)
    resp.response_id = f"r-{request_id}"
    if status:
        resp.status = status
    resp.retryable = (status in RETRYABLE) if retryable is None else retryable
    if error:
        resp.error = error
    if metadata:
        resp.metadata.update(metadata)
    if timing is not None and protocol_version >= 2:
        q, i, t, b = timing
        resp.timing.queue_wait_ms, resp.timing.inference_ms = q, i
        resp.timing.total_ms, resp.timing.batch_size = t, b
        resp.inference_latency_ms = i
    payload = pack_tensors(list((tensors or {}).items()), resp.tensors.add)
    payload = [bytes(p) for p in payload]
    if single_payload_frame:
        payload = [b"".join(payload)]
    return [b"", resp.SerializeToString(), *payload]


class RouterPeer:
    """A ROUTER on a random loopback port. Drive it by hand (recv/send) or with serve()."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:*") -> None:
        self.ctx = zmq.Context(io_threads=1)
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    @property
    def address(self) -> str:
        """``host:port`` without a scheme, as a robot might write it."""
        return self.endpoint.split("://", 1)[1]

    def recv(self, timeout_ms: int = 2000) -> Received:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            raise AssertionError(f"the peer received nothing within {timeout_ms} ms")
        frames = self.sock.recv_multipart()
        obs = pb.Observation.FromString(frames[2])
        tensors = decode_tensors(obs.tensors, frames[3:])
        return Received(frames[0], frames[1:], obs, tensors)

    def nothing_received(self, timeout_ms: int = 50) -> bool:
        return not self.sock.poll(timeout_ms, zmq.POLLIN)

    def send(self, identity: bytes, frames: list[bytes]) -> None:
        self.sock.send_multipart([identity, *frames])

    def reply(self, to: Received, **kwargs: Any) -> None:
        kwargs.setdefault("model_id", to.obs.model_id)
        kwargs.setdefault("request_id", to.obs.request_id)
        self.send(to.identity, reply_frames(**kwargs))

    def serve(self, handler: Callable[[Received], Optional[dict[str, Any]]]) -> "RouterPeer":
        """Answer in a thread: handler(received) -> reply keyword arguments, or None for no reply."""

        def loop() -> None:
            while not self._stop.is_set():
                if not self.sock.poll(20, zmq.POLLIN):
                    continue
                frames = self.sock.recv_multipart()
                obs = pb.Observation.FromString(frames[2])
                got = Received(frames[0], frames[1:], obs, decode_tensors(obs.tensors, frames[3:]))
                kwargs = handler(got)
                if kwargs is not None:
                    self.reply(got, **kwargs)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(2)
        self.sock.close(linger=0)
        self.ctx.term()


def echo_doubled(got: Received) -> dict[str, Any]:
    """Reply with every input tensor doubled under the name "actions" (the first one)."""
    first = next(iter(got.tensors.values()))
    return {"tensors": {"actions": first * 2}}


def unused_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"
