"""Hosts a native testee module (Rust via maturin, C++ via pybind11) in its own process.

Usage: python native_worker.py MODULE. Reads one command per line on stdin and prints the
line ``MODULE.handle(line)`` returns; the command dispatch lives in the native module, in the
testee's own language (conformance/TESTEE.md). Imports nothing but that module.
"""

import importlib
import sys


def main() -> None:
    module = importlib.import_module(sys.argv[1])
    for line in sys.stdin:
        if not line.strip():
            continue
        sys.stdout.write(module.handle(line.strip()) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
