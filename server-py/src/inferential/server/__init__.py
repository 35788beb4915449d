"""The Inferential server."""

from inferential.server.app import Server
from inferential.server.background import BackgroundServer

__all__ = ["BackgroundServer", "Server"]
