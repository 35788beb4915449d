"""Run by `make check-wheels` with the python of a fresh venv holding only our wheels and
their dependencies: the CLI starts, `inferential serve` serves on the transport
``--expect`` names (``python``: the client and server wheels alone, and the server says
how to get the native one; ``native``: the native module's wheel installed too), and
one observation makes the round trip. Exits non-zero on the first failure."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expect", choices=("python", "native"), required=True, help="the transport that must serve")
    expect = ap.parse_args().expect
    import inferential
    import inferential.cli
    import inferential.server
    from inferential import Connection

    # The client's and the server's halves installed side by side into one folder,
    # not found through a checkout.
    package = Path(inferential.__file__).resolve().parent
    assert "site-packages" in package.parts, package
    for module in (inferential.cli, inferential.server):
        assert package in Path(module.__file__).resolve().parents, module.__file__
    cli = Path(sys.executable).parent / "inferential"
    subprocess.run([str(cli), "--help"], check=True, stdout=subprocess.DEVNULL)

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [str(cli), "serve", "--bind", endpoint, "--model", "noop=inferential.models.testing:NoOp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log: list[str] = []
    # Reading its output blocks: a server that hangs silently is killed, which ends the read.
    watchdog = threading.Timer(120.0, server.kill)
    watchdog.start()
    try:
        # The server logs "serving models ..." once it is bound and its model loaded.
        assert server.stdout is not None
        for line in server.stdout:
            log.append(line)
            if "serving models" in line:
                break
        else:
            raise AssertionError("inferential serve exited before serving:\n" + "".join(log))
        with Connection(server=endpoint, client_id="wheel-check") as conn:
            result = conn.model("noop").request(timeout_ms=10_000, x=np.zeros(3, np.float32))
        assert result.ok, result
    finally:
        watchdog.cancel()
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=60)
        log.append(rest or "")
    if server.returncode != 0:
        print("".join(log), file=sys.stderr)
        return 1
    said = "".join(log)
    native = "native transport serving" in said
    hint = "serving on the Python transport" in said and "inferential[server-native]" in said
    if (expect == "native") != native or (expect == "python") != hint:
        print(f"check-wheels: expected the {expect} transport to serve; the server said:\n{said}", file=sys.stderr)
        return 1
    print(f"check-wheels: `inferential --help`, `inferential serve` on the {expect} transport and a round trip work "
          f"from the wheels ({package})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
