"""Configuration: `InferentialConfig` and its sections, and loading from YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from inferential.config.schema import (
    AuthConfig,
    ClientDefaults,
    ClientsConfig,
    InferentialConfig,
    KnownClient,
    LoggingConfig,
    MetricsConfig,
    ModelConfig,
    RayConfig,
    ResponseTrackingConfig,
    SchedulingConfig,
    TransportConfig,
)

__all__ = [
    "AuthConfig",
    "ClientDefaults",
    "ClientsConfig",
    "ConfigError",
    "InferentialConfig",
    "KnownClient",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "RayConfig",
    "ResponseTrackingConfig",
    "SchedulingConfig",
    "TransportConfig",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names each bad key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{lines}")


def _describe(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        else:
            problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return problems


def parse_config(data: Any, source: str = "<config>") -> InferentialConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        return InferentialConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, _describe(err)) from None


def load_config(path: str | Path) -> InferentialConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read file: {err.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [f"not valid YAML: {err}"]) from None
    return parse_config(data, str(path))
