//! `inferential_native`: the server's ROUTER socket served by a native I/O thread (issue 16 §2).
//!
//! The socket is made, configured and bound by the Python transport (every option, the
//! CURVE keys, the ZAP handler and the connection watch are `RouterTransport.bind`'s, so
//! both paths set them alike by construction), then handed over: from then on only this
//! module touches it. It calls the very libzmq pyzmq loaded (resolved with `dlopen` on the
//! loaded library's path, so there is one libzmq in the process and the socket's context,
//! ZAP handler and monitor are shared with pyzmq).
//!
//! The I/O thread receives every message, checks it with the `inferential` crate's wire
//! rules (`wire::server::check_observation`, the rules of server-py's `decode_request`) and
//! queues it for the event loop, which it wakes through an eventfd only when the queue goes
//! from empty to non-empty (idle: no thread runs). The loop takes whole bursts with one
//! call: an accepted observation arrives as its identity, envelope, payload frames (buffer
//! objects over the received ZMQ messages, no copy) and the place of each tensor in them;
//! anything the check refuses arrives as its raw frames, for the Python decoder to word the
//! rejection, so every refusal keeps its status and text.
//!
//! With a shedding policy (`set_shedding`, server-py's `transport.native_shedding`), `take`
//! also refuses what can no longer be answered in time, by admission's own rules and the
//! costs the loop states before each burst (`ShedPolicy`), and answers it itself with the
//! crate's `encode_refusal`: an overloaded loop no longer spends a request's worth of
//! Python on each refusal.
//!
//! Sends come from the event loop's thread and go straight to the socket under a mutex the
//! I/O thread also takes to receive, so a send still reports at once whether ZMQ took the
//! reply (ROUTER_MANDATORY: peer gone; SNDHWM: peer not reading). Nothing here panics on
//! network bytes; a panic in the check is caught and the message handed over raw.
use std::cell::UnsafeCell;
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use inferential::wire::server::{
    check_observation, encode_refusal, encode_reply, ObservationHead, ReplyChunk, ReplyHead,
    ReplyTensor, TensorSpan,
};
use inferential::DType;
use inferential::{Limits, Status};
use pyo3::exceptions::{PyBufferError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMemoryView, PyTuple};

/// Messages checked and waiting for the loop; past it the I/O thread stops reading and
/// libzmq's RCVHWM applies, as with the Python transport.
const QUEUE_CAPACITY: usize = 1024;

// libzmq's constants (zmq.h; stable since 4.0).
const ZMQ_DONTWAIT: c_int = 1;
const ZMQ_SNDMORE: c_int = 2;
const ZMQ_FD: c_int = 14;
const ZMQ_EVENTS: c_int = 15;
const ZMQ_POLLIN: c_int = 1;
const ZMQ_SRCFD: c_int = 2;

/// A `zmq_msg_t`: 64 opaque bytes, 8-aligned.
#[repr(C, align(8))]
struct RawMsg([u8; 64]);

/// The libzmq functions this module calls, from the library pyzmq loaded.
struct Api {
    msg_init: unsafe extern "C" fn(*mut RawMsg) -> c_int,
    msg_close: unsafe extern "C" fn(*mut RawMsg) -> c_int,
    msg_recv: unsafe extern "C" fn(*mut RawMsg, *mut c_void, c_int) -> c_int,
    msg_data: unsafe extern "C" fn(*mut RawMsg) -> *mut c_void,
    msg_size: unsafe extern "C" fn(*const RawMsg) -> usize,
    msg_more: unsafe extern "C" fn(*const RawMsg) -> c_int,
    msg_get: unsafe extern "C" fn(*const RawMsg, c_int) -> c_int,
    msg_gets: unsafe extern "C" fn(*const RawMsg, *const c_char) -> *const c_char,
    send: unsafe extern "C" fn(*mut c_void, *const c_void, usize, c_int) -> c_int,
    getsockopt: unsafe extern "C" fn(*mut c_void, c_int, *mut c_void, *mut usize) -> c_int,
    errno: unsafe extern "C" fn() -> c_int,
}

static API: OnceLock<Api> = OnceLock::new();

fn load_api(path: &str) -> PyResult<&'static Api> {
    if let Some(api) = API.get() {
        return Ok(api);
    }
    let c_path = CString::new(path).map_err(|_| PyRuntimeError::new_err("bad libzmq path"))?;
    // SAFETY: dlopen of the library already in the process returns the same instance;
    // each symbol is looked up by its libzmq name and given its libzmq signature.
    let api = unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(PyOSError::new_err(format!("dlopen {path} failed")));
        }
        macro_rules! sym {
            ($name:literal) => {{
                let p = libc::dlsym(handle, concat!($name, "\0").as_ptr() as *const c_char);
                if p.is_null() {
                    return Err(PyOSError::new_err(concat!("libzmq has no ", $name)));
                }
                std::mem::transmute_copy::<*mut c_void, _>(&p)
            }};
        }
        Api {
            msg_init: sym!("zmq_msg_init"),
            msg_close: sym!("zmq_msg_close"),
            msg_recv: sym!("zmq_msg_recv"),
            msg_data: sym!("zmq_msg_data"),
            msg_size: sym!("zmq_msg_size"),
            msg_more: sym!("zmq_msg_more"),
            msg_get: sym!("zmq_msg_get"),
            msg_gets: sym!("zmq_msg_gets"),
            send: sym!("zmq_send"),
            getsockopt: sym!("zmq_getsockopt"),
            errno: sym!("zmq_errno"),
        }
    };
    Ok(API.get_or_init(|| api))
}

fn api() -> &'static Api {
    // Every Msg and Router is made after load_api succeeded.
    API.get().expect("libzmq API loaded")
}

/// One received ZMQ message part, owned (closed on drop).
struct Msg(UnsafeCell<RawMsg>);

// SAFETY: a received message is only read after it is received (its data never changes)
// and closed once, by its owner; libzmq's message reference counts are atomic.
unsafe impl Send for Msg {}
unsafe impl Sync for Msg {}

impl Msg {
    fn new() -> Msg {
        let m = Msg(UnsafeCell::new(RawMsg([0; 64])));
        // SAFETY: initialises the zeroed struct as an empty message (never fails).
        unsafe { (api().msg_init)(m.0.get()) };
        m
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: data/size of an initialised message; the bytes live as long as the message
        // (a small message's bytes are inside the struct, which does not move while borrowed).
        unsafe {
            let size = (api().msg_size)(self.0.get());
            if size == 0 {
                return &[];
            }
            std::slice::from_raw_parts((api().msg_data)(self.0.get()) as *const u8, size)
        }
    }

