"""Backends by name: ``config.backend`` selects one, ``register_backend`` adds one.

A new backend is one module::

    @register_backend("triton")
    class TritonBackend(Backend):
        @classmethod
        def from_config(cls, config, local_objects):
            return cls(config.models, **config.backends.get("triton", {}))
        ...

imported before the server is built (a ``module:Attr`` import in the config's
models, the embedding program, or a plug-in package). The built-ins are named
here by import path, so Ray is imported only when the Ray backend is chosen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar, Union

from inferential.dispatch.base import Backend

if TYPE_CHECKING:
    from inferential.config.schema import InferentialConfig

B = TypeVar("B", bound=type)

_BACKENDS: dict[str, Union[type, str]] = {
    "local": "inferential.dispatch.local:LocalBackend",
    "ray": "inferential.dispatch.ray.backend:RayBackend",
}


def register_backend(name: str) -> Callable[[B], B]:
    """Class decorator: make a Backend subclass selectable as ``backend: name``."""

    def decorator(cls: B) -> B:
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"@register_backend({name!r}) needs a Backend subclass, got {cls!r}")
        _BACKENDS[name] = cls
        return cls

    return decorator


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def backend_class(name: str) -> type[Backend]:
    entry = _BACKENDS.get(name)
    if entry is None:
        raise ValueError(f"unknown backend {name!r}; available: {available_backends()}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        importlib.import_module(module)  # registers itself under `name`
        entry = _BACKENDS[name]
        assert isinstance(entry, type), f"{module} did not register backend {name!r}"
    return entry


def create_backend(config: "InferentialConfig", local_objects: Mapping[str, Any]) -> Backend:
    """The backend ``config.backend`` names, built from the configuration."""
    return backend_class(config.backend).from_config(config, local_objects)
