//! The connection: one DEALER socket, the matcher, and model handles over them.
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::{encode_describe, encode_observation, EncodeParams};
use crate::error::{Error, ErrorKind, Result};
use crate::matching::Matcher;
pub use crate::matching::Stats;
use crate::options::{default_client_id, ConnectionBuilder};
use crate::reply::Reply;
use crate::wire::limits::Limits;
use crate::wire::tensor::Observation;
use crate::RequestId;

/// A robot's connection to one Inferential server: a ZeroMQ DEALER with the options of
/// protocol §8 (no routing identity, `ZMQ_IMMEDIATE`, bounded sends) and the reply matcher.
///
/// Cheap to clone (a shared handle); [`Model`] handles keep it alive. Calls from several
/// threads are serialised: a `get_result()` waiting on one thread holds the socket until
/// it returns, so a robot with several control threads should open one connection each.
#[derive(Debug, Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    endpoint: String,
    // The context and the options every DEALER of this connection is opened with (a
    // connection libzmq ends for good is replaced by a new socket, see `State::link_lost`);
    // the options also hold the envelope's fixed fields and the limits.
    ctx: zmq::Context,
    pub(crate) options: ConnectionBuilder,
    // `options.client_id`, or the default one chosen when it was unset.
    client_id: String,
    state: Mutex<State>,
}

pub(crate) struct State {
    // None once closed.
    socket: Option<zmq::Socket>,
    // The PAIR reading the DEALER's monitor events; None once closed.
    monitor: Option<zmq::Socket>,
    // How many DEALERs this connection has opened: names each one's monitor endpoint, and
    // tells the tokio API that the socket (and its descriptor) changed.
    pub(crate) generation: u64,
    pub(crate) matcher: Matcher,
}

impl State {
    /// Closes the DEALER and its monitor's reader, the monitor stopped first
    /// ([`crate::liveness::stop_monitor`]). Idempotent.
    fn release_sockets(&mut self) {
        if let Some(socket) = self.socket.as_mut() {
            crate::liveness::stop_monitor(socket);
        }
        self.monitor = None;
        self.socket = None;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.release_sockets();
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("open", &self.socket.is_some())
            .field("matcher", &self.matcher)
            .finish()
    }
}

/// The DEALER's options as libzmq reports them (getsockopt), for checks and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// ZMQ_RECONNECT_IVL.
    pub reconnect_ivl: i32,
    /// ZMQ_RECONNECT_IVL_MAX.
    pub reconnect_ivl_max: i32,
    /// ZMQ_HEARTBEAT_IVL.
    pub heartbeat_ivl: i32,
    /// ZMQ_HEARTBEAT_TIMEOUT.
    pub heartbeat_timeout: i32,
    /// ZMQ_TCP_KEEPALIVE (1 when `heartbeat_ivl_ms` > 0).
    pub tcp_keepalive: i32,
    /// ZMQ_TCP_KEEPALIVE_IDLE, seconds.
    pub tcp_keepalive_idle: i32,
    /// ZMQ_TCP_KEEPALIVE_INTVL, seconds.
    pub tcp_keepalive_intvl: i32,
    /// ZMQ_TCP_KEEPALIVE_CNT.
    pub tcp_keepalive_cnt: i32,
    /// ZMQ_TCP_MAXRT, milliseconds.
    pub tcp_maxrt: i32,
    /// ZMQ_IMMEDIATE (1).
    pub immediate: i32,
    /// ZMQ_SNDTIMEO.
    pub sndtimeo: i32,
    /// ZMQ_SNDHWM.
    pub sndhwm: i32,
    /// ZMQ_RCVHWM.
    pub rcvhwm: i32,
    /// ZMQ_LINGER (0).
    pub linger: i32,
    /// ZMQ_MAXMSGSIZE.
    pub maxmsgsize: i64,
    /// ZMQ_ROUTING_ID (empty: never set, libzmq assigns one per connection).
    pub routing_id: Vec<u8>,
}

