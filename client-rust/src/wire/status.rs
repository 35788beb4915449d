//! Reply statuses (the proto `Status` enum).
use super::tables;

/// The outcome a reply carries. STATUS_UNSPECIFIED (sent by 1.x servers) reads as `Ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// The tensors hold the model's outputs.
    Ok,
    /// The observation was malformed; the error names the field.
    InvalidRequest,
    /// The model id is not served.
    UnknownModel,
    /// The model raised, or its backend failed after retries.
    ModelError,
    /// Waited longer than the server's request TTL.
    Expired,
    /// Shed by the overflow policy or the per-robot cap.
    QueueFull,
    /// Could not finish before its deadline; rejected without running.
    DeadlineUnmeetable,
    /// A newer observation for the same model replaced it.
    Superseded,
    /// Missing or wrong auth token.
    Unauthenticated,
    /// The server is stopping.
    ShuttingDown,
    /// Dropped because the robot disconnected or was unregistered.
    Cancelled,
    /// A value this client does not know: a failure.
    Unknown(i32),
}

impl Status {
    /// The status of a wire value (0, STATUS_UNSPECIFIED, reads as `Ok`).
    pub fn from_code(code: i32) -> Status {
        match code {
            0 | 1 => Status::Ok,
            2 => Status::InvalidRequest,
            3 => Status::UnknownModel,
            4 => Status::ModelError,
            5 => Status::Expired,
            6 => Status::QueueFull,
            7 => Status::DeadlineUnmeetable,
            8 => Status::Superseded,
            9 => Status::Unauthenticated,
            10 => Status::ShuttingDown,
            11 => Status::Cancelled,
            other => Status::Unknown(other),
        }
    }

    /// The wire value.
    pub fn code(self) -> i32 {
        match self {
            Status::Ok => 1,
            Status::InvalidRequest => 2,
            Status::UnknownModel => 3,
            Status::ModelError => 4,
            Status::Expired => 5,
            Status::QueueFull => 6,
            Status::DeadlineUnmeetable => 7,
            Status::Superseded => 8,
            Status::Unauthenticated => 9,
            Status::ShuttingDown => 10,
            Status::Cancelled => 11,
            Status::Unknown(code) => code,
        }
    }

    /// The status of a proto name (`"QUEUE_FULL"`), or of a decimal number for unknown values.
    pub fn from_name(name: &str) -> Option<Status> {
        if let Ok(code) = name.parse::<i32>() {
            return Some(Status::from_code(code));
        }
        (0..=11)
            .find(|&c| tables::status_name(c) == Some(name))
            .map(Status::from_code)
    }

    /// The proto name; an unknown value as its decimal number (`"99"`).
    pub fn name(self) -> String {
        match tables::status_name(self.code()) {
            Some(name) => name.to_owned(),
            None => self.code().to_string(),
        }
    }

    /// Whether the status table of the proto marks it retryable (`None` for OK and
    /// unknown values). v2 replies carry their own `retryable` field, which wins.
    pub fn table_retryable(self) -> Option<bool> {
        tables::retryable(self.code())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
