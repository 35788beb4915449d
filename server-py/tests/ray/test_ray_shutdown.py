"""Stopping the embedded cluster prints none of Ray's red "Task ServeController... failed" lines.

They ended every `make demo` (Ray Serve is the demo's default backend): serve.shutdown()
kills Serve's controller with ray.kill while calls to it are still pending (its own
graceful_shutdown, the handles' listen_for_change), and Ray reports each as a failed
task. RayBackend.stop() now lets the embedded cluster's end take Serve along; the demo
stops through the same call. This test stops the session's cluster, so it runs last.
"""

from __future__ import annotations

import re
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.ray_last, pytest.mark.timeout(120)]


def test_stopping_the_embedded_cluster_prints_no_task_failed_lines(backend, loop, capfd):
    import ray

    assert backend.health().details["cluster"]["connection"] == "started"
    capfd.readouterr()
    loop.run(backend.stop(), timeout=60)
    time.sleep(0.5)  # Ray prints from a thread of its own
    out, err = capfd.readouterr()
    assert not ray.is_initialized()
    failed = [line for line in (out + err).splitlines() if re.search(r"Task \w+\.\w+ failed|ServeController", line)]
    assert not failed, "\n".join(failed)
