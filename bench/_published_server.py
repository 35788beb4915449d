"""Run the published inferential 1.4.0 server with a timed stand-in model.

Runs under the published package's own venv (its import name is the same as
ours), using only its public API:

    .venv-published/bin/python bench/_published_server.py --bind tcp://127.0.0.1:5555 \\
        --call-ms 2.9 --budget fast-00=20 --budget slow-00=50 ...

Its LocalDispatcher calls the model once per observation (no batching), so the
model's cost is given per call. The model is one executor, as in the benchmark's
other runs: calls run one at a time on a single worker thread. (1.4.0's default
configuration issues up to three calls at once: its legacy dispatch loop and,
for its default model-aware scheduler, a per-model loop with ``max_inflight``
2; with one executor they queue at the model.) Running in a thread leaves the
server's event loop free while the model runs: the published server's best
case (a synchronous model would block its receive loop). The model returns a 7-float action and echoes the observation's ``seq``
metadata, so the load generator can match replies to observations (1.4.0 has
no request ids). Per-robot latency budgets go into ``clients.known`` (the only
place 1.4.0 reads budgets from). Everything else is 1.4.0's default
configuration (strategy ``model_deadline``, TTL 5 s, queue 1000, drop_oldest).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from inferential import Server
from inferential.config.schema import ClientEntry, InferentialConfig
from inferential.dispatch.local import LocalDispatcher

MODEL = "policy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--call-ms", type=float, required=True, help="model time per call (one observation)")
    parser.add_argument("--budget", action="append", default=[], metavar="CLIENT=MS", help="a robot's latency budget")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    config = InferentialConfig()
    config.transport.bind = args.bind
    for item in args.budget:
        client, _, ms = item.partition("=")
        config.clients.known.append(ClientEntry(id=client, model=MODEL, latency_budget_ms=float(ms)))
    call_s = args.call_ms / 1e3
    action = np.zeros(7, dtype=np.float32)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    async def policy(obs: dict) -> dict:
        await asyncio.get_running_loop().run_in_executor(executor, time.sleep, call_s)
        return {"actions": action, "seq": obs.get("seq", "")}

    server = Server(config=config, dispatcher=LocalDispatcher({MODEL: policy}))
    try:
        asyncio.run(server.run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
