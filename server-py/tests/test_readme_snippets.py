"""The published README's snippets, verbatim, run against this implementation.

Each snippet string below is copied exactly from ../shared/reference/inferential-package-readme.txt.
Where a snippet uses a name it does not define (``server``, ``request``), the test
provides it, as the README's surrounding text does. The server Quick Start, which
attaches to a Ray Serve application, runs in tests/ray/test_readme_server.py.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from server_helpers import README_CUSTOM_SCHEDULER as CUSTOM_SCHEDULER
from server_helpers import running_server

from inferential import InferenceRequest, Server

CLIENT_QUICKSTART = """
import numpy as np
from inferential import Connection

conn = Connection(server="tcp://localhost:5555", client_id="agent-01", client_type="sensor")
model = conn.model("policy-v2", latency_budget_ms=30.0)

# Send observation
readings = np.array([0.0, -0.78, 0.0, -2.35, 0.0, 1.57, 0.78], dtype=np.float32)
model.observe(
    urgency=0.8,
    sensor_readings=readings,
    prompt="classify anomaly",  # strings go to metadata
)

# Get action
result = model.get_result(timeout_ms=50)
if result is not None:
    output = result["actions"]  # np.ndarray
"""

OBSERVATION_API = """
# Multi-modal observation
model.observe(
    urgency=0.5,
    steps_remaining=120,
    state_vector=np.zeros(7, dtype=np.float32),
    image=np.zeros((3, 224, 224), dtype=np.uint8),
    prompt="describe the scene",
)
"""

STANDALONE_SCHEDULER = """
from inferential.scheduler.base import create_scheduler
from inferential.config.schema import SchedulingConfig

# Standalone usage — no server needed
scheduler = create_scheduler(SchedulingConfig(strategy="batch_optimized"))
scheduler.submit(request)
batch = scheduler.next_batch()
"""

SWAP_AT_RUNTIME = """
server.use_scheduler("deadline_aware", cadence_weight=50.0, urgency_weight=30.0)
"""

CUSTOM_POLICY = """
from inferential import register_policy, InferenceRequest

@register_policy("safety_first")
def score(req: InferenceRequest) -> float:
    if req.urgency > 0.9:
        return 1000.0
    return req.priority * 10.0

server.use_scheduler("deadline_aware", policy="safety_first")
"""

METRICS = """
# Query stats over a time window
stats = server.metrics.get_stats("inference_latency_ms", window_seconds=60)
print(f"p95 latency: {stats.p95:.1f}ms")

# Latest value
depth = server.metrics.get_latest("queue_depth")

# Full snapshot of all metrics
snapshot = server.metrics.snapshot()
"""

QUEUE_MANAGEMENT = """
server.use_scheduler(
    "deadline_aware",
    request_ttl_ms=2000,           # 2s TTL
    overflow_policy="drop_oldest", # keep fresh data, discard stale
    max_retries=2,                 # retry transient failures twice
)
"""

CONFIGURATION = """
from inferential.config import InferentialConfig

config = InferentialConfig(
    transport={"bind": "tcp://*:5555", "recv_hwm": 2000},
    scheduling={
        "strategy": "deadline_aware",
        "max_queue_size": 500,
        "request_ttl_ms": 3000,
        "overflow_policy": "drop_oldest",
        "max_retries": 1,
    },
    clients={
        "defaults": {"latency_budget_ms": 50.0, "priority": 1},
        "known": [
            {"id": "agent-01", "model": "policy-v2", "latency_budget_ms": 30.0, "priority": 2},
        ],
        "accept_unknown": True,
    },
    response_tracking={"cadence_alpha": 0.3, "disconnect_timeout_s": 10.0},
    metrics={"ring_buffer_size": 10000},
)

server = Server(config=config)
"""


def run(snippet: str, namespace: dict) -> dict:
    exec(compile(textwrap.dedent(snippet), "<README>", "exec"), namespace)
    return namespace


@pytest.fixture
def readme_server():
    """A server serving the README's model, policy-v2, on a free port."""
    with running_server(models={"policy-v2": "inferential.models.testing:NoOp"}) as pair:
        yield pair


def test_client_quickstart_and_observation_api(readme_server):
    server, endpoint = readme_server
    # The snippet as printed, with the test server's address for the README's localhost:5555.
    assert CLIENT_QUICKSTART.count('"tcp://localhost:5555"') == 1
    ns = run(CLIENT_QUICKSTART.replace('"tcp://localhost:5555"', repr(endpoint)), {})
    # 50 ms is the README's choice; on a loaded CI machine the first reply can take longer.
    result = ns["result"] or ns["model"].get_result(timeout_ms=2000)
    assert result["actions"].shape == (7,)
    run(OBSERVATION_API, ns)
    assert ns["model"].get_result(timeout_ms=2000).ok
    ns["conn"].close()
    assert server.metrics.get_stats("payload_size_bytes", labels={"client": "agent-01"}).count == 2


def test_standalone_scheduler():
    request = InferenceRequest(client_id="agent-01", model_id="policy-v2")
    ns = run(STANDALONE_SCHEDULER, {"request": request})
    assert ns["scheduler"].queue_len() + len(ns["batch"]) == 1


def test_server_side_snippets_on_a_running_server():
    with running_server() as (server, endpoint):
        ns = {"server": server, "Server": Server}
        run(SWAP_AT_RUNTIME, ns)
        assert server.config.scheduling.cadence_weight == 50.0
        run(CUSTOM_POLICY, ns)
        assert server.config.scheduling.policy == "safety_first"
        run(QUEUE_MANAGEMENT, ns)
        assert server.config.scheduling.max_retries == 2
        from inferential import Connection

        with Connection(server=endpoint, client_id="snippets") as conn:
            assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(2, np.float32)).ok
        run(METRICS, ns)
        assert ns["stats"].count >= 1 and "inference_latency_ms" in ns["snapshot"]
        run(CUSTOM_SCHEDULER, ns)
        assert type(server.scheduler).__name__ == "MyScheduler"
        with Connection(server=endpoint, client_id="snippets") as conn:
            assert conn.model("noop").request(timeout_ms=5000, x=np.zeros(2, np.float32)).ok


def test_configuration_snippet():
    ns = run(CONFIGURATION, {"Server": Server})
    assert ns["server"].config.scheduling.max_queue_size == 500
