//! The tokio API (cargo feature `tokio`): the same connection, matcher and rules as the
//! blocking client, driven from the runtime without blocking it. Sends are non-blocking and
//! retried on socket writability until the send timeout (then `server_unavailable`); waits
//! sleep on the socket's notification descriptor (`ZMQ_FD`, edge-triggered: the socket's
//! events are re-read after every wake-up, so no notification is lost).
// The one place with `unsafe`: registering the socket's descriptor with tokio (see below).
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::codec::{encode_observation, EncodeParams};
use crate::connection::{deadline_after, now_ns, Connection, Shared, State};
use crate::error::{Error, ErrorKind, Result};
use crate::matching::Stats;
use crate::options::ConnectionBuilder;
use crate::reply::Reply;
use crate::wire::tensor::Observation;
use crate::RequestId;

/// Our own duplicate of the socket's notification descriptor: it stays open (and refers
/// to the same file description) for as long as tokio watches it, even after libzmq closes
/// the original when the connection is closed.
struct ZmqFd(OwnedFd);

impl AsRawFd for ZmqFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// The registered descriptor of the socket of one generation. A connection libzmq ended
/// for good is replaced by a new socket on a send (`Shared::recover`), with a descriptor of
/// its own: waits compare generations and register the new one.
struct Notifier {
    generation: u64,
    fd: Arc<AsyncFd<ZmqFd>>,
}

type SharedNotifier = Arc<Mutex<Notifier>>;

/// Registers our duplicate of the current socket's ZMQ_FD with tokio.
fn register(state: &State) -> Result<Notifier> {
    let owned = {
        let raw = state.socket()?.get_fd()?;
        // SAFETY: `raw` is the live socket's ZMQ_FD, open while the caller holds the state
        // lock (closing or replacing the socket needs that lock); it is only borrowed to
        // duplicate it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        borrowed
            .try_clone_to_owned()
            .map_err(|e| Error::new(ErrorKind::Transport, format!("dup(ZMQ_FD): {e}")))?
    };
    // SAFETY: the AsyncFd owns `owned`, our duplicate: it stays open and refers to the
    // same file description until the AsyncFd is dropped, as tokio requires.
    let fd =
        unsafe { AsyncFd::register_with_interest(ZmqFd(owned), tokio::io::Interest::READABLE) }
            .map_err(|e| Error::new(ErrorKind::Transport, format!("tokio: {e}")))?;
    Ok(Notifier {
        generation: state.generation,
        fd: Arc::new(fd),
    })
}

/// A connection for async code: see [`Connection`] for the semantics, which are the same.
///
/// Dropping or closing it closes the socket. Create it inside a tokio runtime (with I/O
/// and time enabled) with [`ConnectionBuilder::connect_async`].
pub struct AsyncConnection {
    conn: Connection,
    fd: SharedNotifier,
}

impl std::fmt::Debug for AsyncConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncConnection")
            .field("conn", &self.conn)
            .finish()
    }
}

impl ConnectionBuilder {
    /// Like [`ConnectionBuilder::connect`], for async code. Must be called inside a tokio
    /// runtime with I/O and time enabled (an `invalid_argument` error outside any runtime;
    /// tokio itself panics when the runtime has I/O disabled, as for any tokio socket).
    pub fn connect_async(self) -> Result<AsyncConnection> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::invalid(
                "connect_async() must be called inside a tokio runtime",
            ));
        }
        let conn = self.connect()?;
        let notifier = register(&*conn.shared().lock_open()?)?;
        Ok(AsyncConnection {
            conn,
            fd: Arc::new(Mutex::new(notifier)),
        })
    }
}

impl AsyncConnection {
    /// A handle for `model_id` (latency budget 50 ms, priority 1).
    pub fn model(&self, model_id: &str) -> Result<AsyncModel> {
        Ok(AsyncModel {
            model: self.conn.model(model_id)?,
            fd: Arc::clone(&self.fd),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.conn.stats()
    }

    /// The blocking connection over the same socket (for `socket_options()` and the like).
    pub fn blocking(&self) -> &Connection {
        &self.conn
    }

    /// Closes the socket (idempotent).
    pub fn close(&self) {
        self.conn.close();
    }
}

/// A model handle for async code: see [`crate::Model`].
#[derive(Clone)]
pub struct AsyncModel {
    model: crate::Model,
    fd: SharedNotifier,
}

impl std::fmt::Debug for AsyncModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncModel")
            .field("model", &self.model)
            .finish()
    }
}

/// Abandons an awaited request when its `request()` future is dropped before the end.
struct Abandon<'a> {
    shared: &'a Shared,
    rid: Option<RequestId>,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if let Some(rid) = self.rid.take() {
            self.shared.lock().matcher.abandon(rid);
        }
    }
}

/// What a wait on the socket found.
enum Woke {
    Ready,
    TimedOut,
}

impl AsyncModel {
    /// Answer wanted within this long after arrival (ms). Default 50.
    pub fn latency_budget_ms(self, ms: f32) -> Self {
        Self {
            model: self.model.latency_budget_ms(ms),
            ..self
        }
    }

    /// Priority, 0 is highest. Default 1.
    pub fn priority(self, priority: u32) -> Self {
        Self {
            model: self.model.priority(priority),
            ..self
        }
    }

    /// Absolute deadline, Unix epoch ns.
    pub fn deadline_ns(self, deadline_ns: u64) -> Self {
        Self {
            model: self.model.deadline_ns(deadline_ns),
            ..self
        }
    }

