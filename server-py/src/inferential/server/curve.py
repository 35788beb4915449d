"""ZMQ CURVE for the server's socket: encryption, and a client id each key may speak as.

With ``auth.curve_secret_key`` set, the ROUTER is a CURVE server and a ZAP handler
(pyzmq's authenticator, on a thread of its own, on the transport's own context)
admits only the public keys listed in ``clients.known[].curve_public_key``. Each
connection carries the id its key is bound to as ZMQ's ``User-Id`` metadata; the
server answers UNAUTHENTICATED to an observation whose ``client.id`` differs, so a
robot can only speak as itself. The list is read at each handshake: a reload that
changes it applies to new connections at once.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

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
        # Replaced whole: the authenticator's thread reads it without a lock.
        self.by_key = {k.curve_public_key.encode(): k.id for k in clients.known if k.curve_public_key}

    # The authenticator's credentials provider.
    def callback(self, domain: str, key: bytes) -> bool:
        allowed = key in self.by_key
        if not allowed:
            logger.info("CURVE handshake refused: key %s is not in clients.known", key.decode(errors="replace"))
        return allowed


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP handler, with the connection's User-Id set to the key's client id."""

    def __init__(self, context: zmq.Context, keys: CurveKeys) -> None:
        super().__init__(context, log=logger)
        self.keys = keys

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.keys.by_key.get(z85.encode(client_public_key), "")


def serve_curve(sock: zmq.Socket, keys: CurveKeys) -> ThreadAuthenticator:
    """Make ``sock`` (not yet bound) a CURVE server checked against ``keys``; returns the
    running authenticator (stop it before terminating the socket's context)."""
    auth = _Authenticator(sock.context, keys)
    auth.start()
    auth.configure_curve_callback(ZAP_DOMAIN, keys)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret_key.encode())
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    return auth


def user_id(frame: Any) -> Optional[str]:
    """The client id a received message's connection authenticated as (None: unknown)."""
    try:
        value = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
    return value or None


def public_key_of(secret_key: str) -> str:
    return zmq.curve_public(secret_key.encode()).decode()