    fn more(&self) -> bool {
        // SAFETY: an initialised message.
        unsafe { (api().msg_more)(self.0.get()) != 0 }
    }

    fn property(&self, name: &CStr) -> Option<String> {
        // SAFETY: an initialised, received message; the returned string is libzmq's, copied.
        unsafe {
            let p = (api().msg_gets)(self.0.get(), name.as_ptr());
            if p.is_null() {
                return None;
            }
            Some(CStr::from_ptr(p).to_string_lossy().into_owned())
        }
    }
}

impl Drop for Msg {
    fn drop(&mut self) {
        // SAFETY: closed once; closing an empty or received message cannot fail.
        unsafe { (api().msg_close)(self.0.get()) };
    }
}

fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC: the clock of Python's time.monotonic_ns on Linux.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A non-blocking eventfd: readable while signalled.
struct EventFd(RawFd);

impl EventFd {
    fn new() -> PyResult<EventFd> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(PyOSError::new_err(format!(
                "eventfd: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(EventFd(fd))
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64; EAGAIN (counter full) still leaves it signalled.
        unsafe { libc::write(self.0, &one as *const u64 as *const c_void, 8) };
    }

    fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN when not signalled is fine.
        unsafe { libc::read(self.0, &mut value as *mut u64 as *mut c_void, 8) };
    }
}

impl Drop for EventFd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// One received frame, readable from Python without a copy (buffer protocol), with the
/// parts of pyzmq's `zmq.Frame` the server uses: `.buffer`, `.bytes`, `.get("User-Id")`,
/// `.get(zmq.SRCFD)`.
#[pyclass(frozen, module = "inferential_native")]
struct Frame {
    msg: Msg,
}

#[pymethods]
impl Frame {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("view is null"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a received frame is read-only"));
        }
        let data: &[u8] = slf.get().msg.bytes();
        // SAFETY: `view` is a valid Py_buffer to fill; the frame (its owner, kept alive by
        // view.obj) never changes or moves its bytes while the view lives.
        unsafe {
            (*view).buf = data.as_ptr() as *mut c_void;
            (*view).len = data.len() as isize;
            (*view).readonly = 1;
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                CString::new("B")
                    .map(CString::into_raw)
                    .unwrap_or(ptr::null_mut())
            } else {
                ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &mut (*view).len
            } else {
                ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &mut (*view).itemsize
            } else {
                ptr::null_mut()
            };
            (*view).suboffsets = ptr::null_mut();
            (*view).internal = ptr::null_mut();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, view: *mut ffi::Py_buffer) {
        // SAFETY: the format string, when set, was made by CString::into_raw above.
        unsafe {
            if !(*view).format.is_null() {
                drop(CString::from_raw((*view).format));
            }
        }
    }

    fn __len__(&self) -> usize {
        self.msg.bytes().len()
    }

    /// A read-only memoryview of the frame (as pyzmq's `Frame.buffer`).
    #[getter]
    fn buffer<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyMemoryView>> {
        PyMemoryView::from(slf.as_any())
    }

    /// The frame's bytes, copied.
    #[getter]
    fn bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.msg.bytes())
    }

    /// A message property, as pyzmq's `Frame.get`: a name ("User-Id", "Peer-Address")
    /// or `zmq.SRCFD`; None when the message has none.
    fn get(&self, name: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let py = name.py();
        if let Ok(number) = name.extract::<c_int>() {
            if number != ZMQ_SRCFD {
                return Ok(None);
            }
            // SAFETY: an initialised, received message.
            let fd = unsafe { (api().msg_get)(self.msg.0.get(), ZMQ_SRCFD) };
            return Ok((fd >= 0)
                .then(|| fd.into_pyobject(py).map(|o| o.into_any().unbind()))
                .transpose()?);
        }
        let name: String = name.extract()?;
        let Ok(c_name) = CString::new(name) else {
            return Ok(None);
        };
        Ok(self
            .msg
            .property(&c_name)
            .map(|v| v.into_pyobject(py).map(|o| o.into_any().unbind()))
            .transpose()?)
    }
}

/// What the check found in an accepted observation.
struct Checked {
    spans: Vec<TensorSpan>,
    payload_bytes: usize,
    head: ObservationHead,
}

/// A received message, checked.
struct Received {
    parts: Vec<Msg>,
    /// When the receive queue was last found empty before this message was read: it
    /// arrived after that, so this bounds how long it has waited for the server.
    ref_ns: u64,
    /// When the I/O thread read it: it has waited at least since then.
    recv_ns: u64,
    /// None: refused by the check (the loop's decoder words why).
    checked: Option<Checked>,
}

/// The socket pointer, used only under `Shared::sock`.
struct Sock(*mut c_void);

// SAFETY: a ZMQ socket may be used from any thread as long as one thread at a time uses it
// (with a memory barrier between): the mutex around it gives both.
unsafe impl Send for Sock {}