/// What a server says of itself ([`Connection::server_info`], protocol §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server's protocol version.
    pub protocol_version: u32,
    /// Its name and version, e.g. `inferential-server/2.0.0`.
    pub server: String,
    /// The bounds it enforces: keep the connection's limits equal to them.
    pub limits: Limits,
}

impl ServerInfo {
    fn from_reply(reply: &Reply) -> Result<ServerInfo> {
        let meta = reply.metadata();
        let number = |key: &str| -> Result<usize> {
            meta.get(key)
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Protocol,
                        format!("the server's describe reply lacks a numeric '{key}'"),
                    )
                })
        };
        let defaults = Limits::default();
        let or_default = |key: &str, default: usize| number(key).unwrap_or(default);
        Ok(ServerInfo {
            protocol_version: u32::try_from(number("protocol_version")?).unwrap_or(u32::MAX),
            server: meta.get("server").cloned().unwrap_or_default(),
            limits: Limits {
                max_message_bytes: number("max_message_bytes")?,
                max_payload_frames: or_default("max_payload_frames", defaults.max_payload_frames),
                max_tensors: or_default("max_tensors", defaults.max_tensors),
                max_dims: or_default("max_dims", defaults.max_dims),
                max_key_bytes: or_default("max_key_bytes", defaults.max_key_bytes),
                max_metadata_entries: or_default(
                    "max_metadata_entries",
                    defaults.max_metadata_entries,
                ),
                max_metadata_value_bytes: or_default(
                    "max_metadata_value_bytes",
                    defaults.max_metadata_value_bytes,
                ),
                max_id_bytes: or_default("max_id_bytes", defaults.max_id_bytes),
                max_auth_token_bytes: or_default(
                    "max_auth_token_bytes",
                    defaults.max_auth_token_bytes,
                ),
            },
        })
    }
}

/// A received frame kept alive by the [`Bytes`] slices that point into it.
struct Frame(zmq::Message);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn is_again(err: &zmq::Error) -> bool {
    *err == zmq::Error::EAGAIN
}

// The monitor events that tell a connection libzmq ended for good from one it is
// re-establishing: after a network error the CONNECT_RETRIED follows its DISCONNECTED
// within the same io-thread turn; after a protocol error none comes.
const EVENT_DISCONNECTED: u16 = zmq::SocketEvent::DISCONNECTED as u16;
const LINK_EVENTS: i32 = zmq::SocketEvent::DISCONNECTED as i32
    | zmq::SocketEvent::CONNECT_RETRIED as i32
    | zmq::SocketEvent::CONNECTED as i32;
// How long a DISCONNECTED waits for its CONNECT_RETRIED before the link counts as lost.
const RETRY_GRACE_MS: i64 = 100;

