//! The crate's one error type: `Error { kind, .. }`.
use crate::wire::status::Status;
use crate::{Reply, RequestId};

/// `std::result::Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. The names (see [`ErrorKind::as_str`]) are the same in every
/// Inferential client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The reply said INVALID_REQUEST: the observation was malformed. Fix the sender.
    InvalidRequest,
    /// The reply said UNKNOWN_MODEL.
    UnknownModel,
    /// The reply said MODEL_ERROR.
    ModelError,
    /// The reply said EXPIRED.
    Expired,
    /// The reply said QUEUE_FULL: back off (see [`Error::retry_after_ms`]).
    QueueFull,
    /// The reply said DEADLINE_UNMEETABLE.
    DeadlineUnmeetable,
    /// The reply said SUPERSEDED (only `request()` sees it; `get_result()` skips it).
    Superseded,
    /// The reply said UNAUTHENTICATED.
    Unauthenticated,
    /// The reply said SHUTTING_DOWN.
    ShuttingDown,
    /// The reply said CANCELLED.
    Cancelled,
    /// The reply carried a status value this client does not know.
    UnknownStatus,
    /// `request()` got no reply in time.
    Timeout,
    /// No connected server accepted the observation within the send timeout.
    ServerUnavailable,
    /// The reply to the awaited request broke the wire protocol.
    Protocol,
    /// The input was refused locally, before sending (bad option, shape, limit).
    InvalidArgument,
    /// The connection is closed.
    Closed,
    /// This build cannot do what was asked (CURVE needs a libzmq built with it: see
    /// [`crate::curve_supported`]).
    Unsupported,
    /// A ZeroMQ call failed for a reason not listed above.
    Transport,
}

impl ErrorKind {
    /// The canonical name shared by every client (`"queue_full"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::UnknownModel => "unknown_model",
            ErrorKind::ModelError => "model_error",
            ErrorKind::Expired => "expired",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::DeadlineUnmeetable => "deadline_unmeetable",
            ErrorKind::Superseded => "superseded",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::UnknownStatus => "unknown_status",
            ErrorKind::Timeout => "timeout",
            ErrorKind::ServerUnavailable => "server_unavailable",
            ErrorKind::Protocol => "protocol",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Closed => "closed",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Transport => "transport",
        }
    }

    /// The kind a non-OK status raises; `None` for OK.
    pub fn for_status(status: Status) -> Option<ErrorKind> {
        Some(match status {
            Status::Ok => return None,
            Status::InvalidRequest => ErrorKind::InvalidRequest,
            Status::UnknownModel => ErrorKind::UnknownModel,
            Status::ModelError => ErrorKind::ModelError,
            Status::Expired => ErrorKind::Expired,
            Status::QueueFull => ErrorKind::QueueFull,
            Status::DeadlineUnmeetable => ErrorKind::DeadlineUnmeetable,
            Status::Superseded => ErrorKind::Superseded,
            Status::Unauthenticated => ErrorKind::Unauthenticated,
            Status::ShuttingDown => ErrorKind::ShuttingDown,
            Status::Cancelled => ErrorKind::Cancelled,
            Status::Unknown(_) => ErrorKind::UnknownStatus,
        })
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error of this crate. A status error carries the reply's status, `retryable`,
/// `retry_after_ms` and request id; the client never retries by itself.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    status: Option<Status>,
    retryable: bool,
    retry_after_ms: u32,
    request_id: Option<RequestId>,
    model_id: String,
    reply: Option<Box<Reply>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            status: None,
            retryable: false,
            retry_after_ms: 0,
            request_id: None,
            model_id: String::new(),
            reply: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    pub(crate) fn with_request(mut self, request_id: RequestId, model_id: &str) -> Self {
        self.request_id = Some(request_id);
        self.model_id = model_id.to_owned();
        self
    }

    /// The error a non-OK reply raises; `None` when the reply is OK.
    pub(crate) fn from_reply(reply: Reply) -> std::result::Result<Reply, Error> {
        let Some(kind) = ErrorKind::for_status(reply.status()) else {
            return Ok(reply);
        };
        Err(Error {
            kind,
            message: reply.error().to_owned(),
            status: Some(reply.status()),
            retryable: reply.retryable(),
            retry_after_ms: reply.retry_after_ms(),
            request_id: Some(reply.request_id()),
            model_id: reply.model_id().to_owned(),
            reply: Some(Box::new(reply)),
        })
    }

    /// The error a reply with `status` raises (`None` for OK): what `get_result()` and
    /// `request()` return for it, without the reply. `retryable` is the reply's field (for
    /// a 1.x reply, [`Status::table_retryable`]).
    pub fn from_status(
        status: Status,
        message: &str,
        retryable: bool,
        request_id: RequestId,
        model_id: &str,
    ) -> Option<Error> {
        let kind = ErrorKind::for_status(status)?;
        Some(Error {
            kind,
            message: message.to_owned(),
            status: Some(status),
            retryable,
            retry_after_ms: 0,
            request_id: Some(request_id),
            model_id: model_id.to_owned(),
            reply: None,
        })
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable reason (for a status error, the server's `error` text).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The reply's status, for errors raised by a reply.
    pub fn status(&self) -> Option<Status> {
        self.status
    }

    /// Whether a fresh observation can succeed with nothing else changed (the reply's
    /// `retryable` field; for 1.x replies the proto's status table). False for local errors.
    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// The server's back-off hint in ms (QUEUE_FULL, DEADLINE_UNMEETABLE); 0 = none.
    pub fn retry_after_ms(&self) -> u32 {
        self.retry_after_ms
    }

    /// The request this error is about, when there is one.
    pub fn request_id(&self) -> Option<RequestId> {
        self.request_id
    }

    /// The model of that request ("" when there is none).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The full reply, for errors raised by a reply.
    pub fn reply(&self) -> Option<&Reply> {
        self.reply.as_deref()
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.status, self.request_id) {
            (Some(status), Some(rid)) => {
                write!(f, "{status} for request {rid} to model '{}'", self.model_id)?;
                if !self.message.is_empty() {
                    write!(f, ": {}", self.message)?;
                }
                Ok(())
            }
            _ => write!(f, "{}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for Error {}

impl From<zmq::Error> for Error {
    fn from(err: zmq::Error) -> Self {
        let kind = match err {
            zmq::Error::EINVAL | zmq::Error::EPROTONOSUPPORT | zmq::Error::ENOCOMPATPROTO => {
                ErrorKind::InvalidArgument
            }
            zmq::Error::ETERM | zmq::Error::ENOTSOCK => ErrorKind::Closed,
            _ => ErrorKind::Transport,
        };
        Error::new(kind, format!("zmq: {err}"))
    }
}
