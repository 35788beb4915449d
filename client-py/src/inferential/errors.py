"""The exceptions of the client SDK: one root, a few precise subclasses.

    InferentialError
    ├── ServerUnavailable       an observation could not be handed to a connected server in time
    ├── RequestTimeout          request() saw no reply in time (also a builtin TimeoutError)
    ├── ConnectionClosed        the Connection was used after close()
    ├── ProtocolError           a message breaks the wire protocol
    │   └── WireError           ... with the offending field named (also a ValueError)
    └── RequestFailed           the server answered with a non-OK status
        ├── InvalidRequest, UnknownModel, Unauthenticated, Superseded   (retryable: no)
        └── ModelError, Expired, QueueFull, DeadlineUnmeetable,
            ShuttingDown, Cancelled                                    (retryable: yes)

``RequestFailed.retryable`` is what the server said (the ``retryable`` field of a
version-2 reply); for older replies it comes from the status table in the proto.
``RequestFailed.retry_after_ms`` is the server's hint (QUEUE_FULL, DEADLINE_UNMEETABLE)
of when a fresh observation may succeed; the client never retries by itself.
"""

from __future__ import annotations

from typing import Optional

from inferential._proto import inferential_pb2 as pb


class InferentialError(Exception):
    """Root of every exception this SDK raises on purpose."""


class ServerUnavailable(InferentialError):
    """No connected server accepted the observation within ``send_timeout_ms``.

    Either no server is connected (it is down, or the connection is still being
    set up or re-established) or the send queue is full because the server stopped
    reading. Nothing was queued: a later call sends a fresh observation.
    """


class RequestTimeout(InferentialError, TimeoutError):
    """``request()`` got no reply for its request id within the timeout."""

    def __init__(self, message: str, request_id: int = 0, model_id: str = "") -> None:
        super().__init__(message)
        self.request_id = request_id
        self.model_id = model_id


class ConnectionClosed(InferentialError):
    """The connection (or a model handle of it) was used after ``close()``."""


class ProtocolError(InferentialError):
    """A message breaks the wire protocol (docs/protocol.md)."""


class WireError(ProtocolError, ValueError):
    """A message that breaks the protocol. ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class RequestFailed(InferentialError):
    """The server answered an observation with a non-OK status.

    ``status`` is the proto Status number, ``status_name`` its name, ``message``
    the server's reason, ``retryable`` whether a fresh observation can succeed
    without anything else changing, ``retry_after_ms`` the server's hint of how long
    to wait first (0: none). ``result`` is the full reply.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        request_id: int = 0,
        model_id: str = "",
        retryable: bool = False,
        retry_after_ms: int = 0,
        result: Optional[object] = None,
    ) -> None:
        name = pb.Status.Name(status) if status in pb.Status.values() else f"Status({status})"
        text = f"{name} for request {request_id} to model '{model_id}'"
        super().__init__(f"{text}: {message}" if message else text)
        self.status = status
        self.status_name = name
        self.message = message
        self.request_id = request_id
        self.model_id = model_id
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms
        self.result = result


class InvalidRequest(RequestFailed):
    """The observation was malformed; the message names the field. Fix the sender."""


class UnknownModel(RequestFailed):
    """The server does not serve this model_id."""


class ModelError(RequestFailed):
    """The model raised, or its backend failed after the server's retries."""


class Expired(RequestFailed):
    """The request waited longer than the server's request TTL."""


class QueueFull(RequestFailed):
    """Shed by the server's overflow policy or per-robot cap. Back off, then retry."""


class DeadlineUnmeetable(RequestFailed):
    """The server predicted it could not finish before the deadline and did not run it."""


class Superseded(RequestFailed):
    """A newer observation from this robot for the same model replaced this one."""


class Unauthenticated(RequestFailed):
    """Missing or wrong auth_token for this client_id."""


class ShuttingDown(RequestFailed):
    """The server is stopping. Retry after it is back."""


class Cancelled(RequestFailed):
    """Dropped because the robot disconnected or was unregistered."""


STATUS_ERRORS: dict[int, type[RequestFailed]] = {
    pb.INVALID_REQUEST: InvalidRequest,
    pb.UNKNOWN_MODEL: UnknownModel,
    pb.MODEL_ERROR: ModelError,
    pb.EXPIRED: Expired,
    pb.QUEUE_FULL: QueueFull,
    pb.DEADLINE_UNMEETABLE: DeadlineUnmeetable,
    pb.SUPERSEDED: Superseded,
    pb.UNAUTHENTICATED: Unauthenticated,
    pb.SHUTTING_DOWN: ShuttingDown,
    pb.CANCELLED: Cancelled,
}


def error_for_status(status: int) -> type[RequestFailed]:
    """The exception class for a non-OK status; RequestFailed for a status this SDK does not know."""
    return STATUS_ERRORS.get(status, RequestFailed)