/// A DEALER configured with `options` and connected to `endpoint`, and the PAIR that reads
/// its monitor events (`generation` keeps the monitor's inproc name unique in `ctx`).
fn open_socket(
    ctx: &zmq::Context,
    options: &ConnectionBuilder,
    endpoint: &str,
    generation: u64,
) -> Result<(zmq::Socket, zmq::Socket)> {
    let mut socket = ctx.socket(zmq::DEALER)?;
    // validate() checked that every value fits an i32 / i64.
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    socket.set_linger(0)?;
    // Queue nothing for a server that is not connected: a reconnect delivers no backlog.
    socket.set_immediate(true)?;
    socket.set_reconnect_ivl(int(options.reconnect_ivl_ms))?;
    socket.set_reconnect_ivl_max(int(options.reconnect_ivl_max_ms))?;
    // A silent server is found by TCP keepalive, not ZMTP PINGs: a PING timer can
    // abort the robot's process in libzmq 4.3.x (see the liveness module).
    crate::liveness::apply(
        &mut socket,
        options.heartbeat_ivl_ms,
        options.heartbeat_timeout_ms,
    )?;
    socket.set_sndhwm(int(options.send_hwm))?;
    socket.set_rcvhwm(int(options.recv_hwm))?;
    socket.set_sndtimeo(int(options.send_timeout_ms))?;
    socket.set_maxmsgsize(i64::try_from(options.limits.max_message_bytes).unwrap_or(i64::MAX))?;
    if let Some([server, public, secret]) = options.curve_keys() {
        if !crate::options::curve_supported() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "CURVE keys were given but this build's libzmq has no CURVE: the zmq \
                 crate's bundled libzmq is built without libsodium; link the system \
                 libzmq instead (README, \"CURVE\")",
            ));
        }
        // Setting the server key makes this DEALER a CURVE client; libzmq takes the
        // 40-character Z85 text as it is.
        socket.set_curve_serverkey(server.as_bytes())?;
        socket.set_curve_publickey(public.as_bytes())?;
        socket.set_curve_secretkey(secret.as_bytes())?;
    }
    // Watched for a connection libzmq ends and never re-establishes (`State::link_lost`);
    // the PAIR connects before the DEALER does, so no event is missed.
    let monitor_endpoint = format!("inproc://inferential-monitor-{generation}");
    socket.monitor(&monitor_endpoint, LINK_EVENTS)?;
    let monitor = ctx.socket(zmq::PAIR)?;
    monitor.set_linger(0)?;
    monitor.connect(&monitor_endpoint)?;
    socket
        .connect(endpoint)
        .map_err(|e| Error::invalid(format!("cannot connect to {endpoint:?}: {e}")))?;
    Ok((socket, monitor))
}

impl Connection {
    /// Options for a connection to `endpoint`, ending in [`ConnectionBuilder::connect`].
    pub fn builder(endpoint: &str) -> ConnectionBuilder {
        ConnectionBuilder::new(endpoint)
    }

    /// A connection with default options: the 1.4 constructor, now returning a `Result`
    /// instead of panicking. Same as `Connection::builder(endpoint).client_id(..)
    /// .client_type(..).connect()`.
    pub fn new(endpoint: &str, client_id: &str, client_type: &str) -> Result<Connection> {
        Self::builder(endpoint)
            .client_id(client_id)
            .client_type(client_type)
            .connect()
    }

    /// The 1.4 constructor with reconnection intervals (`reconnect_ivl_ms` >= 1;
    /// `reconnect_max_ms` 0 = no doubling). Other options need [`Connection::builder`].
    pub fn with_options(
        endpoint: &str,
        client_id: &str,
        client_type: &str,
        reconnect_ivl_ms: u32,
        reconnect_max_ms: u32,
    ) -> Result<Connection> {
        Self::builder(endpoint)
            .client_id(client_id)
            .client_type(client_type)
            .reconnect_ivl_ms(reconnect_ivl_ms)
            .reconnect_ivl_max_ms(reconnect_max_ms)
            .connect()
    }

    pub(crate) fn open(options: ConnectionBuilder) -> Result<Connection> {
        let endpoint = options.normalized_endpoint();
        let ctx = zmq::Context::new();
        let (socket, monitor) = open_socket(&ctx, &options, &endpoint, 0)?;
        Ok(Connection {
            shared: Arc::new(Shared {
                endpoint,
                ctx,
                client_id: options.client_id.clone().unwrap_or_else(default_client_id),
                state: Mutex::new(State {
                    socket: Some(socket),
                    monitor: Some(monitor),
                    generation: 0,
                    matcher: Matcher::new(options.limits),
                }),
                options,
            }),
        })
    }

    /// A handle for observations to `model_id` and its replies: latency budget 50 ms,
    /// priority 1, no deadline. Handles for the same model share its replies.
    pub fn model(&self, model_id: &str) -> Result<Model> {
        if model_id.is_empty() || model_id.len() > self.shared.options.limits.max_id_bytes {
            return Err(Error::invalid(format!(
                "model_id must be 1..={} bytes",
                self.shared.options.limits.max_id_bytes
            )));
        }
        drop(self.shared.lock_open()?);
        Ok(Model {
            shared: Arc::clone(&self.shared),
            model_id: model_id.to_owned(),
            latency_budget_ms: 50.0,
            priority: 1,
            deadline_ns: None,
            actions_remaining: None,
            control_rate_hz: None,
        })
    }

