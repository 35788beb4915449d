"""ZMQ CURVE for the server's socket: encryption, and a client id each key may speak as.

With ``auth.curve_secret_key`` set, the ROUTER is a CURVE server and its ZAP handler
(:class:`inferential.server.connections.ConnectionWatch`, on a thread of its own, on the
transport's own context) admits only the public keys listed in
``clients.known[].curve_public_key``. Each connection carries the id its key is bound to
as ZMQ's ``User-Id`` metadata; the server answers UNAUTHENTICATED to an observation whose
``client.id`` differs, so a robot can only speak as itself. The list is read at each
handshake: a reload that changes it applies to new connections at once.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import zmq

from inferential.config.schema import ClientsConfig

logger = logging.getLogger("inferential.transport")

ZAP_DOMAIN = "inferential"


class CurveKeys:
    """The allow-list: client public key (z85 bytes) -> the client id it is bound to."""

    def __init__(self, secret_key: str, clients: ClientsConfig) -> None:
        self.secret_key = secret_key
        self.by_key: dict[bytes, str] = {}
        self.update(clients)

    def update(self, clients: ClientsConfig) -> None:
        # Replaced whole: the ZAP handler's thread reads it without a lock.
        self.by_key = {k.curve_public_key.encode(): k.id for k in clients.known if k.curve_public_key}


def curve_server_options(sock: zmq.Socket, keys: CurveKeys) -> None:
    """Make ``sock`` (not yet bound) a CURVE server with the server's secret key. Its ZAP
    handler (the key check) is :class:`inferential.server.connections.ConnectionWatch`."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret_key.encode())


def user_id(frame: Any) -> Optional[str]:
    """The client id a received message's connection authenticated as (None: unknown)."""
    try:
        value = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
    return value or None


def public_key_of(secret_key: str) -> str:
    return zmq.curve_public(secret_key.encode()).decode()
