# The C++ client (client-cpp/): CMake + Ninja builds under build/, niced on two jobs
# (the machine's cores are shared). Integration tests start the real Python server
# (INFERENTIAL_PYTHON, default .venv/bin/python).
APT_PACKAGES += libzmq3-dev cppzmq-dev libprotobuf-dev protobuf-compiler libgtest-dev pybind11-dev \
  nlohmann-json3-dev cmake ninja-build clang libclang-rt-14-dev python3-dev bazel-bootstrap bazel-rules-java

CPP_SRC := client-cpp
CPP_BUILD := build/cpp
CPP_ASAN_BUILD := build/cpp-asan
CPP_FUZZ_BUILD := build/cpp-fuzz
CPP_NINJA := nice ninja -j2
CPP_ENV := INFERENTIAL_PYTHON=$(CURDIR)/$(PY)
FUZZ_SECONDS ?= 60

.PHONY: test-cpp test-cpp-asan fuzz-cpp testee-cpp check-bazel bench-cpp

TEST_TARGETS += test-cpp test-cpp-asan check-bazel
CONFORMANCE_LANGS += cpp
CONFORMANCE_TESTEES += testee-cpp

# Configure, build, and run every googletest suite plus the install + outside-consumer check.
test-cpp: $(VENV)/.stamp
	cmake -S $(CPP_SRC) -B $(CPP_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DINFERENTIAL_BUILD_TESTS=ON -DINFERENTIAL_BUILD_EXAMPLES=ON >/dev/null
	$(CPP_NINJA) -C $(CPP_BUILD)
	cd $(CPP_BUILD) && $(CPP_ENV) ctest --output-on-failure --timeout 300

# The same suites with AddressSanitizer and UndefinedBehaviorSanitizer; any report fails.
test-cpp-asan: $(VENV)/.stamp
	cmake -S $(CPP_SRC) -B $(CPP_ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug \
	  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
	  -DINFERENTIAL_BUILD_TESTS=ON -DINFERENTIAL_BUILD_EXAMPLES=OFF -DINFERENTIAL_TEST_INSTALL=OFF >/dev/null
	$(CPP_NINJA) -C $(CPP_ASAN_BUILD)
	cd $(CPP_ASAN_BUILD) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(CPP_ENV) ctest --output-on-failure --timeout 300

# libFuzzer on the reply decoder and matcher (clang, ASan + UBSan), bounded to FUZZ_SECONDS.
# Prints the runs made; a crash leaves its input in $(CPP_FUZZ_BUILD)/ and fails.
fuzz-cpp: $(VENV)/.stamp
	CXX=clang++ cmake -S $(CPP_SRC) -B $(CPP_FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all" \
	  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
	  -DINFERENTIAL_BUILD_TESTS=OFF -DINFERENTIAL_BUILD_EXAMPLES=OFF -DINFERENTIAL_BUILD_FUZZ=ON >/dev/null
	$(CPP_NINJA) -C $(CPP_FUZZ_BUILD) fuzz_decode_reply
	mkdir -p $(CPP_FUZZ_BUILD)/corpus
	$(PY) $(CPP_SRC)/fuzz/make_seeds.py $(CPP_FUZZ_BUILD)/corpus
	cd $(CPP_FUZZ_BUILD) && { nice ./fuzz_decode_reply -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	  -print_final_stats=1 corpus >fuzz.log 2>&1; rc=$$?; \
	  grep -E "^(Done|stat::number|stat::new)|^==|SUMMARY|crash-" fuzz.log; \
	  echo "fuzz-cpp: exit $$rc; protobuf UTF-8 rejections logged: $$(grep -c 'invalid UTF-8' fuzz.log) (full log: $(CPP_FUZZ_BUILD)/fuzz.log)"; \
	  exit $$rc; }

# The conformance testee (conformance/testees/cpp/, pybind11): builds
# build/testee-cpp/inferential_testee_cpp*.so, which the runner finds there
# (conformance/runner/testee.py puts build/testee-cpp on PYTHONPATH).
testee-cpp: $(VENV)/.stamp
	cmake -S conformance/testees/cpp -B build/testee-cpp-build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DPython_EXECUTABLE=$(CURDIR)/$(PY) -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$(CURDIR)/build/testee-cpp >/dev/null
	$(CPP_NINJA) -C build/testee-cpp-build inferential_testee_cpp

# The Bazel BUILD files (root MODULE.bazel/BUILD.bazel, client-cpp/BUILD.bazel) checked offline
# with Debian's bazel-bootstrap 4.2.3 in WORKSPACE mode, system libraries standing in for the
# registry modules: builds the library, the example and the integration test binary, runs the
# codec and matcher tests. What it proves and what not: client-cpp/README.md.
check-bazel:
	@nice $(CPP_SRC)/bazel-check/check.sh . build/bazel-check >build/bazel-check.log 2>&1; rc=$$?; \
	  grep -E "^(//|Executed|ERROR|FAILED)|Build completed" build/bazel-check.log | sort -u; \
	  echo "check-bazel: exit $$rc (log: build/bazel-check.log)"; exit $$rc

# Round trip p50/p99 of the C++ client to our server (noop model, 150 KB observation) against a
# raw cppzmq DEALER sending the same frames to a raw pyzmq ROUTER echo, in one run (Release).
BENCH_CPP_ITERATIONS ?= 2000
bench-cpp: $(VENV)/.stamp
	cmake -S $(CPP_SRC) -B build/cpp-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DINFERENTIAL_BUILD_TESTS=OFF \
	  -DINFERENTIAL_BUILD_EXAMPLES=OFF -DINFERENTIAL_BUILD_BENCH=ON >/dev/null
	$(CPP_NINJA) -C build/cpp-bench bench_roundtrip
	$(CPP_ENV) build/cpp-bench/bench_roundtrip $(BENCH_CPP_ITERATIONS)