    /// Asks the server for its protocol version and limits (protocol §12), waiting up to
    /// `timeout`. `timeout` when nothing answers (a 1.x server never does), `protocol` when
    /// the answer lacks a field, `server_unavailable` when no server accepts the request.
    pub fn server_info(&self, timeout: Duration) -> Result<ServerInfo> {
        let shared = &self.shared;
        let mut state = shared.lock_open()?;
        let rid = state.matcher.next_request_id();
        let params = EncodeParams {
            client_id: &shared.client_id,
            client_type: &shared.options.client_type,
            model_id: "",
            request_id: rid.0,
            timestamp_ns: now_ns(),
            latency_budget_ms: 0.0,
            priority: 0,
            deadline_ns: None,
            actions_remaining: None,
            control_rate_hz: None,
            auth_token: &shared.options.auth_token,
            single_payload_frame: false,
            limits: shared.options.limits,
        };
        let frames = encode_describe(&params)?;
        let frames: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        shared.send_frames(&mut state, &frames, rid, "", true)?;
        drop(state);
        let reply = shared
            .await_reply(rid, timeout)?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no describe reply from {} within {} ms: a 1.x server, or none reachable",
                        shared.endpoint,
                        timeout.as_millis()
                    ),
                )
                .with_request(rid, "")
            })??
            .into_result()?;
        ServerInfo::from_reply(&reply)
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The endpoint, with its scheme.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// The robot's name sent in every observation.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// A snapshot of the counters (reads waiting replies first, so they are current).
    pub fn stats(&self) -> Stats {
        let mut state = self.shared.lock();
        // A closed connection still reports what it counted.
        let _ = state.drain();
        state.matcher.stats().clone()
    }

    /// The DEALER's options read back from libzmq.
    pub fn socket_options(&self) -> Result<SocketOptions> {
        let mut state = self.shared.lock_open()?;
        let tcp_maxrt = match state.socket.as_mut() {
            Some(socket) => crate::liveness::tcp_maxrt(socket)?,
            None => return Err(Error::new(ErrorKind::Closed, "connection is closed")),
        };
        let s = state.socket()?;
        Ok(SocketOptions {
            tcp_keepalive: s.get_tcp_keepalive()?,
            tcp_keepalive_idle: s.get_tcp_keepalive_idle()?,
            tcp_keepalive_intvl: s.get_tcp_keepalive_intvl()?,
            tcp_keepalive_cnt: s.get_tcp_keepalive_cnt()?,
            tcp_maxrt,
            reconnect_ivl: s.get_reconnect_ivl()?,
            reconnect_ivl_max: s.get_reconnect_ivl_max()?,
            heartbeat_ivl: s.get_heartbeat_ivl()?,
            heartbeat_timeout: s.get_heartbeat_timeout()?,
            immediate: i32::from(s.is_immediate()?),
            sndtimeo: s.get_sndtimeo()?,
            sndhwm: s.get_sndhwm()?,
            rcvhwm: s.get_rcvhwm()?,
            linger: s.get_linger()?,
            maxmsgsize: s.get_maxmsgsize()?,
            routing_id: s.get_identity()?,
        })
    }

    /// Closes the socket at once (unsent messages are discarded). Idempotent; every later
    /// call on this connection or its models fails with `closed`.
    pub fn close(&self) {
        let mut state = self.shared.lock();
        state.release_sockets();
    }

    /// Whether [`Connection::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().socket.is_none()
    }
}

