# The Rust client crate (client-rust/), its conformance testee and its fuzz target.
# Cargo runs niced on two jobs: the machine's cores are shared.
CARGO := CARGO_BUILD_JOBS=2 nice cargo
# The test runs: killed after 15 minutes if something hangs (they take seconds).
CARGO_TIMED := CARGO_BUILD_JOBS=2 nice timeout 900 cargo
RUST_GEN := client-rust/src/generated
# CURVE: the zmq crate's bundled libzmq is built without libsodium, so it has no CURVE (the
# crate then refuses CURVE keys with `unsupported`). Overriding zmq-sys's build script
# (cargo's `links` override) links the system libzmq instead, which has it: the second test
# run and the conformance testee use that, each in a target dir of its own.
RUST_HOST := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
RUST_SYSTEM_LIBZMQ := --config 'target.$(RUST_HOST).zmq.rustc-link-lib=["zmq"]'
APT_PACKAGES += libzmq3-dev

.PHONY: test-rust proto-rust proto-check-rust package-rust fuzz-rust bench-rust testee-rust example-rust

TEST_TARGETS += test-rust
proto-check: proto-check-rust

# fmt, clippy (warnings are errors) and every test, the integration tests against the real
# Python server (INFERENTIAL_PYTHON, default .venv/bin/python); a hung test run is killed
# after 15 minutes (the suites take seconds).
test-rust: $(VENV)/.stamp
	$(CARGO) fmt --all --check
	$(CARGO) clippy -p inferential --all-targets -- -D warnings
	$(CARGO) clippy -p inferential --all-targets --all-features -- -D warnings
	INFERENTIAL_PYTHON=$(CURDIR)/$(PY) INFERENTIAL_EXPECT_CURVE=0 $(CARGO_TIMED) test -p inferential --all-features
	INFERENTIAL_PYTHON=$(CURDIR)/$(PY) INFERENTIAL_EXPECT_CURVE=1 CARGO_TARGET_DIR=$(CURDIR)/target/system-libzmq \
	  $(CARGO_TIMED) test -p inferential --test curve $(RUST_SYSTEM_LIBZMQ)

# Regenerate the committed prost code from proto/ (prost-build runs protoc).
proto-rust:
	$(CARGO) run -q -p inferential-gen -- $(RUST_GEN) proto

# Fails when the committed prost code drifts from proto/.
proto-check-rust:
	@tmp=$$(mktemp -d); \
	$(CARGO) run -q -p inferential-gen -- $$tmp proto && \
	diff -u $(RUST_GEN)/inferential.rs $$tmp/inferential.rs && \
	echo "proto-check-rust: generated Rust code matches $(PROTO)"; rc=$$?; rm -rf $$tmp; exit $$rc

# The crate as it would be published (builds the packaged sources on their own).
package-rust:
	$(CARGO) package -p inferential

# The conformance testee (conformance/testees/rust, a maturin-built pyo3 module) installed
# into the venv; `make conformance` builds it first and runs the rust column. It links the
# system libzmq (see RUST_SYSTEM_LIBZMQ) so that the CURVE cases run.
CONFORMANCE_LANGS += rust
CONFORMANCE_TESTEES += testee-rust
testee-rust: $(VENV)/.stamp
	@$(VENV)/bin/maturin --version >/dev/null 2>&1 || $(PIP) install -q maturin==1.16.0
	VIRTUAL_ENV=$(CURDIR)/$(VENV) CARGO_TARGET_DIR=$(CURDIR)/target/testee-rust CARGO_BUILD_JOBS=2 nice \
	  $(VENV)/bin/maturin develop --release -q -m conformance/testees/rust/Cargo.toml $(RUST_SYSTEM_LIBZMQ)

# Fuzz the reply decoder for FUZZ_SECONDS (default 60) from the committed seeds; prints
# libFuzzer's run count; any crash leaves its input in client-rust/fuzz/artifacts/.
FUZZ_SECONDS ?= 60
fuzz-rust:
	@cargo +nightly fuzz --version >/dev/null 2>&1 || CARGO_BUILD_JOBS=2 nice cargo install cargo-fuzz --locked
	cd client-rust/fuzz && mkdir -p corpus/decode_reply && CARGO_BUILD_JOBS=2 nice cargo +nightly fuzz run \
	  decode_reply corpus/decode_reply seeds -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1

# Round trip p50/p99 of this client vs a bare zmq DEALER (to a bare echo and to our server,
# noop model, 150 KB observation) and the Python client, in one run; then the crate's cold
# build time (a fresh target dir; set BENCH_COLD_BUILD=0 to skip).
BENCH_N ?= 2000
BENCH_COLD_BUILD ?= 1
bench-rust: $(VENV)/.stamp
	BENCH_N=$(BENCH_N) INFERENTIAL_PYTHON=$(CURDIR)/$(PY) $(CARGO) bench -p inferential --bench roundtrip
	@if [ "$(BENCH_COLD_BUILD)" = 1 ]; then tmp=$$(mktemp -d); start=$$(date +%s.%N); \
	  CARGO_TARGET_DIR=$$tmp $(CARGO) build -q -p inferential --release && \
	  awk -v s=$$start -v e=$$(date +%s.%N) 'BEGIN { printf "cold release build of the crate (2 jobs): %.0f s\n", e - s }'; \
	  rm -rf $$tmp; fi
