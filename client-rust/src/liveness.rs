//! How a connection notices a silent server: TCP keepalive and a retransmission timeout,
//! never ZMTP PINGs from this socket.
//!
//! libzmq 4.3.x (the crate's vendored 4.3.4, and 4.3.5) aborts the whole process
//! (`Assertion failed: !_io_error (stream_engine_base.cpp)`) when a socket's PING timer
//! fires on a connection whose input is paused (its receive queue at RCVHWM) and whose
//! peer has just hung up: a robot that had not read its last replies when the server
//! restarted. Without the PING timer that path does not exist; PINGs the server sends
//! are still answered by libzmq. The options keep their meaning (protocol §8): a server
//! that stops answering is dropped, and reconnection starts, within about
//! `heartbeat_ivl_ms + heartbeat_timeout_ms`.

// The one other place with `unsafe`: ZMQ_TCP_MAXRT, which the zmq crate has no setter for,
// and stopping a monitor (the crate's `monitor` takes no null endpoint).
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_void};

/// The keepalive settings for an interval and a timeout, as (idle = interval s, count),
/// or `None` when the interval is 0 (the kernel's defaults stay).
pub(crate) fn keepalive_settings(ivl_ms: u32, timeout_ms: u32) -> Option<(i32, i32)> {
    if ivl_ms == 0 {
        return None;
    }
    let every_s = ivl_ms.div_ceil(1000).max(1);
    let count = timeout_ms.div_ceil(every_s * 1000).max(1);
    Some((
        i32::try_from(every_s).unwrap_or(i32::MAX),
        i32::try_from(count).unwrap_or(i32::MAX),
    ))
}

/// Applies the mapping to a DEALER before it connects.
pub(crate) fn apply(socket: &mut zmq::Socket, ivl_ms: u32, timeout_ms: u32) -> zmq::Result<()> {
    let Some((every_s, count)) = keepalive_settings(ivl_ms, timeout_ms) else {
        return Ok(());
    };
    socket.set_tcp_keepalive(1)?;
    socket.set_tcp_keepalive_idle(every_s)?;
    socket.set_tcp_keepalive_intvl(every_s)?;
    socket.set_tcp_keepalive_cnt(count)?;
    if timeout_ms > 0 {
        set_int(
            socket,
            zmq_sys::ZMQ_TCP_MAXRT as c_int,
            i32::try_from(timeout_ms).unwrap_or(i32::MAX),
        )?;
    }
    Ok(())
}

/// ZMQ_TCP_MAXRT read back (conformance, diagnostics).
pub(crate) fn tcp_maxrt(socket: &mut zmq::Socket) -> zmq::Result<i32> {
    let mut value: c_int = 0;
    let mut size = std::mem::size_of::<c_int>();
    // SAFETY: the socket pointer is live for the call (we hold the Socket mutably) and
    // value/size describe a c_int, which is what libzmq writes for this option.
    let rc = unsafe {
        zmq_sys::zmq_getsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_TCP_MAXRT as c_int,
            (&mut value as *mut c_int).cast::<c_void>(),
            &mut size,
        )
    };
    if rc == -1 {
        return Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }));
    }
    Ok(value)
}

/// Stops the socket's monitor (zmq_socket_monitor with no endpoint) before its reader
/// closes. libzmq sends monitor events blocking, on the context's I/O thread: an event
/// sent after the reader is gone (the link dropping while the DEALER closes) would stall
/// that thread for good, and the context's termination, so the connection's drop, with it.
pub(crate) fn stop_monitor(socket: &mut zmq::Socket) {
    // SAFETY: the socket pointer is live for the call (we hold the Socket mutably); a null
    // endpoint is libzmq's documented way to stop monitoring. An error (a context already
    // terminated) leaves nothing to stop.
    let _ = unsafe { zmq_sys::zmq_socket_monitor(socket.as_mut_ptr(), std::ptr::null(), 0) };
}

fn set_int(socket: &mut zmq::Socket, option: c_int, value: c_int) -> zmq::Result<()> {
    // SAFETY: as above; libzmq copies the c_int it is given.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            option,
            (&value as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>(),
        )
    };
    if rc == -1 {
        return Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::keepalive_settings;

    #[test]
    fn the_mapping_of_protocol_section_8() {
        assert_eq!(keepalive_settings(0, 5000), None);
        assert_eq!(keepalive_settings(1000, 5000), Some((1, 5)));
        assert_eq!(keepalive_settings(300, 900), Some((1, 1)));
        assert_eq!(keepalive_settings(1500, 5000), Some((2, 3)));
    }
}