impl std::fmt::Debug for Shared {
    // Leaves out the auth token: connections end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_type", &self.options.client_type)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Sends one message for request `rid`, tracked before it leaves so no reply can
    /// outrun it; `server_unavailable` when no connected server takes it in time.
    fn send_frames(
        &self,
        state: &mut State,
        frames: &[&[u8]],
        rid: RequestId,
        model_id: &str,
        awaited: bool,
    ) -> Result<()> {
        self.recover(state)?;
        // Replies already waiting are routed first, so the outstanding table stays small.
        state.drain()?;
        state.matcher.track(rid, model_id, awaited, Instant::now());
        let result = {
            let socket = state.socket()?;
            let last = frames.len().saturating_sub(1);
            frames.iter().enumerate().try_for_each(|(i, f)| {
                let flags = if i < last { zmq::SNDMORE } else { 0 };
                // Only the first frame can block (up to ZMQ_SNDTIMEO): once it is
                // queued, libzmq takes the rest of the message.
                socket.send(*f, flags)
            })
        };
        match result {
            Ok(()) => {
                state.matcher.sent();
                Ok(())
            }
            Err(err) => {
                state.matcher.untrack(rid);
                let err = if is_again(&err) {
                    self.unavailable()
                } else {
                    Error::from(err)
                };
                Err(err.with_request(rid, model_id))
            }
        }
    }

    /// The reply to the awaited request `rid`, or `None` after `timeout` (the request is
    /// then abandoned: a late reply counts stale).
    fn await_reply(&self, rid: RequestId, timeout: Duration) -> Result<Option<Result<Reply>>> {
        let deadline = deadline_after(timeout);
        let mut state = self.lock_open()?;
        loop {
            state.drain()?;
            if let Some(got) = state.matcher.take_awaited(rid) {
                return Ok(Some(got));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                state.matcher.abandon(rid);
                return Ok(None);
            }
            state.poll(remaining)?;
        }
    }

    /// Before a send: when libzmq ended the connection for good, closes the DEALER and
    /// opens a new one to the same server, counted in `stats.socket_resets`. Replies to
    /// what the old socket sent are lost: their requests time out as they would have.
    pub(crate) fn recover(&self, state: &mut State) -> Result<()> {
        if !state.link_lost() {
            return Ok(());
        }
        let generation = state.generation.wrapping_add(1);
        state.release_sockets();
        let (socket, monitor) = open_socket(&self.ctx, &self.options, &self.endpoint, generation)
            .map_err(|e| {
            Error::new(
                e.kind(),
                format!("cannot reopen the socket after the connection was lost: {e}"),
            )
        })?;
        state.socket = Some(socket);
        state.monitor = Some(monitor);
        state.generation = generation;
        state.matcher.socket_reset();
        Ok(())
    }

