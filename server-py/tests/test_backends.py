"""Backends as plug-ins: registered by name, built from their own config section."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pytest
from server_helpers import running_server

from inferential import Connection
from inferential.config.schema import InferentialConfig
from inferential.dispatch.base import Backend, Inputs, ModelInfo, Outcome
from inferential.dispatch.registry import available_backends, create_backend, register_backend


@register_backend("scaling")
class ScalingBackend(Backend):
    """Serves one model, ``scale``, multiplying ``x`` by its section's ``factor``."""

    @classmethod
    def from_config(cls, config: InferentialConfig, local_objects: Mapping[str, Any]) -> "ScalingBackend":
        return cls(**config.backends.get("scaling", {}))

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def models(self) -> dict[str, ModelInfo]:
        return {"scale": ModelInfo("scale", max_batch_size=4, concurrency=1)}

    async def execute(self, model_id: str, batch: list[Inputs]) -> list[Outcome]:
        return [{"y": np.asarray(inputs["x"]) * self.factor} for inputs in batch]


def test_a_registered_backend_is_chosen_by_name_and_configured_by_its_section():
    with running_server(backend="scaling", backends={"scaling": {"factor": 3.0}}) as (server, endpoint):
        assert type(server.backend) is ScalingBackend
        with Connection(server=endpoint, client_id="plug") as conn:
            result = conn.model("scale").request(timeout_ms=5000, x=np.arange(3, dtype=np.float32))
        assert result["y"].tolist() == [0.0, 3.0, 6.0]
        assert server.status()["backend"]["ready"] is True  # the interface's default health


def test_an_unknown_backend_is_refused_naming_the_registered_ones():
    assert {"local", "ray", "scaling"} <= set(available_backends())
    with pytest.raises(ValueError, match="'nope'.*local"):
        create_backend(InferentialConfig(backend="nope"), {})


def test_register_backend_refuses_what_is_not_a_backend():
    with pytest.raises(TypeError):
        register_backend("bad")(object)
