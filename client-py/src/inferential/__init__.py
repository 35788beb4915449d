"""Inferential: robot-side client SDK (and, with `inferential[server]`, the server).

The server distribution adds subpackages (inferential.server, inferential.scheduler,
inferential.config, ...) to this package; their names are importable from here
when it is installed.
"""

from __future__ import annotations

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # the server's half may live in another folder

from inferential.wire import PROTOCOL_VERSION, BFloat16  # noqa: E402

__version__ = "2.0.0.dev0"

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
            raise ImportError(
                f"inferential.{name} is part of the server: pip install 'inferential[server]'"
            ) from err
        raise
    return getattr(mod, name)
