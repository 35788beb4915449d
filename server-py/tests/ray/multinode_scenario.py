"""Two Ray nodes on one machine, one replica on each; then one node is removed.

Run by test_ray_multinode.py in a subprocess (it needs a cluster of its own and
must not share the process's Ray connection); prints one JSON report last.

Phases: (1) calls until both nodes have answered; (2) two slow batches, one on
each replica, and the worker node is removed while both are running; (3) calls
after the removal.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np
import ray
from ray.cluster_utils import Cluster

from inferential.config.schema import ModelConfig, RayConfig
from inferential.dispatch.base import BackendError
from inferential.dispatch.ray.backend import RayBackend

TIMEOUT_S = 6.0
SLOW_S = 1.5
IMAGE = np.full((224, 224, 3), 51, np.uint8)  # mean/255 = 0.2


def make_batch(i: int, image: bool, delay_s: float = 0.0) -> list[dict]:
    out = []
    for j in range(4):
        inputs: dict = {"state": np.full(7, i * 10 + j, np.float32), "delay_s": str(delay_s)}
        if image:
            inputs["image"] = IMAGE
        out.append(inputs)
    return out


async def timed_call(backend: RayBackend, sent: list[dict], t0: float) -> dict:
    start = time.monotonic()
    entry: dict = {"t": start - t0}
    try:
        outcomes = await backend.execute("linear", sent)
    except BackendError as err:
        entry.update(ok=False, error=str(err))
    else:
        expected = [s["state"] * 2 + (0.2 if "image" in s else 0.0) for s in sent]
        entry.update(
            ok=all(np.allclose(o["actions"], e, atol=1e-5) for o, e in zip(outcomes, expected, strict=True)),
            nodes=sorted({o["node"] for o in outcomes}),
        )
    entry["s"] = time.monotonic() - start
    return entry


async def main() -> dict:
    report: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    backend = RayBackend(
        [
            ModelConfig(
                name="linear",
                target="inferential.models.ray_testing:LinearPolicy",
                options={"gain": 2.0},
                num_replicas=2,
                num_cpus=1,  # one CPU per node: one replica on each
                timeout_s=TIMEOUT_S,
            )
        ],
        RayConfig(address=cluster.address),
    )
    try:
        t0 = time.monotonic()
        await backend.start()
        report["start_s"] = time.monotonic() - t0
        report["head_node"] = cluster.head_node.node_id
        report["worker_node"] = worker.node_id

        seen: set[str] = set()
        for i in range(20):
            pair = await asyncio.gather(*(timed_call(backend, make_batch(i, False, 0.2), t0) for _ in range(2)))
            seen.update(n for e in pair for n in e.get("nodes", []))
            if len(seen) == 2:
                break
        report["nodes_before"] = sorted(seen)

        # max_ongoing_requests is 1, so the two slow batches land on different replicas.
        t_remove = time.monotonic()
        in_flight = [
            asyncio.create_task(timed_call(backend, make_batch(100 + k, k == 1, SLOW_S), t_remove)) for k in range(2)
        ]
        await asyncio.sleep(SLOW_S / 3)
        await asyncio.to_thread(cluster.remove_node, worker, False)
        report["in_flight"] = await asyncio.wait_for(asyncio.gather(*in_flight), TIMEOUT_S * 3)

        after = []
        for i in range(10):
            after.append(
                await asyncio.wait_for(timed_call(backend, make_batch(200 + i, i % 2 == 1), t_remove), TIMEOUT_S * 3)
            )
        report["after"] = after
        report["health"] = (await backend.refresh_health()).models["linear"].details
    finally:
        await backend.stop()
        ray.shutdown()
        cluster.shutdown()
    return report


if __name__ == "__main__":
    result = asyncio.run(main())
    sys.stdout.write("\n" + json.dumps(result, default=str) + "\n")
