"""The answer to one observation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Mapping, NamedTuple, Optional, Union

import numpy as np

from inferential._proto import inferential_pb2 as pb
from inferential.errors import ProtocolError, error_for_status
from inferential.wire.dtypes import dtype_name
from inferential.wire.limits import Limits
from inferential.wire.status import Status


@dataclass
class Timing:
    """Server-side timing of one request, milliseconds: the proto's ServerTiming message.

    The one Python name for it, on both sides: the client reads it from replies; the
    server fills it in as the request moves through its stages, then encodes it.
    """

    queue_wait_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    batch_size: int = 0


class ChunkInfo(NamedTuple):
    """The action-chunk fields of a reply (ModelResponse fields 16-20), as Result exposes them."""

    first_action_step: Optional[int] = None
    action_period_ms: float = 0.0
    predicted_delay_steps: float = 0.0
    actual_delay_steps: float = 0.0
    valid_until_ns: Optional[int] = None


_NO_CHUNK = ChunkInfo()


class Result(Mapping[str, np.ndarray]):
    """One reply: a read-only mapping from output name to numpy array, plus its envelope.

    ``result["actions"]`` is a numpy view over the received frame, made without a
    copy; it stays valid as long as you hold it. ``metadata`` holds the string
    outputs. ``status`` is a :class:`inferential.wire.Status` (1.x replies, which
    carry none, read as OK); ``timing`` is None when the server sent none (1.x).
    ``round_trip_ms`` is measured by this client, from ``observe()`` to receipt.
    ``retry_after_ms`` is the server's hint with QUEUE_FULL and DEADLINE_UNMEETABLE (0:
    none); the client never retries by itself.

    Action chunks (docs/protocol.md §3 "Action chunks"): ``first_action_step`` (the
    observation's ``control_step``, echoed; None when not sent), ``action_period_ms``,
    ``predicted_delay_steps`` and ``actual_delay_steps`` (arrival at the server -> reply
    handed to its socket, in control steps; 0 when the robot sent no rate) and
    ``valid_until_ns`` (Unix ns after which these actions must not be executed; None = no
    limit). ``ActionChunkQueue.add_result`` takes them as they are.
    """

    __slots__ = (
        "model_id",
        "request_id",
        "status",
        "error",
        "retryable",
        "retry_after_ms",
        "metadata",
        "timing",
        "inference_latency_ms",
        "response_id",
        "timestamp_ns",
        "observation_timestamp_ns",
        "protocol_version",
        "round_trip_ms",
        "first_action_step",
        "action_period_ms",
        "predicted_delay_steps",
        "actual_delay_steps",
        "valid_until_ns",
        "_tensors",
        "_wire_dtypes",
    )

    def __init__(
        self,
        *,
        model_id: str,
        request_id: int,
        status: Union[Status, int],
        tensors: Mapping[str, np.ndarray],
        metadata: Mapping[str, str],
        wire_dtypes: Optional[Mapping[str, int]] = None,
        error: str = "",
        retryable: bool = False,
        retry_after_ms: int = 0,
        timing: Optional[Timing] = None,
        inference_latency_ms: float = 0.0,
        response_id: str = "",
        timestamp_ns: int = 0,
        observation_timestamp_ns: int = 0,
        protocol_version: int = 0,
        round_trip_ms: Optional[float] = None,
        chunk: Optional["ChunkInfo"] = None,
    ) -> None:
        self.model_id = model_id
        self.request_id = request_id
        self.status = status
        self.error = error
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.metadata = dict(metadata)
        self.timing = timing
        self.inference_latency_ms = inference_latency_ms
        self.response_id = response_id
        self.timestamp_ns = timestamp_ns
        self.observation_timestamp_ns = observation_timestamp_ns
        self.protocol_version = protocol_version
        self.round_trip_ms = round_trip_ms
        chunk = chunk or _NO_CHUNK
        self.first_action_step = chunk.first_action_step
        self.action_period_ms = chunk.action_period_ms
        self.predicted_delay_steps = chunk.predicted_delay_steps
        self.actual_delay_steps = chunk.actual_delay_steps
        self.valid_until_ns = chunk.valid_until_ns
        self._tensors = dict(tensors)
        self._wire_dtypes = wire_dtypes or {}

    # Mapping over the output tensors.
    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._tensors[key]
        except KeyError:
            hint = " (it is a metadata string: result.metadata[...])" if key in self.metadata else ""
            raise KeyError(f"{key!r}: no such output tensor{hint}; outputs: {sorted(self._tensors)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        return dict(self._tensors)

    def wire_dtype(self, key: str) -> str:
        """The proto DType name an output travelled as ("BFLOAT16", "UINT16", ...): without
        ml_dtypes a BFLOAT16 output is a uint16 array (tagged only in its dtype's metadata)."""
        self[key]  # the KeyError of a missing output, with its hint
        number = self._wire_dtypes.get(key)
        if number is None:
            raise KeyError(f"{key!r}: this Result was built without wire dtypes")
        return dtype_name(number)

    @property
    def ok(self) -> bool:
        return self.status == pb.OK

    @property
    def status_name(self) -> str:
        return self.status.name if isinstance(self.status, Status) else f"Status({self.status})"

    def raise_for_status(self) -> "Result":
        """Return self when OK, else raise the RequestFailed subclass for the status."""
        if self.ok:
            return self
        cls = error_for_status(int(self.status))
        raise cls(
            int(self.status),
            self.error,
            request_id=self.request_id,
            model_id=self.model_id,
            retryable=self.retryable,
            retry_after_ms=self.retry_after_ms,
            result=self,
        )

    def __repr__(self) -> str:
        outputs = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._tensors.items())
        err = f", error={self.error!r}" if self.error else ""
        return (
            f"Result(model_id={self.model_id!r}, request_id={self.request_id}, "
            f"status={self.status_name}{err}, outputs={{{outputs}}})"
        )


@dataclass(frozen=True)
class ServerInfo:
    """What a server says of itself (``Connection.server_info()``, docs/protocol.md §12).

    ``protocol_version`` of the server, ``server`` its name and version, ``limits`` the
    bounds it enforces: keep ``ClientOptions.limits`` equal to them.
    """

    protocol_version: int
    server: str
    limits: Limits

    @classmethod
    def from_result(cls, result: "Result") -> "ServerInfo":
        meta = result.metadata
        try:
            known = {f.name for f in dataclasses.fields(Limits)}
            limits = Limits(**{k: int(v) for k, v in meta.items() if k in known})
            return cls(int(meta["protocol_version"]), meta.get("server", ""), limits)
        except (KeyError, ValueError) as err:
            raise ProtocolError(f"the server's describe reply is malformed: {err}") from None
