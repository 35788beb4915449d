"""The published inferential 1.4.0 server with the models of bench/compare.py.

Runs under the published package's own venv (same import name as ours):

    .venv-published/bin/python bench/_published_peer.py --bind tcp://127.0.0.1:5555

Models, the counterparts of the ones our server runs in the comparison:
  noop    returns 7 zeros at once, on the event loop (1.4.0 calls a synchronous
          model inline, which for a no-op is its cheapest path)
  sleep1  1 ms per call, on one worker thread (run_in_executor): the event loop
          stays free while it runs, the published server's best case; 1.4.0
          calls the model once per observation (no batching)
Both echo the observation's ``seq`` metadata, so a load generator can match
replies to observations (1.4.0 has no request ids). Everything else is 1.4.0's
default configuration. (bench/_published_server.py is the scheduling
benchmark's runner: one model named ``policy`` with a configurable call time.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from inferential import Server
from inferential.config.schema import InferentialConfig
from inferential.dispatch.local import LocalDispatcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--sleep-ms", type=float, default=1.0, help="call time of the sleep1 model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    config = InferentialConfig()
    config.transport.bind = args.bind
    action = np.zeros(7, dtype=np.float32)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    sleep_s = args.sleep_ms / 1e3

    def noop(obs: dict) -> dict:
        return {"actions": action, "seq": obs.get("seq", "")}

    async def sleep1(obs: dict) -> dict:
        await asyncio.get_running_loop().run_in_executor(executor, time.sleep, sleep_s)
        return {"actions": action, "seq": obs.get("seq", "")}

    server = Server(config=config, dispatcher=LocalDispatcher({"noop": noop, "sleep1": sleep1}))
    try:
        asyncio.run(server.run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
