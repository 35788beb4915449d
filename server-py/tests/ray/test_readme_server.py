"""The published README's server Quick Start, verbatim, attached to a real Ray Serve application."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import threading
import time

import numpy as np
import pytest

from inferential import Connection
from inferential.config.schema import ModelConfig
from inferential.dispatch.ray.replica import build_app

pytestmark = pytest.mark.ray

# Copied exactly from ../shared/reference/inferential-package-readme.txt ("Quick Start", "Server").
SERVER_QUICKSTART = """
import asyncio
from inferential import Server

server = Server(bind="tcp://*:5555", models=["policy-v2"])
server.use_scheduler("deadline_aware")

@server.on_metric
def log_latency(name, value, labels):
    if name == "inference_latency_ms":
        print(f"Client {labels.get('client')}: {value:.1f}ms")

asyncio.run(server.run())
"""


def test_readme_server_quickstart_serves_a_serve_application(backend, capsys):
    from ray import serve

    # The application the README's server attaches to, deployed separately as a user would.
    serve.run(
        build_app(ModelConfig(name="policy-v2", target="inferential.models.testing:NoOp", num_cpus=0)),
        name="policy-v2",
        route_prefix=None,
    )
    namespace: dict = {}
    errors: list[BaseException] = []
    # The snippet as printed, on a free port instead of the README's 5555.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert SERVER_QUICKSTART.count('"tcp://*:5555"') == 1
    snippet = SERVER_QUICKSTART.replace('"tcp://*:5555"', repr(f"tcp://127.0.0.1:{port}"))

    def run_snippet() -> None:
        try:
            exec(compile(textwrap.dedent(snippet), "<README>", "exec"), namespace)
        except BaseException as err:  # surfaced by the assertions below
            errors.append(err)

    thread = threading.Thread(target=run_snippet, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 120
        while not (namespace.get("server") is not None and namespace["server"].ready) and time.monotonic() < end:
            assert not errors, errors
            time.sleep(0.1)
        server = namespace["server"]
        assert server.ready
        # The handshake can take over the default 1 s send timeout while the Ray cluster
        # still loads the two cores (seen once in CI): the snippet under test is the server's.
        with Connection(
            server=f"tcp://127.0.0.1:{port}", client_id="agent-01", client_type="sensor", send_timeout_ms=10_000
        ) as conn:
            model = conn.model("policy-v2", latency_budget_ms=30.0)
            result = model.request(timeout_ms=10_000, sensor_readings=np.zeros(7, np.float32))
        assert result.ok and result["actions"].shape == (7,)
        server.metrics.flush()
    finally:
        server = namespace.get("server")
        if server is not None and server._loop is not None:
            server._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(server.stop()))
        thread.join(60)
        serve.delete("policy-v2")
    assert not thread.is_alive() and not errors, errors
    assert "Client agent-01:" in capsys.readouterr().out