struct Shared {
    sock: Mutex<Option<Sock>>,
    queue: Mutex<VecDeque<Received>>,
    room: Condvar,
    /// Signalled while the queue holds messages: the event loop watches it.
    ready: EventFd,
    /// Wakes the I/O thread (a send that saw input waiting, close).
    wake: EventFd,
    stop: AtomicBool,
    limits: Limits,
    empty_ns: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock is not expected; a poisoned lock still guards valid data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn socket_int(sock: *mut c_void, option: c_int) -> Option<i64> {
    // ZMQ_FD is an int, ZMQ_EVENTS an int: read into an 8-byte slot with its size given.
    let mut value: i64 = 0;
    let mut size = std::mem::size_of::<c_int>();
    // SAFETY: a live socket, a buffer of `size` bytes.
    let rc = unsafe {
        (api().getsockopt)(
            sock,
            option,
            &mut value as *mut i64 as *mut c_void,
            &mut size,
        )
    };
    (rc == 0).then_some(value as c_int as i64)
}

enum Recv {
    Message(Vec<Msg>),
    Empty,
    Failed,
}

fn recv_message(sock: *mut c_void) -> Recv {
    let first = Msg::new();
    // SAFETY: a live socket (the caller holds its lock) and an initialised message.
    if unsafe { (api().msg_recv)(first.0.get(), sock, ZMQ_DONTWAIT) } < 0 {
        // SAFETY: plain call.
        let err = unsafe { (api().errno)() };
        return if err == libc::EAGAIN {
            Recv::Empty
        } else {
            Recv::Failed
        };
    }
    let mut more = first.more();
    let mut parts = vec![first];
    while more {
        // The rest of a message is already here: ZMQ delivers whole messages.
        let part = Msg::new();
        // SAFETY: as above.
        if unsafe { (api().msg_recv)(part.0.get(), sock, 0) } < 0 {
            return Recv::Failed;
        }
        more = part.more();
        parts.push(part);
    }
    Recv::Message(parts)
}

fn check(parts: &[Msg], limits: &Limits) -> Option<Checked> {
    let frames: Vec<&[u8]> = parts.iter().skip(1).map(Msg::bytes).collect();
    catch_unwind(AssertUnwindSafe(|| check_observation(&frames, limits)))
        .ok()?
        .ok()
        .map(|c| Checked {
            spans: c.tensors,
            payload_bytes: c.payload_bytes,
            head: c.head,
        })
}

fn io_thread(shared: Arc<Shared>, zmq_fd: RawFd) {
    loop {
        {
            let mut queue = lock(&shared.queue);
            while queue.len() >= QUEUE_CAPACITY && !shared.stop.load(Ordering::Acquire) {
                queue = shared.room.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        // One message per hold of the socket lock: a reply being sent waits for at most one
        // receive, and each message reaches the loop as soon as it is checked.
        let mut failed = false;
        let (received, more_waiting) = {
            let guard = lock(&shared.sock);
            let Some(sock) = guard.as_ref() else { return };
            let ref_ns = shared.empty_ns.load(Ordering::Relaxed);
            match recv_message(sock.0) {
                Recv::Message(parts) => (Some((parts, ref_ns)), true),
                Recv::Empty => {
                    shared.empty_ns.store(monotonic_ns(), Ordering::Relaxed);
                    // ZMQ's descriptor is edge-triggered: wait on it only when EVENTS says
                    // there is no input.
                    let readable = socket_int(sock.0, ZMQ_EVENTS)
                        .is_some_and(|ev| ev & ZMQ_POLLIN as i64 != 0);
                    (None, readable)
                }
                Recv::Failed => {
                    // ETERM and the like: wait (the stop flag ends the loop), never spin.
                    failed = true;
                    (None, false)
                }
            }
        };
        if let Some((parts, ref_ns)) = received {
            let recv_ns = monotonic_ns();
            let checked = check(&parts, &shared.limits);
            let mut queue = lock(&shared.queue);
            let was_empty = queue.is_empty();
            queue.push_back(Received {
                parts,
                ref_ns,
                recv_ns,
                checked,
            });
            if was_empty {
                shared.ready.signal();
            }
        }
        let more_waiting = more_waiting && !failed;
        if more_waiting {
            continue;
        }
        let mut fds = [
            libc::pollfd {
                fd: zmq_fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: shared.wake.0,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if fds[1].revents != 0 {
            shared.wake.clear();
        }
    }
}

/// How Python names a known robot: (budget ms, token, pinned priority), each None when not
/// configured.
type KnownEntry = (Option<f64>, Option<String>, Option<u32>);

/// How Python states a model's costs: (base ms, ahead ms, per item ms, floor ms), see
/// `ModelCost`. The three numbers without the floor (a server from before it, e.g. the
/// "before" row of bench/scheduling.py run against this module) mean a floor of 0.
#[derive(FromPyObject)]
enum CostEntry {
    WithFloor((f64, f64, f64, f64)),
    NoFloor((f64, f64, f64)),
}

/// A robot the configuration names: its budget, token and pinned priority, when set.
struct KnownRobot {
    budget_ms: Option<f64>,
    token: Option<String>,
    pinned_priority: Option<u32>,
}

/// What serving one more request of a model takes, as the event loop last estimated it.
struct ModelCost {
    /// Once taken, at the least (it went first): the model's run time alone, the loop's
    /// own time and the reply's way back.
    base_ns: u64,
    /// The work queued ahead of a request taken now (its plan's backlog); grows by
    /// `per_item_ns` with each request handed over until the loop states it again.
    ahead_ns: u64,
    per_item_ns: u64,
    /// The model's run time alone plus the reply's margin: a budget shorter than this is a
    /// mismatch of configuration, not of load, and the loop runs such a request anyway
    /// (after work that can be on time), so this module leaves it to the loop.
    floor_ns: u64,
}

fn ms_to_ns(ms: f64) -> u64 {
    (ms.clamp(0.0, 1e9) * 1e6) as u64
}

fn costs_of(margins: HashMap<String, CostEntry>) -> HashMap<String, ModelCost> {
    margins
        .into_iter()
        .map(|(m, entry)| {
            let (base, ahead, per_item, floor) = match entry {
                CostEntry::WithFloor(c) => c,
                CostEntry::NoFloor((base, ahead, per_item)) => (base, ahead, per_item, 0.0),
            };
            let cost = ModelCost {
                base_ns: ms_to_ns(base),
                ahead_ns: ms_to_ns(ahead),
                per_item_ns: ms_to_ns(per_item),
                floor_ns: ms_to_ns(floor),
            };
            (m, cost)
        })
        .collect()
}

/// What the event loop lets `take` answer without it: an observation that has already
/// waited in this module's queue longer than it can afford is refused here (as it reaches
/// the front of the queue), at a few
/// microseconds, instead of costing the loop a full request's worth of Python to refuse
/// the same way (the rule of server-py's `admission.admit`, applied to the wait this module
/// measured itself). An observation that states no budget (a 1.x robot) is judged by the
/// budget the scheduler gave its stream's last one (tightened to the robot's cadence), else
/// by the server's default. Whatever the policy cannot decide as the loop would (an
/// unserved model, a robot the access rules may refuse, a CURVE key bound to another id, an
/// absolute deadline, a chunk request) goes to the loop as before.
struct ShedPolicy {
    /// The served models, each with the time serving one of its requests still needs
    /// once taken (the model's run time, the server's own and the reply's way), ns.
    costs: HashMap<String, ModelCost>,
    /// Requests of a priority below this (more urgent than the default) may be queued
    /// ahead of others by the plan: only the certain rule (base cost) refuses them.
    urgent_below: u32,
    ttl_ms: f64,
    known: HashMap<String, KnownRobot>,
    accept_unknown: bool,
    default_token: Option<String>,
    curve: bool,
    response_prefix: String,
    /// The budget of an observation that states none and whose robot has none configured
    /// (a 1.x robot): the server's default (`clients.defaults.latency_budget_ms`), or the
    /// one the loop stated for its stream (`streams`). None: such observations go to the loop.
    default_budget_ms: Option<f64>,
    /// Per connection (identity) and model: (robot id, budget ms) that the scheduler gave the
    /// stream's last observation (tightened to the robot's cadence when it sends on its own
    /// clock), as the loop states it (`set_stream_budget`).
    streams: HashMap<Vec<u8>, HashMap<String, (String, f64)>>,
}

/// Constant-time comparison of two tokens (their lengths aside).
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl ShedPolicy {
    /// `item` is handed to the loop: it is work ahead of the next request of its model.
    fn queued(&mut self, item: &Received) {
        let model = item.checked.as_ref().map(|c| c.head.model_id.as_str());
        if let Some(cost) = model.and_then(|m| self.costs.get_mut(m)) {
            cost.ahead_ns = cost.ahead_ns.saturating_add(cost.per_item_ns);
        }
    }

    /// The refusal for `item` taken at `now_ns`, or None: the loop handles it.
    fn verdict(&self, item: &Received, now_ns: u64) -> Option<(Status, String)> {
        let checked = item.checked.as_ref()?;
        let head = &checked.head;
        let cost = self.costs.get(&head.model_id)?;
        // A chunk request is never refused for lateness; an absolute deadline or an
        // action queue is the scheduler's to weigh.
        if head.control_rate_hz > 0.0 || head.deadline_ns != 0 || head.has_actions_remaining {
            return None;
        }
        let known = self.known.get(&head.client_id);
        if known.is_none() && !self.accept_unknown {
            return None;
        }
        let expected = known
            .and_then(|k| k.token.as_deref())
            .or(self.default_token.as_deref());
        if expected.is_some_and(|t| !same_token(t, &head.auth_token)) {
            return None;
        }
        if self.curve {
            let speaker = item.parts.get(2).and_then(|m| m.property(c"User-Id"));
            if speaker.as_deref() != Some(head.client_id.as_str()) {
                return None;
            }
        }
        let budget_ms = if head.latency_budget_ms > 0.0 {
            head.latency_budget_ms as f64
        } else if let Some(ms) = known.and_then(|k| k.budget_ms) {
            ms
        } else {
            // A robot that states no budget (a 1.x robot): the scheduler tightens its
            // deadline to its cadence, as the loop stated it for this stream; before it
            // has, the server's default budget.
            let identity = item.parts.first().map(Msg::bytes).unwrap_or(&[]);
            let stated = self
                .streams
                .get(identity)
                .and_then(|models| models.get(&head.model_id))
                .filter(|(client, _)| *client == head.client_id)
                .map(|&(_, ms)| ms);
            stated.or(self.default_budget_ms)?
        };
        let waited_ns = now_ns.saturating_sub(item.recv_ns);
        let waited_ms = waited_ns as f64 / 1e6;
        if waited_ms > self.ttl_ms {
            let why = format!(
                "waited {waited_ms:.0} ms before the server could read it, TTL is {:.0} ms",
                self.ttl_ms
            );
            return Some((Status::Expired, why));
        }
        let budget_ns = ms_to_ns(budget_ms);
        if budget_ns < cost.floor_ns {
            return None; // late even on an idle server: the loop runs it after the rest
        }
        if waited_ns.saturating_add(cost.base_ns) > budget_ns {
            let why = format!(
                "waited {waited_ms:.0} ms before the server could read it and serving it \
                 takes about {:.0} ms more, budget is {budget_ms:.0} ms",
                cost.base_ns as f64 / 1e6
            );
            return Some((Status::DeadlineUnmeetable, why));
        }
        let priority = known
            .and_then(|k| k.pinned_priority)
            .unwrap_or(head.priority);
        let ahead_ns = cost.ahead_ns.saturating_add(cost.base_ns);
        if priority >= self.urgent_below && waited_ns.saturating_add(ahead_ns) > budget_ns {
            let why = format!(
                "cannot finish before its deadline given the work queued ahead (waited \
                 {waited_ms:.0} ms before the server could read it, about {:.0} ms more to \
                 serve it, budget is {budget_ms:.0} ms)",
                ahead_ns as f64 / 1e6
            );
            return Some((Status::DeadlineUnmeetable, why));
        }
        None
    }
}

/// Refusals sent by `take`, for the loop's metrics.
#[derive(Default)]
struct ShedCounts {
    /// (model, status code) -> replies sent.
    replies: HashMap<(String, i32), u64>,
    /// (model, why not) -> replies ZMQ did not take.
    undeliverable: HashMap<(String, &'static str), u64>,
    /// Identities whose peer was gone.
    gone: Vec<Vec<u8>>,
    /// (robot id, identity, model, when read) of each refused observation that stated no
    /// budget (at most `MAX_ARRIVALS`): the loop's cadence of such a robot, which its
    /// deadline is tightened to, counts them as it counts those it sees.
    arrivals: Vec<(String, Vec<u8>, String, u64)>,
}

/// Refused arrivals kept between two `take_arrivals` calls (the loop takes them after
/// every `take`); beyond this they are not counted in the cadence.
const MAX_ARRIVALS: usize = 65536;

/// The ROUTER socket at `socket` (a pyzmq socket's `.underlying`, bound), served by an
/// I/O thread until `close()`. Python must not use the socket meanwhile.
#[pyclass(module = "inferential_native")]
struct Router {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    policy: Mutex<Option<ShedPolicy>>,
    counts: Mutex<ShedCounts>,
    refused: AtomicU64,
    /// Replies sent by `reply`, for their response ids (`reply_prefix` + the count in hex).
    replied: AtomicU64,
    reply_prefix: Mutex<String>,
}

/// Why ZMQ did not take a message, in the words of the Python transport.
fn send_failure(err: c_int) -> Option<&'static str> {
    match err {
        libc::EHOSTUNREACH => Some("peer disconnected"),
        libc::EAGAIN => Some("peer is not reading (send queue full)"),
        _ => None,
    }
}

/// Whether input is waiting on the socket (the caller holds its lock). A send can consume
/// the edge of ZMQ's descriptor for input that arrived meanwhile, and the I/O thread waits for
/// that edge: after sending, a caller that finds input waiting wakes the thread.
fn input_waiting(sock: *mut c_void) -> bool {
    socket_int(sock, ZMQ_EVENTS).is_some_and(|ev| ev & ZMQ_POLLIN as i64 != 0)
}

/// A failed send as `send` and `reply` report it: why ZMQ did not take it, or an OSError.
fn send_result(sent: Result<(), c_int>) -> PyResult<Option<&'static str>> {
    match sent {
        Ok(()) => Ok(None),
        Err(err) => match send_failure(err) {
            Some(why) => Ok(Some(why)),
            None => Err(PyOSError::new_err(format!("zmq_send: errno {err}"))),
        },
    }
}

/// Sends the frames as one message without waiting (the caller holds the socket's lock).
fn send_parts(sock: *mut c_void, frames: &[&[u8]]) -> Result<(), c_int> {
    let last = frames.len().saturating_sub(1);
    for (i, data) in frames.iter().enumerate() {
        let flags = if i < last {
            ZMQ_DONTWAIT | ZMQ_SNDMORE
        } else {
            ZMQ_DONTWAIT
        };
        // SAFETY: a live socket (the caller holds its lock); libzmq copies `data`.
        let rc = unsafe { (api().send)(sock, data.as_ptr() as *const c_void, data.len(), flags) };
        if rc < 0 {
            // SAFETY: plain call.
            return Err(unsafe { (api().errno)() });
        }
    }
    Ok(())
}

fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Router {
    /// Sends `frames` as one message without waiting and without the GIL: a send that wakes
    /// ZMQ's I/O thread can lose the core to it for a while (hundreds of microseconds at the
    /// 99th percentile on a busy 2-core host), and a model's thread goes on meanwhile
    /// (measured: docs/performance.md, "Sends without the GIL"). `check_input`: afterwards,
    /// wake the I/O thread when input is waiting (see `check_input`). None when ZMQ took
    /// the message, else why not.
    fn send_slices(
        &self,
        py: Python<'_>,
        frames: &[&[u8]],
        check_input: bool,
    ) -> PyResult<Option<&'static str>> {
        let shared = &self.shared;
        let sent = py.detach(|| {
            let guard = lock(&shared.sock);
            let sock = guard.as_ref()?;
            let sent = send_parts(sock.0, frames);
            // A send can consume the edge of ZMQ's descriptor for input that arrived
            // meanwhile: the I/O thread is woken to look, after the lock is let go (a woken
            // thread that preempts this one must not find it held).
            let wake = check_input && input_waiting(sock.0);
            drop(guard);
            if wake {
                shared.wake.signal();
            }
            Some(sent)
        });
        match sent {
            Some(sent) => send_result(sent),
            None => Err(PyRuntimeError::new_err("the transport is closed")),
        }
    }

    /// Answers the refusals `take` decided, with response ids `prefix` + a counter, and
    /// counts them.
    fn refuse(&self, refusals: Vec<(Received, Status, String)>, prefix: &str) {
        if refusals.is_empty() {
            return;
        }
        let now = realtime_ns();
        let mut counts = lock(&self.counts);
        let guard = lock(&self.shared.sock);
        let mut wake = false;
        for (item, status, why) in refusals {
            let Some(checked) = item.checked.as_ref() else {
                continue;
            };
            let head = &checked.head;
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let (envelope, empty_frames) =
                encode_refusal(head, status, &why, &format!("{prefix}{n:x}"), now);
            let identity = item.parts.first().map(Msg::bytes).unwrap_or(&[]);
            let mut frames: Vec<&[u8]> = vec![identity, &[], &envelope];
            frames.extend(std::iter::repeat_n(&[][..], empty_frames));
            let sent = match guard.as_ref() {
                Some(sock) => send_parts(sock.0, &frames),
                None => Err(libc::ENOTSOCK),
            };
            *counts
                .replies
                .entry((head.model_id.clone(), status.code()))
                .or_default() += 1;
            if head.latency_budget_ms <= 0.0 && counts.arrivals.len() < MAX_ARRIVALS {
                let arrival = (
                    head.client_id.clone(),
                    identity.to_vec(),
                    head.model_id.clone(),
                    item.recv_ns,
                );
                counts.arrivals.push(arrival);
            }
            if let Err(err) = sent {
                let reason = send_failure(err).unwrap_or("send failed");
                *counts
                    .undeliverable
                    .entry((head.model_id.clone(), reason))
                    .or_default() += 1;
                if err == libc::EHOSTUNREACH && counts.gone.len() < 4096 {
                    counts.gone.push(identity.to_vec());
                }
            }
        }
        if let Some(sock) = guard.as_ref() {
            wake = input_waiting(sock.0);
        }
        drop(guard);
        if wake {
            self.shared.wake.signal();
        }
    }
}

type SpanTuple<'a, 'py> = (&'a str, i32, Bound<'py, PyTuple>, i64, usize, usize);

fn span_tuple<'a, 'py>(py: Python<'py>, s: &'a TensorSpan) -> PyResult<SpanTuple<'a, 'py>> {
    Ok((
        &s.key,
        s.dtype.code(),
        PyTuple::new(py, &s.shape)?,
        s.frame.map(|f| f as i64).unwrap_or(-1),
        s.offset,
        s.count,
    ))
}

fn frame_list<'py>(
    py: Python<'py>,
    parts: impl Iterator<Item = Msg>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for msg in parts {
        list.append(Py::new(py, Frame { msg })?)?;
    }
    Ok(list)
}

#[pymethods]
impl Router {
    /// `libzmq`: the path of the libzmq pyzmq loaded; `socket`: the socket's address;
    /// `max_message_bytes`: the message bound of the check.
    #[new]
    fn new(libzmq: &str, socket: usize, max_message_bytes: usize) -> PyResult<Self> {
        load_api(libzmq)?;
        let sock = socket as *mut c_void;
        if sock.is_null() {
            return Err(PyRuntimeError::new_err("no socket"));
        }
        let zmq_fd = socket_int(sock, ZMQ_FD)
            .ok_or_else(|| PyOSError::new_err("ZMQ_FD of the socket"))?
            as RawFd;
        let shared = Arc::new(Shared {
            sock: Mutex::new(Some(Sock(sock))),
            queue: Mutex::new(VecDeque::new()),
            room: Condvar::new(),
            ready: EventFd::new()?,
            wake: EventFd::new()?,
            stop: AtomicBool::new(false),
            limits: Limits {
                max_message_bytes,
                ..Limits::default()
            },
            empty_ns: AtomicU64::new(monotonic_ns()),
        });
        let io_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("inferential-io".into())
            .spawn(move || io_thread(io_shared, zmq_fd))
            .map_err(|e| PyOSError::new_err(format!("I/O thread: {e}")))?;
        Ok(Router {
            shared,
            thread: Mutex::new(Some(thread)),
            policy: Mutex::new(None),
            counts: Mutex::new(ShedCounts::default()),
            refused: AtomicU64::new(0),
            replied: AtomicU64::new(0),
            reply_prefix: Mutex::new("r-".to_owned()),
        })
    }

    /// The descriptor the event loop watches: readable while messages wait.
    fn fileno(&self) -> i32 {
        self.shared.ready.0
    }

    /// Monotonic ns when the I/O thread last found the receive queue empty.
    #[getter]
    fn empty_ns(&self) -> u64 {
        self.shared.empty_ns.load(Ordering::Relaxed)
    }

    /// Up to `max` waiting messages. An accepted observation is the tuple
    /// `(identity, envelope, payload_frames, tensors, payload_bytes, ref_ns)` (identity
    /// bytes, the others Frames), each tensor `(key, dtype code, shape, frame index or -1,
    /// offset, count)`; one the check refused is `(None, frames, ref_ns)` with every
    /// frame, identity first.
    ///
    /// With a shedding policy set (`set_shedding`), observations that have waited in the
    /// queue longer than they can afford are answered here instead (counted for
    /// `take_refusals`) and not handed over.
    fn take<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let mut refusals: Vec<(Received, Status, String)> = Vec::new();
        let mut prefix: Option<String> = None;
        let taken: Vec<Received> = {
            let mut policy = lock(&self.policy);
            let mut queue = lock(&self.shared.queue);
            let now = monotonic_ns();
            let mut removed = false;
            if let Some(p) = policy.as_ref() {
                // Everything already too late goes, wherever it is in the queue (rotated in
                // place). This keeps the queue short under overload, so the I/O thread keeps
                // reading and every wait is one this module measured: past QUEUE_CAPACITY the
                // backlog would move into libzmq's queue, where waits are not seen, and
                // observations read late would look fresh (measured: without this sweep, 160
                // robots got 396 OK/s within budget and 8,869 read late).
                for _ in 0..queue.len() {
                    let Some(item) = queue.pop_front() else { break };
                    match p.verdict(&item, now) {
                        Some((status, why)) => {
                            refusals.push((item, status, why));
                            removed = true;
                        }
                        None => queue.push_back(item),
                    }
                }
            }
            // Oldest first, each judged again as it is handed over. (Handing the newest over
            // first while the loop is behind gave v2 robots a little more goodput but made
            // more of the loop's answers to 1.x robots late: docs/performance.md.)
            let mut taken: Vec<Received> = Vec::with_capacity(max.min(queue.len()));
            while taken.len() < max {
                let Some(item) = queue.pop_front() else { break };
                removed = true;
                if let Some(p) = policy.as_mut() {
                    // Each request handed over is work queued ahead of the next.
                    if let Some((status, why)) = p.verdict(&item, now) {
                        refusals.push((item, status, why));
                        continue;
                    }
                    p.queued(&item);
                }
                taken.push(item);
            }
            if queue.is_empty() {
                self.shared.ready.clear();
            }
            if removed {
                self.shared.room.notify_one();
            }
            if !refusals.is_empty() {
                prefix = policy.as_ref().map(|p| p.response_prefix.clone());
            }
            taken
        };
        if !refusals.is_empty() {
            // Sends without the GIL, as `reply` does.
            py.detach(|| self.refuse(refusals, prefix.as_deref().unwrap_or_default()));
        }
        let out = PyList::empty(py);
        for item in taken {
            let Received {
                parts,
                ref_ns,
                checked,
                ..
            } = item;
            // An accepted message has an identity, a delimiter and an envelope.
            match checked.filter(|_| parts.len() >= 3) {
                Some(Checked {
                    spans,
                    payload_bytes,
                    ..
                }) => {
                    let mut parts = parts.into_iter();
                    let identity = PyBytes::new(py, parts.next().unwrap_or_else(Msg::new).bytes());
                    let _delimiter = parts.next();
                    let envelope = Py::new(
                        py,
                        Frame {
                            msg: parts.next().unwrap_or_else(Msg::new),
                        },
                    )?;
                    let payload = frame_list(py, parts)?;
                    let tensors = PyList::empty(py);
                    for s in &spans {
                        tensors.append(span_tuple(py, s)?)?;
                    }
                    out.append((identity, envelope, payload, tensors, payload_bytes, ref_ns))?;
                }
                None => {
                    out.append((py.None(), frame_list(py, parts.into_iter())?, ref_ns))?;
                }
            }
        }
        Ok(out)
    }

    /// Lets `take` refuse what can no longer be answered in time (see `ShedPolicy`), or
    /// stops it (`costs` None). `costs`: served model -> (base ms, ahead ms, per item ms, floor ms),
    /// see `ModelCost`; `known`: robot id -> (budget ms, token, pinned priority), each None
    /// when not configured; `urgent_below`: requests of a lower priority number face only
    /// the base cost. Replies get response ids `response_prefix` + a hex counter.
    /// `default_budget_ms`: the budget of an observation that states none and whose robot
    /// has none configured, until the loop states its stream's (`set_stream_budget`); None
    /// leaves such observations to the loop. Stream budgets stated before are forgotten.
    #[pyo3(signature = (costs, ttl_ms=5000.0, known=None, accept_unknown=true, default_token=None, curve=false, response_prefix="n-".to_string(), urgent_below=1, default_budget_ms=None))]
    #[allow(clippy::too_many_arguments)]
    fn set_shedding(
        &self,
        costs: Option<HashMap<String, CostEntry>>,
        ttl_ms: f64,
        known: Option<HashMap<String, KnownEntry>>,
        accept_unknown: bool,
        default_token: Option<String>,
        curve: bool,
        response_prefix: String,
        urgent_below: u32,
        default_budget_ms: Option<f64>,
    ) {
        let policy = costs.map(|costs| ShedPolicy {
            costs: costs_of(costs),
            urgent_below,
            ttl_ms,
            known: known
                .unwrap_or_default()
                .into_iter()
                .map(|(id, (budget_ms, token, pinned_priority))| {
                    let robot = KnownRobot {
                        budget_ms,
                        token,
                        pinned_priority,
                    };
                    (id, robot)
                })
                .collect(),
            accept_unknown,
            default_token,
            curve,
            response_prefix,
            default_budget_ms: default_budget_ms.filter(|ms| *ms > 0.0),
            streams: HashMap::new(),
        });
        *lock(&self.policy) = policy;
    }

    /// The budget, in ms, of the next observations of `model_id` from `client_id` on the
    /// connection `identity` that state none themselves (see `set_shedding`), or None to
    /// forget the stream (they fall back to the default budget). Ignored while no policy
    /// is set.
    fn set_stream_budget(
        &self,
        client_id: String,
        identity: Vec<u8>,
        model_id: String,
        budget_ms: Option<f64>,
    ) {
        let mut policy = lock(&self.policy);
        let Some(p) = policy.as_mut() else { return };
        match budget_ms.filter(|ms| ms.is_finite() && *ms > 0.0) {
            Some(ms) => {
                p.streams
                    .entry(identity)
                    .or_default()
                    .insert(model_id, (client_id, ms));
            }
            None => {
                if let Some(models) = p.streams.get_mut(&identity) {
                    models.remove(&model_id);
                    if models.is_empty() {
                        p.streams.remove(&identity);
                    }
                }
            }
        }
    }

    /// New model costs for the shedding policy, if one is set (the event loop states them
    /// before a burst, at most once per millisecond: the work queued ahead starts again from
    /// its plan).
    fn set_costs(&self, costs: HashMap<String, CostEntry>) {
        if let Some(p) = lock(&self.policy).as_mut() {
            p.costs = costs_of(costs);
        }
    }

    /// The refusals `take` sent since the last call: `(replies, undeliverable, gone)` with
    /// `replies` `[(model, status code, count)]`, `undeliverable` `[(model, reason,
    /// count)]` and `gone` the identities whose peer had disconnected.
    #[allow(clippy::type_complexity)]
    fn take_refusals(
        &self,
        py: Python<'_>,
    ) -> (
        Vec<(String, i32, u64)>,
        Vec<(String, &'static str, u64)>,
        Vec<Py<PyBytes>>,
    ) {
        // The arrivals stay for take_arrivals.
        let (replies, undeliverable, gone) = {
            let mut counts = lock(&self.counts);
            (
                std::mem::take(&mut counts.replies),
                std::mem::take(&mut counts.undeliverable),
                std::mem::take(&mut counts.gone),
            )
        };
        let replies = replies.into_iter().map(|((m, s), n)| (m, s, n)).collect();
        let undeliverable = undeliverable
            .into_iter()
            .map(|((m, r), n)| (m, r, n))
            .collect();
        let gone = gone.iter().map(|g| PyBytes::new(py, g).unbind()).collect();
        (replies, undeliverable, gone)
    }

    /// The refused observations that stated no budget since the last call, oldest first:
    /// `[(robot id, identity, model, when read (monotonic ns))]`, for the loop's cadence.
    fn take_arrivals(&self, py: Python<'_>) -> Vec<(String, Py<PyBytes>, String, u64)> {
        let arrivals = std::mem::take(&mut lock(&self.counts).arrivals);
        arrivals
            .into_iter()
            .map(|(client, identity, model, at)| {
                (client, PyBytes::new(py, &identity).unbind(), model, at)
            })
            .collect()
    }

    /// Observations refused by `take` since the start.
    #[getter]
    fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Sends `[identity, b"", envelope, *payload]` (any buffer objects) without waiting:
    /// None when ZMQ took it, else why not ("peer disconnected", "peer is not reading (send
    /// queue full)"). libzmq copies the bytes.
    fn send(&self, frames: &Bound<'_, PyList>) -> PyResult<Option<&'static str>> {
        // Every frame's bytes are taken first (so a frame that is no buffer fails the call
        // before anything is sent), then sent without the GIL, as `reply` does.
        let items: Vec<Bound<'_, PyAny>> = frames.iter().collect();
        let mut held: Vec<Option<HeldBuffer>> = Vec::with_capacity(items.len());
        for item in &items {
            let direct = item.cast::<PyBytes>().is_ok() || item.cast::<Frame>().is_ok();
            held.push(if direct {
                None
            } else {
                Some(HeldBuffer::new(item)?)
            });
        }
        let slices: Vec<&[u8]> = items
            .iter()
            .zip(&held)
            .map(|(item, held)| match held {
                Some(buffer) => buffer.bytes(),
                None => frame_bytes(item),
            })
            .collect();
        self.send_slices(frames.py(), &slices, true)
    }

    /// Encodes a reply with the crate's `wire::server::encode_reply` and sends it as
    /// `send` does (None when ZMQ took it, else why not). Its response id is the prefix of
    /// `set_reply_prefix` and a counter. `timing`: (queue wait, inference, total ms, batch
    /// size); `chunk`: (first action step or None, action period ms, predicted and actual
    /// delay steps, valid until ns); `metadata`: the string outputs; `tensors`: `[(key,
    /// dtype code, shape, C-contiguous little-endian buffer)]`. `check_input` false: the
    /// caller sends more replies at once and calls `check_input` after the last (see
    /// there). ValueError when a receiver would refuse the reply (the caller words why with
    /// the Python encoder) or a buffer does not hold its shape's bytes; nothing is sent then.
    #[pyo3(signature = (identity, client_id, model_id, request_id, peer_version, status, error, observation_timestamp_ns, retry_after_ms, timing, chunk, metadata, tensors, check_input=true))]
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        identity: &[u8],
        client_id: &str,
        model_id: &str,
        request_id: u64,
        peer_version: u32,
        status: i32,
        error: &str,
        observation_timestamp_ns: u64,
        retry_after_ms: u32,
        timing: Option<(f32, f32, f32, u32)>,
        chunk: Option<(Option<u64>, f32, f32, f32, u64)>,
        metadata: Option<Vec<(String, String)>>,
        tensors: &Bound<'_, PyList>,
        check_input: bool,
    ) -> PyResult<Option<&'static str>> {
        let mut held: Vec<(String, DType, Vec<usize>, HeldBuffer)> =
            Vec::with_capacity(tensors.len());
        for item in tensors.iter() {
            let (key, code, shape, array): (String, i32, Vec<usize>, Bound<'_, PyAny>) =
                item.extract()?;
            let dtype = DType::from_code(code).ok_or_else(|| {
                PyValueError::new_err(format!("output '{key}': dtype code {code}"))
            })?;
            let buffer = HeldBuffer::new(&array)?;
            let expected = shape
                .iter()
                .try_fold(dtype.item_size(), |acc, &d| acc.checked_mul(d));
            if expected != Some(buffer.bytes().len()) {
                return Err(PyValueError::new_err(format!(
                    "output '{key}': {} bytes for shape {shape:?}",
                    buffer.bytes().len()
                )));
            }
            held.push((key, dtype, shape, buffer));
        }
        let views: Vec<ReplyTensor<'_>> = held
            .iter()
            .map(|(key, dtype, shape, buffer)| ReplyTensor {
                key,
                dtype: *dtype,
                shape,
                bytes: buffer.bytes(),
            })
            .collect();
        let metadata = metadata.unwrap_or_default();
        let pairs: Vec<(&str, &str)> = metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let n = self.replied.fetch_add(1, Ordering::Relaxed) + 1;
        let response_id = format!("{}{n:x}", lock(&self.reply_prefix));
        let head = ReplyHead {
            client_id,
            model_id,
            request_id,
            peer_version,
            status,
            error,
            response_id: &response_id,
            now_ns: realtime_ns(),
            observation_timestamp_ns,
            retry_after_ms,
            timing: timing.map(|(queue_wait_ms, inference_ms, total_ms, batch_size)| {
                inferential::Timing {
                    queue_wait_ms,
                    inference_ms,
                    total_ms,
                    batch_size,
                }
            }),
            chunk: chunk.map(
                |(first_action_step, action_period_ms, predicted, actual, valid_until_ns)| {
                    ReplyChunk {
                        first_action_step,
                        action_period_ms,
                        predicted_delay_steps: predicted,
                        actual_delay_steps: actual,
                        valid_until_ns,
                    }
                },
            ),
        };
        let (envelope, payload) = encode_reply(&head, &pairs, &views, &self.shared.limits)
            .map_err(|_| PyValueError::new_err("the reply would break the protocol limits"))?;
        let mut frames: Vec<&[u8]> = Vec::with_capacity(payload.len() + 3);
        frames.extend([identity, &[][..], &envelope[..]]);
        frames.extend(payload.iter().map(|f| &f[..]));
        self.send_slices(tensors.py(), &frames, check_input)
    }

    /// After replies sent with `check_input` false: wakes the I/O thread when input is
    /// waiting. (A send can consume the edge of ZMQ's descriptor for input that arrived
    /// meanwhile, and the thread waits for that edge; reading `ZMQ_EVENTS` costs a system
    /// call, so a batch's replies read it once, after the last.)
    fn check_input(&self) {
        let guard = lock(&self.shared.sock);
        let wake = guard.as_ref().is_some_and(|sock| input_waiting(sock.0));
        drop(guard);
        if wake {
            self.shared.wake.signal();
        }
    }

    /// The start of the response ids `reply` gives (a counter in hex follows), so that
    /// they stay unique among the server's other replies.
    fn set_reply_prefix(&self, prefix: String) {
        *lock(&self.reply_prefix) = prefix;
    }

    /// Stops the I/O thread and lets go of the socket (the Python transport closes it).
    /// Messages received and not taken are dropped. Idempotent.
    fn close(&self, py: Python<'_>) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.signal();
        self.shared.room.notify_all();
        let thread = lock(&self.thread).take();
        let shared = Arc::clone(&self.shared);
        py.detach(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            lock(&shared.sock).take();
            lock(&shared.queue).clear();
        });
    }
}

/// A Python object's bytes (any C-contiguous buffer), held until dropped (with the GIL).
struct HeldBuffer(ffi::Py_buffer);

impl HeldBuffer {
    fn new(obj: &Bound<'_, PyAny>) -> PyResult<HeldBuffer> {
        // SAFETY: a zeroed Py_buffer filled by PyObject_GetBuffer, released once in Drop.
        unsafe {
            let mut view: ffi::Py_buffer = std::mem::zeroed();
            if ffi::PyObject_GetBuffer(obj.as_ptr(), &mut view, ffi::PyBUF_SIMPLE) != 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            Ok(HeldBuffer(view))
        }
    }