    /// Actions left in the robot's action queue.
    pub fn actions_remaining(self, actions: u32) -> Self {
        Self {
            model: self.model.actions_remaining(actions),
            ..self
        }
    }

    /// Rate at which the robot consumes actions, Hz.
    pub fn control_rate_hz(self, hz: f32) -> Self {
        Self {
            model: self.model.control_rate_hz(hz),
            ..self
        }
    }

    /// The model id.
    pub fn model_id(&self) -> &str {
        self.model.model_id()
    }

    fn shared(&self) -> &Shared {
        self.model.shared()
    }

    /// The descriptor of the current socket (registered anew after a socket reset).
    fn notifier(&self) -> Result<Arc<AsyncFd<ZmqFd>>> {
        let state = self.shared().lock_open()?;
        let mut notifier = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        if notifier.generation != state.generation {
            *notifier = register(&state)?;
        }
        Ok(Arc::clone(&notifier.fd))
    }

    /// Sleeps until the socket may have changed state, or until `deadline`.
    async fn wait(&self, deadline: Instant) -> Result<Woke> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(Woke::TimedOut);
        }
        let fd = self.notifier()?;
        match tokio::time::timeout(remaining, fd.readable()).await {
            Err(_) => Ok(Woke::TimedOut),
            Ok(Err(e)) => Err(Error::new(ErrorKind::Transport, format!("tokio: {e}"))),
            Ok(Ok(mut guard)) => {
                // Edge-triggered: forget this edge, then re-read the socket's own events.
                guard.clear_ready();
                Ok(Woke::Ready)
            }
        }
    }

    /// Sends one observation; returns its request id. While no connected server takes it,
    /// the send is retried on writability until the send timeout (`server_unavailable`).
    pub async fn observe(&self, obs: &Observation<'_>) -> Result<RequestId> {
        self.send(obs, false).await
    }

    async fn send(&self, obs: &Observation<'_>, awaited: bool) -> Result<RequestId> {
        let shared = self.shared();
        let (rid, frames) = {
            let mut state = shared.lock_open()?;
            let rid = state.matcher.next_request_id();
            let params = EncodeParams {
                request_id: rid.0,
                timestamp_ns: now_ns(),
                ..self.model.encode_params(shared)
            };
            let frames: Vec<Vec<u8>> = encode_observation(&params, obs)?
                .into_iter()
                .map(|f| f.into_owned())
                .collect();
            // A connection libzmq ended for good is replaced first (as in the blocking API).
            shared.recover(&mut state)?;
            state.drain()?;
            state
                .matcher
                .track(rid, self.model.model_id(), awaited, Instant::now());
            (rid, frames)
        };
        let deadline = deadline_after(Duration::from_millis(u64::from(
            shared.options.send_timeout_ms,
        )));
        loop {
            {
                let mut state = shared.lock_open()?;
                match state.try_send(&frames) {
                    Ok(true) => {
                        state.matcher.sent();
                        return Ok(rid);
                    }
                    Ok(false) => {}
                    Err(err) => {
                        state.matcher.untrack(rid);
                        return Err(err.with_request(rid, self.model.model_id()));
                    }
                }
            };
            if let Woke::TimedOut = self.wait(deadline).await? {
                let mut state = shared.lock();
                state.matcher.untrack(rid);
                return Err(shared
                    .unavailable()
                    .with_request(rid, self.model.model_id()));
            }
        }
    }

    /// The newest reply for this model not yet returned, waiting up to `timeout`; same
    /// rules as [`crate::Model::get_result`].
    pub async fn get_result(&self, timeout: Duration) -> Result<Option<Reply>> {
        let deadline = deadline_after(timeout);
        loop {
            {
                let mut state = self.shared().lock_open()?;
                state.drain()?;
                if let Some(reply) = state.matcher.take_latest(self.model.model_id()) {
                    return reply.into_result().map(Some);
                }
                if state.readable()? {
                    continue;
                }
            }
            if let Woke::TimedOut = self.wait(deadline).await? {
                return Ok(None);
            }
        }
    }

    /// Sends one observation and waits up to `timeout` for its very reply; same rules as
    /// [`crate::Model::request`].
    pub async fn request(&self, obs: &Observation<'_>, timeout: Duration) -> Result<Reply> {
        let rid = self.send(obs, true).await?;
        // If this future is dropped while waiting, the request is abandoned: its late reply
        // is counted stale instead of being kept for a waiter that is gone.
        let mut guard = Abandon {
            shared: self.shared(),
            rid: Some(rid),
        };
        let deadline = deadline_after(timeout);
        loop {
            {
                let mut state = self.shared().lock_open()?;
                state.drain()?;
                if let Some(got) = state.matcher.take_awaited(rid) {
                    guard.rid = None;
                    return got.and_then(Reply::into_result);
                }
                if Instant::now() >= deadline {
                    guard.rid = None;
                    state.matcher.abandon(rid);
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!(
                            "no reply to request {rid} from model '{}' within {} ms",
                            self.model.model_id(),
                            timeout.as_millis()
                        ),
                    )
                    .with_request(rid, self.model.model_id()));
                }
                if state.readable()? {
                    continue;
                }
            }
            // On a timeout the loop checks once more, then gives up above.
            let _ = self.wait(deadline).await?;
        }
    }
}
