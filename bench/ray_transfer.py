"""How a batch of observations should travel to a Ray Serve replica: one handle call per batch.

    .venv/bin/python bench/ray_transfer.py [--iterations 60] [--sizes 1,8,20]

One embedded Ray cluster (2 CPUs, no dashboard, no HTTP proxy). Each observation is
what the server holds after decoding a robot's message: a 224x224x3 uint8 image and
7 float32 joint states as numpy views over the received bytes (150,556 bytes), plus one
metadata string. Every variant is one awaited handle call carrying the whole batch,
on a replica doing the same small computation; variants are interleaved call by call
so machine noise hits them alike. The table gives p50 / p90 in ms and the p50 ratio
to the baseline (a list of input dicts over Serve's default transport, router on the
caller's loop). Results are saved to bench/results/ray_transfer.json.

Variants
  dicts                list of input dicts; Serve's default by-reference actor transport
  dicts/grpc           the same over Serve's direct gRPC transport (_by_reference=False)
  dicts/router-thread  the same, with Serve's default router on its own thread
  packed               one contiguous uint8 buffer for the batch + descriptors, decoded on
                       the replica into numpy views (costs one copy on the driver)
  bytes                per request: raw payload bytes + descriptors, decoded on the replica
  ray.put              the list of dicts put in the object store first, the ref passed
  actor                a plain Ray actor, no Serve (the floor for a Ray call)
  RayBackend           inferential's backend end to end (ModelReplica over the direct data
                       path, the replica's own socket: docs/ray.md; make bench-ray breaks it down)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from inferential.config.schema import ModelConfig, RayConfig
from inferential.dispatch.ray.backend import RayBackend

RESULTS = Path(__file__).resolve().parent / "results" / "ray_transfer.json"
IMAGE_SHAPE = (224, 224, 3)


def observation(i: int, image: bool = True) -> dict[str, Any]:
    """Numpy views over one received payload, as the server decodes them."""
    state = (np.arange(7, dtype=np.float32) + i).tobytes()
    pixels = np.full(IMAGE_SHAPE, i % 251, np.uint8).tobytes() if image else b""
    payload = pixels + state
    inputs: dict[str, Any] = {
        "state": np.frombuffer(payload, np.float32, count=7, offset=len(pixels)),
        "prompt": "pick",
    }
    if image:
        inputs["image"] = np.frombuffer(payload, np.uint8, count=len(pixels)).reshape(IMAGE_SHAPE)
    return inputs


def compute(inputs: dict[str, Any]) -> dict[str, Any]:
    actions = inputs["state"] * np.float32(2.0)
    if "image" in inputs:
        actions = actions + np.float32(inputs["image"].mean() / 255.0)
    return {"actions": actions}


def pack(batch: list[dict[str, Any]]) -> tuple[list, np.ndarray]:
    descriptors, parts, offset = [], [], 0
    for inputs in batch:
        tensors, metadata = [], []
        for key, value in inputs.items():
            if isinstance(value, str):
                metadata.append((key, value))
            else:
                tensors.append((key, value.dtype.str, value.shape, offset, value.nbytes))
                parts.append(value.reshape(-1).view(np.uint8))
                offset += value.nbytes
        descriptors.append((tensors, metadata))
    return descriptors, np.concatenate(parts)


def per_request_bytes(batch: list[dict[str, Any]]) -> list[tuple]:
    items = []
    for inputs in batch:
        tensors, metadata, parts, offset = [], [], [], 0
        for key, value in inputs.items():
            if isinstance(value, str):
                metadata.append((key, value))
            else:
                tensors.append((key, value.dtype.str, value.shape, offset, value.nbytes))
                parts.append(value.tobytes())
                offset += value.nbytes
        items.append((tensors, metadata, b"".join(parts)))
    return items


def views(tensors: list, metadata: list, buffer: Any) -> dict[str, Any]:
    inputs: dict[str, Any] = dict(metadata)
    for key, dtype, shape, offset, nbytes in tensors:
        dt = np.dtype(dtype)
        inputs[key] = np.frombuffer(buffer, dt, count=nbytes // dt.itemsize, offset=offset).reshape(shape)
    return inputs


class BenchReplica:
    def dicts(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [compute(inputs) for inputs in batch]

    def packed(self, descriptors: list, buffer: np.ndarray) -> list[dict[str, Any]]:
        return [compute(views(t, m, buffer)) for t, m in descriptors]

    def bytes(self, items: list[tuple]) -> list[dict[str, Any]]:
        return [compute(views(t, m, payload)) for t, m, payload in items]


async def measure(variants: dict[str, Callable[[], Awaitable[Any]]], iterations: int) -> dict[str, list[float]]:
    for call in variants.values():  # warm up every path
        for _ in range(3):
            await call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(iterations):
        for name, call in variants.items():
            start = time.perf_counter()
            await call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


async def run(iterations: int, sizes: list[int]) -> dict[str, Any]:
    import ray
    from ray import serve
    from ray.serve.handle import DeploymentHandle

    backend = RayBackend(
        [ModelConfig(name="bench-model", target="inferential.models.ray_testing:LinearPolicy",
                     options={"gain": 2.0}, num_cpus=0)],
        RayConfig(num_cpus=2),
    )
    await backend.start()  # starts the embedded cluster, stopped again below
    try:
        serve.run(serve.deployment(BenchReplica, name="bench", ray_actor_options={"num_cpus": 0},
                                   logging_config={"enable_access_log": False}).bind(),
                  name="bench", route_prefix=None)
        same_loop = DeploymentHandle("bench", "bench")
        same_loop._init(_run_router_in_separate_loop=False)
        router_thread = DeploymentHandle("bench", "bench")
        by_ref = same_loop.options(_by_reference=True)
        by_grpc = same_loop.options(_by_reference=False)
        thread_ref = router_thread.options(_by_reference=True)
        actor = ray.remote(num_cpus=0)(BenchReplica).remote()

        results: dict[str, Any] = {}
        cases = [("1 tiny", [observation(0, image=False)])] + [
            (str(n), [observation(i) for i in range(n)]) for n in sizes
        ]
        for label, batch in cases:
            raw = per_request_bytes(batch)
            variants: dict[str, Callable[[], Awaitable[Any]]] = {
                "dicts": lambda: by_ref.dicts.remote(batch),
                "dicts/grpc": lambda: by_grpc.dicts.remote(batch),
                "dicts/router-thread": lambda: thread_ref.dicts.remote(batch),
                "packed": lambda: by_ref.packed.remote(*pack(batch)),
                "bytes": lambda: by_ref.bytes.remote(raw),
                "ray.put": lambda: by_ref.dicts.remote(ray.put(batch)),
                "actor": lambda: actor.dicts.remote(batch),
                "RayBackend": lambda: backend.execute("bench-model", batch),
            }
            times = await measure(variants, iterations)
            results[label] = {
                name: {"p50": statistics.median(v), "p90": sorted(v)[int(len(v) * 0.9)]}
                for name, v in times.items()
            }
            print(f"  batch {label}: done", flush=True)
        await same_loop.shutdown_async()
        serve.delete("bench")
        return results
    finally:
        await backend.stop()


def print_table(results: dict[str, Any]) -> None:
    labels = list(results)
    names = list(next(iter(results.values())))
    head = f"{'variant':21s}" + "".join(f" | batch {label:>7s} p50/p90 (x base)" for label in labels)
    print(head)
    print("-" * len(head))
    for name in names:
        row = f"{name:21s}"
        for label in labels:
            cell = results[label][name]
            ratio = cell["p50"] / results[label]["dicts"]["p50"]
            row += f" | {cell['p50']:6.2f} / {cell['p90']:6.2f} ms ({ratio:4.2f}x)  "
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=60)
    parser.add_argument("--sizes", default="1,8,20")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = asyncio.run(run(args.iterations, sizes))
    print()
    print_table(results)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"iterations": args.iterations, "p_ms": results}, indent=1) + "\n")
    print(f"\nsaved {RESULTS.relative_to(RESULTS.parents[2])}")


if __name__ == "__main__":
    main()
