"""Two nodes, one replica on each; removing a node loses no call (multinode_scenario.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.ray_own_cluster, pytest.mark.timeout(240)]

SCENARIO = Path(__file__).with_name("multinode_scenario.py")


def test_replicas_on_two_nodes_serve_and_survive_the_loss_of_one():
    # A subprocess: the cluster must not share this process's Ray connection.
    proc = subprocess.run([sys.executable, str(SCENARIO)], capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    sys.path.insert(0, str(SCENARIO.parent))
    try:
        from multinode_scenario import TIMEOUT_S
    finally:
        sys.path.pop(0)
    head, worker = report["head_node"], report["worker_node"]

    # Both replicas served before the removal.
    assert sorted(report["nodes_before"]) == sorted([head, worker])

    # The batches in flight when the worker went away were each answered
    # correctly or failed with BackendError, within their deadline: none hung,
    # none was answered wrong. (In practice the lost one is retried on the head.)
    for call in report["in_flight"]:
        assert call["ok"] or call["error"], call
        assert call["s"] < TIMEOUT_S + 1.0, call
    assert any(call["ok"] for call in report["in_flight"])

    # Afterwards the remaining replica answers everything.
    assert all(call["ok"] and call["nodes"] == [head] for call in report["after"]), report["after"]
    assert report["health"]["running_replicas"] >= 1
    print(json.dumps({k: report[k] for k in ("start_s", "in_flight", "health")}, indent=1))