    fn bytes(&self) -> &[u8] {
        let view = &self.0;
        if view.len > 0 && !view.buf.is_null() {
            // SAFETY: the exporter keeps `len` bytes at `buf` alive while the view is held.
            unsafe { std::slice::from_raw_parts(view.buf as *const u8, view.len as usize) }
        } else {
            &[]
        }
    }
}

impl Drop for HeldBuffer {
    fn drop(&mut self) {
        // SAFETY: acquired in `new`; dropped by the method holding the GIL.
        unsafe { ffi::PyBuffer_Release(&mut self.0) }
    }
}

/// The bytes of a `bytes` object or a received `Frame` (any other buffer is read through a
/// `HeldBuffer`; empty here).
fn frame_bytes<'a>(frame: &'a Bound<'_, PyAny>) -> &'a [u8] {
    if let Ok(b) = frame.cast::<PyBytes>() {
        return b.as_bytes();
    }
    match frame.cast::<Frame>() {
        Ok(f) => f.get().msg.bytes(),
        Err(_) => &[],
    }
}

/// The wire check alone, for tests: the frames after the identity -> the tensor spans
/// `[(key, dtype code, shape, frame or -1, offset, count)]`, or None when refused.
#[pyfunction]
fn check_frames(
    py: Python<'_>,
    frames: Vec<Vec<u8>>,
    max_message_bytes: usize,
) -> PyResult<Option<Bound<'_, PyList>>> {
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    let limits = Limits {
        max_message_bytes,
        ..Limits::default()
    };
    let verdict = catch_unwind(AssertUnwindSafe(|| check_observation(&refs, &limits)));
    let Ok(Ok(checked)) = verdict else {
        return Ok(None);
    };
    let out = PyList::empty(py);
    for s in &checked.tensors {
        out.append(span_tuple(py, s)?)?;
    }
    Ok(Some(out))
}

#[pymodule]
fn inferential_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Router>()?;
    m.add_class::<Frame>()?;
    m.add_function(wrap_pyfunction!(check_frames, m)?)?;
    Ok(())
}
