# One obvious target per job. `make demo` and `make test` are the README's two commands.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PUBLISHED_VENV := .venv-published
PUBLISHED_VERSION := 1.4.0
# System packages the tests need (pyzmq wheels bundle libzmq for Python; the language
# fragments in mk/ add theirs).
APT_PACKAGES :=
# Test targets that `make test` runs after the Python tests; each mk/*.mk fragment adds its own.
TEST_TARGETS :=
# Every pytest run of `make test`: a test that hangs fails after this long with every
# thread's stack printed, instead of holding CI until its deadline (pytest-timeout).
PYTEST_FLAGS := --timeout=180
PROTO := proto/inferential.proto
PY_GEN := client-py/src/inferential/_proto

.PHONY: setup apt proto proto-check test test-py lint check-wheels demo bench profile bench-scheduling bench-scheduling-quick bench-ray clean

setup: apt $(VENV)/.stamp $(PUBLISHED_VENV)/.stamp

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.stamp: requirements-dev.txt client-py/pyproject.toml server-py/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements-dev.txt
	# compat mode puts each src/ folder on sys.path, so the client's and the
	# server's parts of the `inferential` package are found side by side.
	$(PIP) install -q --no-deps --config-settings editable_mode=compat -e client-py -e server-py
	touch $@

# The published package, as a compatibility target and a baseline, in a venv of its own
# (its distribution name is the same as ours).
$(PUBLISHED_VENV)/.stamp:
	test -x $(PUBLISHED_VENV)/bin/python || python3 -m venv $(PUBLISHED_VENV)
	$(PUBLISHED_VENV)/bin/pip install -q "inferential==$(PUBLISHED_VERSION)"
	touch $@

proto: $(VENV)/.stamp
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$(PY_GEN) --pyi_out=$(PY_GEN) $(PROTO)
	$(PY) proto/gen_tables.py

# Fails when committed generated code (Python bindings, every language's tables) drifts
# from proto/. Language fragments in mk/ add their own checks as prerequisites.
proto-check: $(VENV)/.stamp
	@tmp=$$(mktemp -d); \
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --pyi_out=$$tmp $(PROTO) && \
	$(PY) proto/gen_tables.py --out $$tmp && \
	diff -u $(PY_GEN)/inferential_pb2.py $$tmp/inferential_pb2.py && \
	diff -u $(PY_GEN)/inferential_pb2.pyi $$tmp/inferential_pb2.pyi && \
	for f in $$(cd $$tmp && find client-* -type f); do diff -u $$f $$tmp/$$f || exit 1; done && \
	echo "proto-check: generated code and tables match $(PROTO)"; rc=$$?; rm -rf $$tmp; exit $$rc

# One fragment per language or tool (mk/rust.mk, mk/cpp.mk, mk/conformance.mk, ...): each adds
# its targets, its APT_PACKAGES and its TEST_TARGETS.
include $(sort $(wildcard mk/*.mk))

test: setup proto-check lint test-py check-wheels $(TEST_TARGETS)

test-py: $(VENV)/.stamp
	$(PY) -m pytest client-py/tests server-py/tests -q $(PYTEST_FLAGS)

# ruff (lint and format check) and mypy on both Python packages; config in each pyproject.toml.
PY_PACKAGES := client-py server-py
lint: $(VENV)/.stamp
	@for pkg in $(PY_PACKAGES); do \
	  (cd $$pkg && ../$(VENV)/bin/ruff check -q src tests && ../$(VENV)/bin/ruff format --check -q src tests \
	   && ../$(VENV)/bin/mypy src) || exit 1; \
	done; echo "lint: ruff and mypy clean on $(PY_PACKAGES)"

# The wheels as pip builds them, installed into a fresh venv (ours from the folder only,
# dependencies from the index at requirements-dev.txt's versions), with no checkout on the
# path: `inferential --help`, `inferential serve` and a round trip must work there, first as
# `inferential[server]` (the Python transport, and the line saying how to get the other),
# then with the native module's wheel added through the `inferential[server-native]` extra
# (the native transport serving). The module's wheel is built for the venv's interpreter,
# the one `make setup-native` built for, so cargo reuses that build.
check-wheels: $(VENV)/.stamp $(NATIVE_STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PIP) wheel -q --no-deps --no-build-isolation -w $$tmp/wheels ./client-py ./server-py && \
	python3 -m venv $$tmp/venv && \
	$$tmp/venv/bin/pip install -q --no-index --no-deps $$tmp/wheels/*.whl && \
	sed 's/\[.*\]//' requirements-dev.txt > $$tmp/constraints.txt && \
	$$tmp/venv/bin/pip install -q -c $$tmp/constraints.txt "inferential[server]==2.0.0.dev0" && \
	(cd $$tmp && env -u PYTHONPATH $$tmp/venv/bin/python $(CURDIR)/server-py/tools/wheel_smoke.py --expect python) && \
	VIRTUAL_ENV=$(CURDIR)/$(VENV) CARGO_TARGET_DIR=$(CURDIR)/target/native CARGO_BUILD_JOBS=2 nice -n 10 \
	  $(VENV)/bin/maturin build --release -q -m server-native/Cargo.toml $(RUST_SYSTEM_LIBZMQ) \
	  -i $(CURDIR)/$(PY) -o $$tmp/native && \
	$$tmp/venv/bin/pip install -q --no-index --find-links $$tmp/native --find-links $$tmp/wheels \
	  "inferential[server-native]==2.0.0.dev0" && \
	cd $$tmp && env -u PYTHONPATH $$tmp/venv/bin/python $(CURDIR)/server-py/tools/wheel_smoke.py --expect native

demo: setup
	$(PY) -m inferential.cli demo $(DEMO_ARGS)

# Our server vs the raw pyzmq floor, the published 1.4.0 and a gRPC echo: 1 robot, 20 and 100
# robots x 50 Hz, maximum throughput (~6 min). `make bench BENCH_ARGS=--quick`: ~2 min.
bench: setup
	$(PY) bench/compare.py $(BENCH_ARGS)

# Where the server's time goes: py-spy samples under 20 robots x 50 Hz (~1 min).
profile: setup
	$(PY) bench/profile_server.py $(PROFILE_ARGS)

# Every strategy and the published 1.4.0 server under a simulated fleet, plus the
# virtual-clock simulation (~9 min; the quick one ~2 min). docs/scheduling.md has the results.
bench-scheduling: setup
	$(PY) bench/scheduling.py

bench-scheduling-quick: setup
	$(PY) bench/scheduling.py --quick

# Local backend vs Ray Serve with batching vs one handle call per request, VisionPolicy,
# 20 robots x 50 Hz and maximum throughput (~3 min; BENCH_ARGS=--quick ~1.5 min).
# bench/ray_transfer.py (how a batch should travel to a replica) runs on its own.
bench-ray: setup
	$(PY) bench/ray_backend.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PUBLISHED_VENV) .pytest_cache
