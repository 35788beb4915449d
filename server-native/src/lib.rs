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
//! Sends come from the event loop's thread and go straight to the socket under a mutex the
//! I/O thread also takes to receive, so a send still reports at once whether ZMQ took the
//! reply (ROUTER_MANDATORY: peer gone; SNDHWM: peer not reading). Nothing here panics on
//! network bytes; a panic in the check is caught and the message handed over raw.
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use inferential::wire::server::{check_observation, TensorSpan};
use inferential::Limits;
use pyo3::exceptions::{PyBufferError, PyOSError, PyRuntimeError};
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

/// A received message, checked.
struct Received {
    parts: Vec<Msg>,
    /// When the receive queue was last found empty before this message was read: it
    /// arrived after that, so this bounds how long it has waited for the server.
    ref_ns: u64,
    /// None: refused by the check (the loop's decoder words why).
    checked: Option<(Vec<TensorSpan>, usize)>,
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

fn check(parts: &[Msg], limits: &Limits) -> Option<(Vec<TensorSpan>, usize)> {
    let frames: Vec<&[u8]> = parts.iter().skip(1).map(Msg::bytes).collect();
    catch_unwind(AssertUnwindSafe(|| check_observation(&frames, limits)))
        .ok()?
        .ok()
        .map(|c| (c.tensors, c.payload_bytes))
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
            let checked = check(&parts, &shared.limits);
            let mut queue = lock(&shared.queue);
            let was_empty = queue.is_empty();
            queue.push_back(Received {
                parts,
                ref_ns,
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

/// The ROUTER socket at `socket` (a pyzmq socket's `.underlying`, bound), served by an
/// I/O thread until `close()`. Python must not use the socket meanwhile.
#[pyclass(module = "inferential_native")]
struct Router {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
    fn take<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let taken: Vec<Received> = {
            let mut queue = lock(&self.shared.queue);
            let n = max.min(queue.len());
            let taken: Vec<Received> = queue.drain(..n).collect();
            if queue.is_empty() {
                self.shared.ready.clear();
            }
            if n > 0 {
                self.shared.room.notify_one();
            }
            taken
        };
        let out = PyList::empty(py);
        for item in taken {
            let Received {
                parts,
                ref_ns,
                checked,
            } = item;
            // An accepted message has an identity, a delimiter and an envelope.
            match checked.filter(|_| parts.len() >= 3) {
                Some((spans, payload_bytes)) => {
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

    /// Sends `[identity, b"", envelope, *payload]` (any buffer objects) without waiting:
    /// None when ZMQ took it, else why not ("peer disconnected", "peer is not reading (send
    /// queue full)"). libzmq copies the bytes.
    fn send(&self, frames: &Bound<'_, PyList>) -> PyResult<Option<&'static str>> {
        // The I/O thread holds the lock for one receive (a few µs) and never needs the GIL,
        // so the GIL is kept while waiting: letting it go would hand it to another Python
        // thread for up to a switch interval (5 ms) before this one could continue.
        let guard = lock(&self.shared.sock);
        let Some(sock) = guard.as_ref() else {
            return Err(PyRuntimeError::new_err("the transport is closed"));
        };
        let last = frames.len().saturating_sub(1);
        let mut result = Ok(None);
        for (i, frame) in frames.iter().enumerate() {
            let flags = if i < last {
                ZMQ_DONTWAIT | ZMQ_SNDMORE
            } else {
                ZMQ_DONTWAIT
            };
            // Only the first frame can fail (ROUTER_MANDATORY checks the identity, HWM the
            // queue); once it is accepted ZMQ takes the rest of the message as a whole.
            match send_frame(sock.0, &frame, flags) {
                Ok(()) => {}
                Err(Failure::Zmq(err)) => {
                    result = match err {
                        libc::EHOSTUNREACH => Ok(Some("peer disconnected")),
                        libc::EAGAIN => Ok(Some("peer is not reading (send queue full)")),
                        e => Err(PyOSError::new_err(format!("zmq_send: errno {e}"))),
                    };
                    break;
                }
                Err(Failure::Python(e)) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // A send can consume the edge of ZMQ's descriptor for input that arrived meanwhile:
        // wake the I/O thread to look. The wake-up is signalled after the lock is let go: a
        // woken thread that preempts this one must not find the lock held. (Waking it only
        // when it waits on the descriptor lost wake-ups: a server stalled.)
        let wake = socket_int(sock.0, ZMQ_EVENTS).is_some_and(|ev| ev & ZMQ_POLLIN as i64 != 0);
        drop(guard);
        if wake {
            self.shared.wake.signal();
        }
        result
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

enum Failure {
    Zmq(c_int),
    Python(PyErr),
}

fn send_frame(sock: *mut c_void, frame: &Bound<'_, PyAny>, flags: c_int) -> Result<(), Failure> {
    let sent = |data: &[u8]| -> Result<(), Failure> {
        // SAFETY: a live socket (the caller holds its lock); libzmq copies `data`.
        let rc = unsafe { (api().send)(sock, data.as_ptr() as *const c_void, data.len(), flags) };
        if rc < 0 {
            // SAFETY: plain call.
            Err(Failure::Zmq(unsafe { (api().errno)() }))
        } else {
            Ok(())
        }
    };
    if let Ok(b) = frame.cast::<PyBytes>() {
        return sent(b.as_bytes());
    }
    if let Ok(f) = frame.cast::<Frame>() {
        return sent(f.get().msg.bytes());
    }
    // SAFETY: a zeroed Py_buffer filled by PyObject_GetBuffer and released once; the bytes
    // are read while the buffer is held.
    unsafe {
        let mut view: ffi::Py_buffer = std::mem::zeroed();
        if ffi::PyObject_GetBuffer(frame.as_ptr(), &mut view, ffi::PyBUF_SIMPLE) != 0 {
            return Err(Failure::Python(PyErr::fetch(frame.py())));
        }
        let data: &[u8] = if view.len > 0 && !view.buf.is_null() {
            std::slice::from_raw_parts(view.buf as *const u8, view.len as usize)
        } else {
            &[]
        };
        let r = sent(data);
        ffi::PyBuffer_Release(&mut view);
        r
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
