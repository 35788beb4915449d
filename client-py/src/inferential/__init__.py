"""Inferential: robot-side client SDK (and, with `inferential[server]`, the server).

The server distribution adds subpackages (inferential.server, inferential.scheduler,
inferential.config, ...) to this package; their names are importable from here
when it is installed.
"""

from __future__ import annotations

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # the server's half may live in another folder

# The client SDK. (The client's model handle is ModelHandle, returned by Connection.model();
# the name inferential.Model is the server's model contract.)
from inferential._matching import ConnectionStats  # noqa: E402
from inferential.aio import AsyncConnection, AsyncModelHandle  # noqa: E402
from inferential.chunks import ActionChunkQueue  # noqa: E402
from inferential.client import Connection, ModelHandle, default_client_id  # noqa: E402
from inferential.control import ControlLoop  # noqa: E402
from inferential.errors import (  # noqa: E402
    Cancelled,
    ConnectionClosed,
    DeadlineUnmeetable,
    Expired,
    InferentialError,
    InvalidRequest,
    ModelError,
    ProtocolError,
    QueueFull,
    RequestFailed,
    RequestTimeout,
    ServerUnavailable,
    ShuttingDown,
    Superseded,
    Unauthenticated,
    UnknownModel,
    WireError,
)
from inferential.options import ClientOptions, ObservationHints  # noqa: E402
from inferential.result import Result, ServerInfo, Timing  # noqa: E402
from inferential.wire import PROTOCOL_VERSION, BFloat16, Limits, Status  # noqa: E402

__version__ = "2.0.0.dev0"

__all__ = [
    "PROTOCOL_VERSION",
    "ActionChunkQueue",
    "AsyncConnection",
    "AsyncModelHandle",
    "BFloat16",
    "Cancelled",
    "ClientOptions",
    "Connection",
    "ConnectionClosed",
    "ControlLoop",
    "ConnectionStats",
    "DeadlineUnmeetable",
    "Expired",
    "InferentialError",
    "InvalidRequest",
    "Limits",
    "ModelError",
    "ModelHandle",
    "ObservationHints",
    "ProtocolError",
    "QueueFull",
    "RequestFailed",
    "RequestTimeout",
    "Result",
    "ServerInfo",
    "ServerUnavailable",
    "ShuttingDown",
    "Status",
    "Superseded",
    "Timing",
    "Unauthenticated",
    "UnknownModel",
    "WireError",
    "default_client_id",
]

# Names provided by the server distribution, resolved on first use.
_SERVER_NAMES = {
    "Server": "inferential.server",
    "InferenceRequest": "inferential.scheduler",
    "register_policy": "inferential.scheduler",
    "register_scheduler": "inferential.scheduler",
    "create_scheduler": "inferential.scheduler",
    "Scheduler": "inferential.scheduler",
    "Model": "inferential.dispatch.base",
    "InferentialConfig": "inferential.config",
}


def __getattr__(name: str):
    module = _SERVER_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'inferential' has no attribute {name!r}")
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("inferential"):
            raise ImportError(f"inferential.{name} is part of the server: pip install 'inferential[server]'") from err
        raise
    return getattr(mod, name)
