"""The server's socket: one ZMQ ROUTER. Knows frames, not messages."""

from __future__ import annotations

import logging
from typing import Any, Optional

import zmq
import zmq.asyncio

from inferential.config.schema import TransportConfig

logger = logging.getLogger("inferential.transport")


class RouterTransport:
    """Receives ``[identity, b"", envelope, *payload]`` and sends replies without blocking.

    Sends never wait: a reply to a robot that is gone (EHOSTUNREACH, thanks to
    ROUTER_MANDATORY) or that stopped reading (its send queue at SNDHWM) is
    reported as undeliverable instead of growing memory or stalling everyone.
    """

    def __init__(self, config: TransportConfig, context: Optional[zmq.asyncio.Context] = None) -> None:
        self.config = config
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: Optional[zmq.asyncio.Socket] = None
        self._sync: Optional[zmq.Socket] = None
        self.endpoint: str = ""

    def bind(self) -> str:
        c = self.config
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A 1.x robot that reconnects under the same identity (its client_id) takes
        # over the old connection instead of being refused until heartbeats expire.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.setsockopt(zmq.RCVHWM, c.recv_hwm)
        sock.setsockopt(zmq.SNDHWM, c.send_hwm)
        # Per frame; a peer sending more is disconnected by libzmq before we see it.
        sock.setsockopt(zmq.MAXMSGSIZE, c.max_message_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        if c.heartbeat_ivl_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, c.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, c.heartbeat_timeout_ms)
            sock.setsockopt(zmq.HEARTBEAT_TTL, c.heartbeat_timeout_ms)
        sock.bind(c.bind)
        self._sock = sock
        self._sync = zmq.Socket.shadow(sock.underlying)
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        logger.info("listening on %s", self.endpoint)
        return self.endpoint

    async def recv(self) -> list[Any]:
        assert self._sock is not None
        return await self._sock.recv_multipart(copy=False)

    def send(self, frames: list[Any]) -> Optional[str]:
        """Send now or never: None when handed to ZMQ, else why it could not be."""
        assert self._sync is not None
        try:
            self._sync.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return None
        except zmq.ZMQError as err:
            if err.errno == zmq.EHOSTUNREACH:
                return "peer disconnected"
            if err.errno == zmq.EAGAIN:
                return "peer is not reading (send queue full)"
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=200)  # let replies already queued go out
            self._sock = None
            self._sync = None
