# coalmine: the recipes here are the ones CI runs (`.ci/run` calls `make test`).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
WASM_DIR := target/$(WASM_TARGET)/release
WASM := $(WASM_DIR)/coalmine_filter.wasm
# Callbacks coalmine does not take. The SDK exports every callback, and
# Envoy enters the VM for each one a module exports; the lean empty filter
# (the benchmarks' second floor) drops these exports. Dropping them from
# coalmine itself measured no gain (BENCHMARKS.md), so it is not done. The
# request body and trailers are coalmine's: a request copied to a shadow
# keeps its body as it passes.
UNUSED_CALLBACKS := proxy_on_done \
  proxy_on_queue_ready proxy_on_foreign_function proxy_on_new_connection \
  proxy_on_downstream_data proxy_on_downstream_connection_close proxy_on_upstream_data \
  proxy_on_upstream_connection_close proxy_on_grpc_receive_initial_metadata \
  proxy_on_grpc_receive proxy_on_grpc_receive_trailing_metadata proxy_on_grpc_close
ENVOY := .venv/bin/envoy
# The pure core's tests also run compiled to wasm32, under Wasmtime.
WASI_RUNNER := $(CURDIR)/.venv/bin/python $(CURDIR)/tools/wasi-run.py

.PHONY: help setup setup-demo build-stack build build-wasm build-native lint fmt validate check-deploy deny audit fuzz fuzz-smoke soak test-soak test test-unit test-wasm test-e2e test-demo test-decisions test-bench bench bench-decisions demo up down clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## install what the build and tests need (idempotent)
	@tools/setup.sh

setup-demo: ## install only what the demo needs (the wasm target, Envoy in .venv)
	@tools/setup.sh --demo

build: setup build-wasm build-native ## build the filter (wasm) and the native binaries

# What the local stack runs (the filter, controller, model server, demo),
# built with the quick profile: the release code, built for a short first
# build (Cargo.toml says what it measured). `make bench` measures `release`.
STACK_PROFILE ?= quick
build-stack: setup-demo
	$(CARGO) build --profile $(STACK_PROFILE) --locked -p coalmine-filter --target $(WASM_TARGET)
	$(CARGO) build --profile $(STACK_PROFILE) --locked -p coalmine-controller -p coalmine-models-server -p coalmine-cli -p coalmine-demo

build-wasm:
	$(CARGO) build --release -p coalmine-filter -p coalmine-empty-filter --target $(WASM_TARGET)
	$(CARGO) build --release --locked -p coalmine-wasm-exports
	target/release/coalmine-wasm-exports $(WASM_DIR)/coalmine_empty_filter.wasm \
	  $(WASM_DIR)/coalmine_empty_filter_lean.wasm $(UNUSED_CALLBACKS)
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

build-native:
	$(CARGO) build --release --workspace --exclude coalmine-filter --exclude coalmine-empty-filter --bins

fmt: ## format the code
	$(CARGO) fmt --all
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml

lint: ## rustfmt check, clippy -D warnings natively and on wasm32, the layout's rules
	tools/layout.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	$(CARGO) clippy --manifest-path fuzz/Cargo.toml --target-dir target --all-targets --locked -- -D warnings
	$(CARGO) clippy -p coalmine-filter -p coalmine-empty-filter -p coalmine-protocol --target $(WASM_TARGET) --locked -- -D warnings

validate: build-wasm ## envoy --mode validate on every shipped Envoy config
	@for f in envoy/*.yaml; do \
	  printf 'validate %-32s ' "$$f"; \
	  $(ENVOY) --mode validate -c "$$f" -l error --disable-hot-restart >/dev/null 2>/tmp/coalmine-validate.log \
	    && echo ok || { echo FAILED; cat /tmp/coalmine-validate.log; exit 1; }; \
	done

check-deploy: ## the compose file, Prometheus configs, Kubernetes and Istio manifests, as far as no cluster is needed
	docker-compose --file docker-compose.yml --profile observability config --quiet
	docker-compose --file docker-compose.yml --profile postgres config --quiet
	@echo "docker-compose.yml: ok"
	promtool check config deploy/prometheus/prometheus.yml deploy/prometheus/compose.yml
	node tools/manifests/validate.mjs

deny: ## cargo deny: licenses, bans and sources of every dependency
	$(CARGO) deny --all-features check licenses bans sources

audit: ## cargo deny: known advisories (fetches the RustSec database from GitHub)
	$(CARGO) deny check advisories

fuzz-smoke: ## 30 s of every fuzz target, replaying the committed corpus
	tools/fuzz.sh 30 --smoke

FUZZ_SECONDS ?= 600
fuzz: setup ## the long fuzz runs: FUZZ_SECONDS (600) per target, corpus grows in fuzz/corpus/
	tools/fuzz.sh $(FUZZ_SECONDS)

test-unit: ## unit, property and router tests (native)
	$(CARGO) test --workspace --exclude coalmine-e2e --locked

test-wasm: ## the pure core's and the filter's tests compiled to wasm32-wasip1
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASI_RUNNER)" \
	  $(CARGO) test -p coalmine-protocol -p coalmine-filter --target $(WASM_TARGET) --locked

test-e2e: build-wasm ## end-to-end tests on the real Envoy and controller
	$(CARGO) build -p coalmine-controller -p coalmine-cli -p coalmine-models-server --locked
	$(CARGO) test -p coalmine-e2e --locked -- --nocapture

test-demo: build-wasm build-native ## the demo on the release build the other tests use; it fails unless its timeline is the expected one
	COALMINE_PROFILE=release target/release/coalmine-demo

test-decisions: build-native ## a quick decision simulation: A/A false rollbacks within their bound
	target/release/coalmine-sim --quick --out target/bench/decisions-quick.json

test-bench: build-wasm build-native ## a seconds-long smoke of `make bench`, so the harness never rots
	target/release/coalmine-bench --smoke --out target/bench/perf-smoke.json
	target/release/coalmine-bench --smoke --only compare --module $(WASM)

bench: build ## data-plane cost, split accuracy, propagation, time to rollback, controller capacity; writes target/bench/perf.json and BENCHMARKS.md
	target/release/coalmine-bench --out target/bench/perf.json --markdown BENCHMARKS.md

soak: build ## 30 min of steady load with canary cycles and faults; writes target/bench/soak.json
	target/release/coalmine-soak --minutes 30 --out target/bench/soak.json

test-soak: build-wasm build-native ## the soak, shortened to 3 minutes
	target/release/coalmine-soak --minutes 3 --out target/bench/soak-short.json

bench-decisions: setup build-native ## simulate 1000 A/A runs and detection times; writes target/bench/decisions.json
	target/release/coalmine-sim --out target/bench/decisions.json

test: setup lint deny validate check-deploy test-unit test-wasm test-e2e fuzz-smoke test-demo test-decisions test-bench test-soak ## everything CI runs
	@echo "make test: all checks passed"

demo: build-stack ## the heart-disease story on the local stack (KEEP=1 leaves it running)
	COALMINE_PROFILE=$(STACK_PROFILE) target/$(STACK_PROFILE)/coalmine-demo $(if $(KEEP),--keep)

up: build-stack ## start the local stack in the background (ports 10000, 9901, 8700, 8501, 8502, 8503)
	@COALMINE_PROFILE=$(STACK_PROFILE) tools/stack.sh up

down: ## stop the local stack
	@tools/stack.sh down

clean:
	$(CARGO) clean
