//! Connection options: a builder ending in `connect()`.
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::wire::limits::Limits;

/// How a [`Connection`] talks to the server. Every time is in milliseconds; the defaults
/// are those of protocol §8 and of every other Inferential client.
///
/// ```no_run
/// let conn = inferential::Connection::builder("tcp://10.0.0.2:5555")
///     .client_id("arm-01")
///     .client_type("arm")
///     .send_timeout_ms(200)
///     .connect()?;
/// # Ok::<(), inferential::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ConnectionBuilder {
    pub(crate) endpoint: String,
    pub(crate) client_id: Option<String>,
    pub(crate) client_type: String,
    pub(crate) reconnect_ivl_ms: u32,
    pub(crate) reconnect_ivl_max_ms: u32,
    pub(crate) heartbeat_ivl_ms: u32,
    pub(crate) heartbeat_timeout_ms: u32,
    pub(crate) send_timeout_ms: u32,
    pub(crate) send_hwm: u32,
    pub(crate) recv_hwm: u32,
    pub(crate) auth_token: String,
    pub(crate) single_payload_frame: bool,
    pub(crate) limits: Limits,
}

impl ConnectionBuilder {
    /// Options with their defaults for `endpoint` (`tcp://host:port`; without a scheme,
    /// TCP is assumed).
    pub fn new(endpoint: &str) -> Self {
        ConnectionBuilder {
            endpoint: endpoint.to_owned(),
            client_id: None,
            client_type: String::new(),
            reconnect_ivl_ms: 100,
            reconnect_ivl_max_ms: 5000,
            heartbeat_ivl_ms: 1000,
            heartbeat_timeout_ms: 5000,
            send_timeout_ms: 1000,
            send_hwm: 100,
            recv_hwm: 100,
            auth_token: String::new(),
            single_payload_frame: false,
            limits: Limits::default(),
        }
    }

    /// The robot's name (`client.id`); by default `{hostname}-{pid}-{6 hex digits}`.
    pub fn client_id(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_owned());
        self
    }

    /// Free-form kind of client ("arm", "sensor").
    pub fn client_type(mut self, client_type: &str) -> Self {
        self.client_type = client_type.to_owned();
        self
    }

    /// First reconnection delay (ZMQ_RECONNECT_IVL), >= 1 (libzmq reads 0 as "never
    /// reconnect", which `connect()` refuses). Default 100.
    pub fn reconnect_ivl_ms(mut self, ms: u32) -> Self {
        self.reconnect_ivl_ms = ms;
        self
    }

    /// Cap of the doubling reconnection delay (ZMQ_RECONNECT_IVL_MAX); 0 = no doubling.
    /// Default 5000.
    pub fn reconnect_ivl_max_ms(mut self, ms: u32) -> Self {
        self.reconnect_ivl_max_ms = ms;
        self
    }

    /// ZMTP PING interval (ZMQ_HEARTBEAT_IVL); 0 = off. Default 1000.
    pub fn heartbeat_ivl_ms(mut self, ms: u32) -> Self {
        self.heartbeat_ivl_ms = ms;
        self
    }

    /// Drop and re-establish the connection when nothing arrives this long after a PING
    /// (ZMQ_HEARTBEAT_TIMEOUT). Default 5000.
    pub fn heartbeat_timeout_ms(mut self, ms: u32) -> Self {
        self.heartbeat_timeout_ms = ms;
        self
    }

    /// Longest a send waits for a connected server with room (ZMQ_SNDTIMEO); then the
    /// send fails with `server_unavailable`. Default 1000.
    pub fn send_timeout_ms(mut self, ms: u32) -> Self {
        self.send_timeout_ms = ms;
        self
    }

    /// Messages queued towards the server (ZMQ_SNDHWM). Default 100.
    pub fn send_hwm(mut self, messages: u32) -> Self {
        self.send_hwm = messages;
        self
    }

    /// Messages queued from the server (ZMQ_RCVHWM). Default 100.
    pub fn recv_hwm(mut self, messages: u32) -> Self {
        self.recv_hwm = messages;
        self
    }

    /// Shared secret sent in every observation, when the server requires one.
    pub fn auth_token(mut self, token: &str) -> Self {
        self.auth_token = token.to_owned();
        self
    }

    /// Join every tensor into exactly one payload frame, as 1.x servers require.
    pub fn single_payload_frame(mut self, single: bool) -> Self {
        self.single_payload_frame = single;
        self
    }

    /// Bounds checked on observations and replies; keep them equal to the server's.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Validates the options, opens a DEALER with them and connects it (libzmq connects
    /// in the background: a server that is not up yet is fine).
    pub fn connect(self) -> Result<Connection> {
        self.validate()?;
        Connection::open(self)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.reconnect_ivl_ms == 0 {
            return Err(Error::invalid(
                "reconnect_ivl_ms must be >= 1 (0 would mean never reconnect)",
            ));
        }
        if self.reconnect_ivl_max_ms != 0 && self.reconnect_ivl_max_ms < self.reconnect_ivl_ms {
            return Err(Error::invalid(format!(
                "reconnect_ivl_max_ms must be 0 or >= reconnect_ivl_ms ({} < {})",
                self.reconnect_ivl_max_ms, self.reconnect_ivl_ms
            )));
        }
        for (name, value) in [
            ("reconnect_ivl_ms", self.reconnect_ivl_ms),
            ("reconnect_ivl_max_ms", self.reconnect_ivl_max_ms),
            ("heartbeat_ivl_ms", self.heartbeat_ivl_ms),
            ("heartbeat_timeout_ms", self.heartbeat_timeout_ms),
            ("send_timeout_ms", self.send_timeout_ms),
            ("send_hwm", self.send_hwm),
            ("recv_hwm", self.recv_hwm),
        ] {
            if i32::try_from(value).is_err() {
                return Err(Error::invalid(format!("{name} is too large: {value}")));
            }
        }
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > self.limits.max_id_bytes {
                return Err(Error::invalid(format!(
                    "client_id must be 1..={} bytes",
                    self.limits.max_id_bytes
                )));
            }
        }
        if self.client_type.len() > self.limits.max_id_bytes {
            return Err(Error::invalid(format!(
                "client_type is longer than {} bytes",
                self.limits.max_id_bytes
            )));
        }
        if self.auth_token.len() > self.limits.max_auth_token_bytes {
            return Err(Error::invalid(format!(
                "auth_token is longer than {} bytes",
                self.limits.max_auth_token_bytes
            )));
        }
        if i64::try_from(self.limits.max_message_bytes).is_err() {
            return Err(Error::invalid("limits.max_message_bytes is too large"));
        }
        if self.endpoint.is_empty() {
            return Err(Error::invalid("endpoint is empty"));
        }
        Ok(())
    }

    pub(crate) fn normalized_endpoint(&self) -> String {
        if self.endpoint.contains("://") {
            self.endpoint.clone()
        } else {
            format!("tcp://{}", self.endpoint)
        }
    }
}

/// `{hostname}-{pid}-{6 hex digits}`: unique per process, readable in server logs.
pub(crate) fn default_client_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .and_then(|h| h.trim().split('.').next().map(str::to_owned))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "robot".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = nanos ^ std::process::id().rotate_left(16);
    let host: String = host.chars().take(200).collect();
    format!("{host}-{}-{:06x}", std::process::id(), mixed & 0xff_ffff)
}
