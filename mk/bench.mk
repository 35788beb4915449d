# How the server's cost grows with the fleet (issue 16 §4): robots 1, 10, 50, 100, 200 x 50 Hz,
# small and 150 KB observations, ours (python and, when built, native transport) against the
# published 1.4.0: server CPU per request, p50/p99, goodput; the generator's own CPU beside it.
# Writes bench/results/scale.{json,md,png} (~8 min). Not part of make test (a measurement, not
# a check); `make bench-scale-quick` is the smoke run (1-2.5 min).
SCALE_ARGS ?=
.PHONY: bench-scale bench-scale-quick
bench-scale: setup
	$(PY) bench/scale.py $(SCALE_ARGS)

bench-scale-quick: setup
	$(PY) bench/scale.py --quick $(SCALE_ARGS)

# Overload by the server's own CPU (issue 16 §1): 100 robots x 50 Hz against two native
# servers that differ only in transport.native_shedding, taking turns; goodput within budget,
# sheds, late OK and silent losses of each, and the ratio (~4 min; bench/results/shedding.json).
SHEDDING_ARGS ?=
.PHONY: bench-shedding
bench-shedding: setup
	$(PY) bench/shedding.py $(SHEDDING_ARGS)
