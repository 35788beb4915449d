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
#[derive(Clone)]
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
    pub(crate) curve_server_key: Option<String>,
    pub(crate) curve_public_key: Option<String>,
    pub(crate) curve_secret_key: Option<String>,
}

impl std::fmt::Debug for ConnectionBuilder {
    // Secrets (the auth token, the CURVE secret key) never reach a log through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "" };
        f.debug_struct("ConnectionBuilder")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_type", &self.client_type)
            .field("reconnect_ivl_ms", &self.reconnect_ivl_ms)
            .field("reconnect_ivl_max_ms", &self.reconnect_ivl_max_ms)
            .field("heartbeat_ivl_ms", &self.heartbeat_ivl_ms)
            .field("heartbeat_timeout_ms", &self.heartbeat_timeout_ms)
            .field("send_timeout_ms", &self.send_timeout_ms)
            .field("send_hwm", &self.send_hwm)
            .field("recv_hwm", &self.recv_hwm)
            .field("auth_token", &redacted(!self.auth_token.is_empty()))
            .field("single_payload_frame", &self.single_payload_frame)
            .field("limits", &self.limits)
            .field("curve_server_key", &self.curve_server_key)
            .field("curve_public_key", &self.curve_public_key)
            .field(
                "curve_secret_key",
                &redacted(self.curve_secret_key.is_some()),
            )
            .finish()
    }
}

/// The length of a CURVE key in Z85 text (32 bytes).
const Z85_KEY_LEN: usize = 40;

/// The Z85 alphabet (ZeroMQ RFC 32), in digit order.
const Z85_ALPHABET: &[u8; 85] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/// Whether `key` is the Z85 text of a 32-byte key: 40 characters of the alphabet, each group
/// of 5 worth less than 2^32. Checked here because libzmq would only fail the handshake
/// later, silently, and the zmq crate's `z85_decode` does not report bad characters.
fn is_z85_key(key: &str) -> bool {
    key.len() == Z85_KEY_LEN
        && key.as_bytes().chunks(5).all(|group| {
            group
                .iter()
                .try_fold(0u64, |value, &c| {
                    let digit = Z85_ALPHABET.iter().position(|&a| a == c)?;
                    Some(value * 85 + digit as u64)
                })
                .is_some_and(|value| value <= u64::from(u32::MAX))
        })
}

/// Whether this build's libzmq can do CURVE. The bundled libzmq the `zmq` crate builds by
/// default has no CURVE (zmq-sys builds it without libsodium); a program linking the
/// system's libzmq instead (README, "CURVE") has it.
pub fn curve_supported() -> bool {
    zmq::has("curve") == Some(true)
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
            curve_server_key: None,
            curve_public_key: None,
            curve_secret_key: None,
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

    /// How often an idle connection is probed: TCP keepalive, whole seconds, at least 1
    /// (0 = the kernel's defaults). No ZMTP PINGs are sent: their timer can abort the
    /// process in libzmq 4.3.x (protocol §8, Liveness). Default 1000.
    pub fn heartbeat_ivl_ms(mut self, ms: u32) -> Self {
        self.heartbeat_ivl_ms = ms;
        self
    }

    /// Drop and re-establish the connection when probes or data go unanswered this long
    /// (the keepalive count, and ZMQ_TCP_MAXRT). Default 5000.
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

    /// The server's CURVE public key (Z85, 40 characters). With [`Self::curve_public_key`]
    /// and [`Self::curve_secret_key`] (this robot's pair, from `inferential keys generate`),
    /// the connection is encrypted and the server knows the robot by its key. All three or
    /// none: `connect()` refuses a partial set with `invalid_argument`, and fails with
    /// `unsupported` when this build's libzmq has no CURVE ([`curve_supported`]).
    pub fn curve_server_key(mut self, z85: &str) -> Self {
        self.curve_server_key = Some(z85.to_owned());
        self
    }

    /// This robot's CURVE public key (Z85, 40 characters); see [`Self::curve_server_key`].
    pub fn curve_public_key(mut self, z85: &str) -> Self {
        self.curve_public_key = Some(z85.to_owned());
        self
    }

    /// This robot's CURVE secret key (Z85, 40 characters); see [`Self::curve_server_key`].
    /// Never shown by `Debug`.
    pub fn curve_secret_key(mut self, z85: &str) -> Self {
        self.curve_secret_key = Some(z85.to_owned());
        self
    }

    /// The three CURVE keys when set (after `validate()`: all or none, each valid Z85).
    pub(crate) fn curve_keys(&self) -> Option<[&str; 3]> {
        match (
            &self.curve_server_key,
            &self.curve_public_key,
            &self.curve_secret_key,
        ) {
            (Some(server), Some(public), Some(secret)) => Some([server, public, secret]),
            _ => None,
        }
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
        self.validate_curve()
    }

    fn validate_curve(&self) -> Result<()> {
        let keys = [
            ("curve_server_key", &self.curve_server_key),
            ("curve_public_key", &self.curve_public_key),
            ("curve_secret_key", &self.curve_secret_key),
        ];
        for (name, key) in keys {
            let Some(key) = key else { continue };
            // The key itself is never echoed: one of them is a secret.
            if !is_z85_key(key) {
                return Err(Error::invalid(format!(
                    "{name} must be a Z85 key of {Z85_KEY_LEN} characters"
                )));
            }
        }
        let set = keys.iter().filter(|(_, key)| key.is_some()).count();
        if set != 0 && set != keys.len() {
            return Err(Error::invalid(
                "CURVE needs curve_server_key, curve_public_key and curve_secret_key together \
                 (a robot's pair: inferential keys generate)",
            ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn key(byte: u8) -> String {
        zmq::z85_encode(&[byte; 32]).unwrap()
    }

    #[test]
    fn curve_keys_come_all_three_or_none_each_a_40_character_z85_key() {
        let b = || ConnectionBuilder::new("tcp://127.0.0.1:1");
        let (k1, k2, k3) = (key(1), key(2), key(3));
        assert!(b().validate().is_ok());
        let full = b()
            .curve_server_key(&k1)
            .curve_public_key(&k2)
            .curve_secret_key(&k3);
        assert!(full.validate().is_ok());
        assert_eq!(full.curve_keys(), Some([&k1[..], &k2[..], &k3[..]]));
        let refused = [
            b().curve_server_key(&k1),
            b().curve_server_key(&k1).curve_public_key(&k2),
            full.clone().curve_secret_key(&k3[..39]),
            // '"' is not in the Z85 alphabet; "%%%%%" is worth more than 32 bits.
            full.clone().curve_public_key(&format!("\"{}", &k2[1..])),
            full.clone().curve_public_key(&format!("%%%%%{}", &k2[5..])),
        ];
        for builder in refused {
            let err = builder.validate().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
            assert!(!err.to_string().contains(&k3), "a secret in {err}");
        }
    }

    #[test]
    fn debug_hides_the_secrets() {
        let secret = key(9);
        let shown = format!(
            "{:?}",
            ConnectionBuilder::new("tcp://h:1")
                .auth_token("hunter2")
                .curve_secret_key(&secret)
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains(&secret),
            "{shown}"
        );
    }

    #[test]
    fn curve_keys_without_curve_in_libzmq_are_unsupported() {
        if curve_supported() {
            return; // tests/curve.rs connects to a CURVE server in that build
        }
        let err = ConnectionBuilder::new("tcp://127.0.0.1:1")
            .curve_server_key(&key(1))
            .curve_public_key(&key(2))
            .curve_secret_key(&key(3))
            .connect()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
}
