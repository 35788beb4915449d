"""Sequential round trips through the published 1.4.0 Python client (run in its own venv).

    .venv-published/bin/python bench/_published_client.py ENDPOINT MODEL N WARMUP

1.4.0's client has no request ids and no request(): a robot calls observe() and
then get_result(), which returns the oldest buffered reply for the model. With
one observation in flight that is its reply (checked by the echoed ``seq``).
Prints the round trips in ms as one JSON list.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from inferential import Connection

IMAGE = np.random.default_rng(0).integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
JOINTS = np.zeros(7, dtype=np.float32)


def main() -> None:
    endpoint, model_id, n, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    conn = Connection(server=endpoint, client_id=f"bench-1.4.0-{model_id}-{time.monotonic_ns()}")
    model = conn.model(model_id)
    out = []
    for i in range(n + warmup):
        t = time.perf_counter()
        model.observe(image=IMAGE, joints=JOINTS, seq=str(i))
        result = model.get_result(timeout_ms=5000)
        elapsed = (time.perf_counter() - t) * 1e3
        if result is None or result.get("seq") != str(i):
            raise SystemExit(f"no reply, or not the reply to observation {i}: {result!r}")
        if i >= warmup:
            out.append(elapsed)
    conn.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
