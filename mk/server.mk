# The server under attack (issue 14): a soak with a hostile sender, and the decode path fuzzed.
# The hostile tests themselves (server-py/tests/test_hostile.py) run in test-py.
.PHONY: soak soak-quick fuzz-server

# 200 robots x 20 Hz for 10 minutes, a baseline run and one beside the hostile sender:
# server RSS start/peak/end, /metrics size, good robots' p99 both ways, exactly-once
# accounting. SOAK_ARGS=--strict also fails when the attack's p99 is > 20 % over baseline.
SOAK_ARGS ?=
soak: $(VENV)/.stamp
	$(PY) server-py/tools/soak.py --robots 200 --hz 20 --seconds 600 $(SOAK_ARGS)

# The same, about a minute in all (two runs of 25 s, fewer robots): in make test.
soak-quick: $(VENV)/.stamp
	timeout 300 $(PY) server-py/tools/soak.py --robots 40 --hz 20 --seconds 25 $(SOAK_ARGS)

# Hypothesis on decode_request: FUZZ_EXAMPLES per generator (three), then runs and escapes.
FUZZ_EXAMPLES ?= 20000
fuzz-server: $(VENV)/.stamp
	$(PY) server-py/tools/fuzz_decode.py --examples $(FUZZ_EXAMPLES)

TEST_TARGETS += soak-quick
