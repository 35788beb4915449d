# The server's native transport (server-native/, issue 16 §2): a pyo3 module built with
# maturin into the venv, linked to the system libzmq (RUST_SYSTEM_LIBZMQ, mk/rust.mk) so that
# CURVE works. `make setup` builds it; the stamp keeps a second `make test` from rebuilding
# unless its sources (or the crate's wire module it uses) changed. Without the module the
# server serves on the pure-Python transport (transport.native: auto).
APT_PACKAGES += libzmq3-dev
NATIVE_STAMP := $(VENV)/.native-stamp
NATIVE_SOURCES := $(wildcard server-native/src/*.rs client-rust/src/*.rs client-rust/src/wire/*.rs) \
  server-native/Cargo.toml server-native/pyproject.toml client-rust/Cargo.toml
# The server suite again with INFERENTIAL_TRANSPORT=native, but for the Ray tests (Ray's
# start-up dominates them and the transport plays no part in dispatch): about 4-6 min here.
NATIVE_TESTS ?= server-py/tests --ignore=server-py/tests/ray

.PHONY: setup-native test-py-native

setup: setup-native
conformance: setup-native
setup-native: $(NATIVE_STAMP)

$(NATIVE_STAMP): $(VENV)/.stamp $(NATIVE_SOURCES)
	@$(VENV)/bin/maturin --version >/dev/null 2>&1 || $(PIP) install -q maturin==1.16.0
	VIRTUAL_ENV=$(CURDIR)/$(VENV) CARGO_TARGET_DIR=$(CURDIR)/target/native CARGO_BUILD_JOBS=2 nice -n 10 \
	  $(VENV)/bin/maturin develop --release -q -m server-native/Cargo.toml $(RUST_SYSTEM_LIBZMQ)
	$(PY) -c "import inferential_native"
	touch $@

# The module's clippy (warnings are errors), then every server test on the native transport
# (make test-py runs them on the Python one: server-py/tests/conftest.py defaults
# INFERENTIAL_TRANSPORT to python).
TEST_TARGETS += test-py-native
test-py-native: $(NATIVE_STAMP)
	PYO3_PYTHON=$(CURDIR)/$(PY) CARGO_TARGET_DIR=$(CURDIR)/target/native $(CARGO) clippy -q -p inferential-native $(RUST_SYSTEM_LIBZMQ) -- -D warnings
	INFERENTIAL_TRANSPORT=native $(PY) -m pytest $(NATIVE_TESTS) -q -p no:cacheprovider $(PYTEST_FLAGS)