    pub(crate) fn unavailable(&self) -> Error {
        Error::new(
            ErrorKind::ServerUnavailable,
            format!(
                "no server at {} accepted the observation within {} ms \
                 (not connected, or not reading)",
                self.endpoint, self.options.send_timeout_ms
            ),
        )
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in user code while locked cannot leave the state half-updated (no user
        // code runs under the lock), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_open(&self) -> Result<MutexGuard<'_, State>> {
        let state = self.lock();
        if state.socket.is_none() {
            return Err(Error::new(
                ErrorKind::Closed,
                format!("connection to {} is closed", self.endpoint),
            ));
        }
        Ok(state)
    }
}

impl State {
    pub(crate) fn socket(&self) -> Result<&zmq::Socket> {
        self.socket
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::Closed, "connection is closed"))
    }

    /// True when libzmq dropped the connection for good.
    ///
    /// After a protocol error (a reply over `max_message_bytes`, a peer speaking nonsense,
    /// a handshake the server refused) libzmq closes the connection and, unlike after a
    /// network error, never reconnects: a DISCONNECTED event with no CONNECT_RETRIED after
    /// it. Read on each send (one non-blocking poll of the monitor).
    pub(crate) fn link_lost(&mut self) -> bool {
        let Some(monitor) = self.monitor.as_ref() else {
            return false;
        };
        let mut lost = false;
        let mut wait_ms = 0;
        while matches!(monitor.poll(zmq::POLLIN, wait_ms), Ok(n) if n > 0) {
            // An event is two frames: (u16 event, u32 value) in native byte order, then
            // the endpoint.
            let Ok(frames) = monitor.recv_multipart(zmq::DONTWAIT) else {
                break;
            };
            let event = frames
                .first()
                .and_then(|f| f.get(0..2))
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(u16::from_ne_bytes);
            lost = event == Some(EVENT_DISCONNECTED);
            // After a DISCONNECTED, give the CONNECT_RETRIED of a network error its moment
            // (it is queued right after; a protocol error has none): once per disconnect.
            wait_ms = if lost { RETRY_GRACE_MS } else { 0 };
        }
        lost
    }

    /// Routes every message waiting on the socket, without blocking.
    pub(crate) fn drain(&mut self) -> Result<()> {
        let Some(socket) = self.socket.as_ref() else {
            return Ok(());
        };
        loop {
            let first = match socket.recv_msg(zmq::DONTWAIT) {
                Ok(msg) => msg,
                Err(err) if is_again(&err) => return Ok(()),
                Err(err) => return Err(err.into()),
            };
            let mut frames = vec![Bytes::from_owner(Frame(first))];
            // The rest of a multipart message is already here once its first frame is.
            while socket.get_rcvmore()? {
                frames.push(Bytes::from_owner(Frame(socket.recv_msg(0)?)));
            }
            self.matcher.on_reply(&frames, Instant::now());
        }
    }

    /// Sends one message without blocking: `Ok(false)` when no connected server can take
    /// it now and the socket says it is not writable (wait for its descriptor, then retry).
    #[cfg(feature = "tokio")]
    pub(crate) fn try_send(&mut self, frames: &[Vec<u8>]) -> Result<bool> {
        let socket = self.socket()?;
        let last = frames.len().saturating_sub(1);
        for (i, f) in frames.iter().enumerate() {
            let flags = zmq::DONTWAIT | if i < last { zmq::SNDMORE } else { 0 };
            match socket.send(&f[..], flags) {
                Ok(()) => {}
                // Only the first frame can be refused: then nothing of the message is queued.
                Err(err) if is_again(&err) && i == 0 => {
                    return match socket.get_events()?.contains(zmq::POLLOUT) {
                        true => self.try_send(frames),
                        false => Ok(false),
                    };
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(true)
    }

    /// Whether a message is waiting (also resets the descriptor's edge: call it before
    /// sleeping on the descriptor).
    #[cfg(feature = "tokio")]
    pub(crate) fn readable(&self) -> Result<bool> {
        Ok(self.socket()?.get_events()?.contains(zmq::POLLIN))
    }

    /// Waits up to `timeout` for input on the socket.
    fn poll(&self, timeout: Duration) -> Result<()> {
        let ms = i64::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i64::MAX);
        self.socket()?.poll(zmq::POLLIN, ms.max(1))?;
        Ok(())
    }
}

/// Observations to one model and its replies, over a [`Connection`].
///
/// The builder-style setters give the defaults of every observation sent through this
/// handle; an [`Observation`] may override priority, deadline, actions remaining and
/// control rate.
#[derive(Debug, Clone)]
pub struct Model {
    shared: Arc<Shared>,
    model_id: String,
    latency_budget_ms: f32,
    priority: u32,
    deadline_ns: Option<u64>,
    actions_remaining: Option<u32>,
    control_rate_hz: Option<f32>,
}

/// `now + timeout`, saturating far in the future instead of overflowing (`Duration::MAX`).
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Model {
    /// Answer wanted within this long after arrival (ms, finite, >= 0; 0 = server
    /// default). Default 50.
    pub fn latency_budget_ms(mut self, ms: f32) -> Self {
        self.latency_budget_ms = ms;
        self
    }

    /// Priority, 0 is highest. Default 1.
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Absolute deadline, Unix epoch ns; wins over the latency budget on the server.
    pub fn deadline_ns(mut self, deadline_ns: u64) -> Self {
        self.deadline_ns = Some(deadline_ns);
        self
    }

    /// Actions left in the robot's action queue.
    pub fn actions_remaining(mut self, actions: u32) -> Self {
        self.actions_remaining = Some(actions);
        self
    }

    /// Rate at which the robot consumes actions, Hz.
    pub fn control_rate_hz(mut self, hz: f32) -> Self {
        self.control_rate_hz = Some(hz);
        self
    }

    /// The model id.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The envelope fields of this handle (request id and timestamp are the caller's).
    pub(crate) fn encode_params<'s>(&'s self, shared: &'s Shared) -> EncodeParams<'s> {
        EncodeParams {
            client_id: &shared.client_id,
            client_type: &shared.options.client_type,
            model_id: &self.model_id,
            request_id: 0,
            timestamp_ns: 0,
            latency_budget_ms: self.latency_budget_ms,
            priority: self.priority,
            deadline_ns: self.deadline_ns,
            actions_remaining: self.actions_remaining,
            control_rate_hz: self.control_rate_hz,
            auth_token: &shared.options.auth_token,
            single_payload_frame: shared.options.single_payload_frame,
            limits: shared.options.limits,
        }
    }

    /// The connection this handle sends on.
    pub fn connection(&self) -> Connection {
        Connection {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Sends one observation; returns its request id. Its reply is read with
    /// [`Model::get_result`].
    ///
    /// Fails with `invalid_argument` (nothing sent) when the observation breaks a limit,
    /// and with `server_unavailable` when no connected server accepts it within the
    /// send timeout (it is then never delivered later).
    pub fn observe(&self, obs: &Observation<'_>) -> Result<RequestId> {
        self.send(obs, false)
    }

    fn send(&self, obs: &Observation<'_>, awaited: bool) -> Result<RequestId> {
        let shared = &self.shared;
        let mut state = shared.lock_open()?;
        let rid = state.matcher.next_request_id();
        let params = EncodeParams {
            request_id: rid.0,
            timestamp_ns: now_ns(),
            ..self.encode_params(shared)
        };
        let frames = encode_observation(&params, obs)?;
        let frames: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        shared.send_frames(&mut state, &frames, rid, &self.model_id, awaited)?;
        Ok(rid)
    }

    /// The newest reply for this model not yet returned, waiting up to `timeout`
    /// (`Duration::ZERO` only checks); `Ok(None)` when none arrived in time.
    ///
    /// Replies older than one already delivered for this model, and unread ones a newer
    /// reply replaces, are dropped and counted stale. A SUPERSEDED reply is counted and
    /// skipped (the newer observation's reply follows). Any other non-OK reply is
    /// returned as the error of its status.
    pub fn get_result(&self, timeout: Duration) -> Result<Option<Reply>> {
        let deadline = deadline_after(timeout);
        let mut state = self.shared.lock_open()?;
        loop {
            state.drain()?;
            if let Some(reply) = state.matcher.take_latest(&self.model_id) {
                return reply.into_result().map(Some);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            state.poll(remaining)?;
        }
    }

    /// Sends one observation and waits up to `timeout` for the reply to that very
    /// request (whatever its age); that reply never reaches [`Model::get_result`].
    ///
    /// Errors: `timeout` (a later reply counts stale), the kind of a non-OK status,
    /// `protocol` when the reply is malformed, plus those of [`Model::observe`].
    pub fn request(&self, obs: &Observation<'_>, timeout: Duration) -> Result<Reply> {
        let rid = self.send(obs, true)?;
        match self.shared.await_reply(rid, timeout)? {
            Some(got) => got.and_then(Reply::into_result),
            None => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "no reply to request {rid} from model '{}' within {} ms",
                    self.model_id,
                    timeout.as_millis()
                ),
            )
            .with_request(rid, &self.model_id)),
        }
    }
}
