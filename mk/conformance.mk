# The conformance harness (conformance/README.md): every case against each client's testee.
# Language fragments add `CONFORMANCE_LANGS += x` and the target that builds their testee to
# CONFORMANCE_TESTEES; `make conformance CONFORMANCE_LANGS=python` runs one column.
CONFORMANCE_LANGS := python
CONFORMANCE_TESTEES :=
comma := ,
empty :=
space := $(empty) $(empty)

.PHONY: conformance
conformance: $(VENV)/.stamp
	@for t in $(CONFORMANCE_TESTEES); do $(MAKE) --no-print-directory $$t || exit 1; done
	CONFORMANCE_LANGS=$(subst $(space),$(comma),$(strip $(CONFORMANCE_LANGS))) \
	  $(PY) -m pytest conformance/runner -q -p no:cacheprovider $(PYTEST_FLAGS) $(CONFORMANCE_ARGS)

TEST_TARGETS += conformance
