"""How both ends of a connection notice that the other has gone silent.

Every socket the project creates (the robots' DEALERs, the server's ROUTER) finds dead
peers with TCP keepalive and a retransmission timeout instead of ZMTP PINGs of its own.
libzmq 4.3.x (4.3.4 in Debian and the Rust crate's vendored build, 4.3.5 in pyzmq's
wheels) aborts the whole process (`Assertion failed: !_io_error
(stream_engine_base.cpp)`) when a socket's PING timer fires on a connection whose input
is paused (its receive queue at RCVHWM) and whose peer has just hung up: a robot that
had not read its last hundred replies when the server restarted, or a server whose
flooding peer disconnected. Without the PING timer that path does not exist. PINGs from
the other side are still answered by libzmq, so peers that do send them (1.x clients,
other ZMTP stacks) keep working.

``heartbeat_ivl_ms`` / ``heartbeat_timeout_ms`` keep their meaning: a peer that stops
answering is dropped (and a DEALER starts reconnecting) within about
``heartbeat_ivl_ms + heartbeat_timeout_ms``. An idle connection is probed every
interval (whole seconds, at least 1: the kernel's unit) and dropped after
``heartbeat_timeout_ms`` of unanswered probes; data left unacknowledged for
``heartbeat_timeout_ms`` ends the connection too (ZMQ_TCP_MAXRT, TCP_USER_TIMEOUT on
Linux). ``heartbeat_ivl_ms = 0`` leaves the kernel's keepalive defaults. The Rust and
C++ clients apply the same mapping (docs/protocol.md §8).
"""

from __future__ import annotations

import zmq


def keepalive_settings(ivl_ms: int, timeout_ms: int) -> dict[int, int]:
    """The socket options for a liveness interval and timeout (empty when ``ivl_ms`` is 0)."""
    if ivl_ms <= 0:
        return {}
    every_s = max(1, -(-ivl_ms // 1000))
    options: dict[int, int] = {
        zmq.TCP_KEEPALIVE: 1,
        zmq.TCP_KEEPALIVE_IDLE: every_s,
        zmq.TCP_KEEPALIVE_INTVL: every_s,
        zmq.TCP_KEEPALIVE_CNT: max(1, -(-timeout_ms // (every_s * 1000))),
    }
    if timeout_ms > 0:
        options[zmq.TCP_MAXRT] = timeout_ms
    return options


def keepalive_options(sock: zmq.Socket, ivl_ms: int, timeout_ms: int) -> None:
    """Apply :func:`keepalive_settings` to a socket before it binds or connects."""
    for option, value in keepalive_settings(ivl_ms, timeout_ms).items():
        sock.setsockopt(option, value)
