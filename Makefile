# The verbs. Every target works on a fresh machine: `make run` needs cargo, and installs
# Debian's `chromium` for its browser checks when it is missing (apt, as root or with sudo);
# `make test` installs what the tests need (apt, pip venv, npm) via deploy/scripts/setup-test-env.sh.
SHELL := /bin/bash
CARGO ?= cargo
REGISTRY ?= 127.0.0.1:5000
export CARGO_TERM_COLOR ?= never

.PHONY: all build run test test-rust chart-test lint fmt bench images push image-test setup clean

all: build

build:
	$(CARGO) build --workspace --bins

## The main job on the embedded default: local executor + embedded broker, the sample
## jobs in deploy/examples/, each job's result printed; exits 0 when all behaved as expected.
run: build
	@command -v chromium >/dev/null || { echo "run: apt-get install chromium (the browser checks)"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	./target/debug/job-manager demo --examples deploy/examples

## Everything CI runs: the tests, then the gates (formatting, clippy -D warnings with the
## workspace lints, cargo-deny licences/bans/sources, MSRV).
test: setup test-rust chart-test lint

setup:
	deploy/scripts/setup-test-env.sh

test-rust:
	$(CARGO) build --workspace --all-targets
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi
	$(CARGO) test --workspace --doc

chart-test:
	deploy/scripts/chart-test.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@command -v cargo-deny >/dev/null || { echo "cargo-deny is missing: run 'make setup'"; exit 1; }
	$(CARGO) deny --offline --locked check licenses bans sources
	deploy/scripts/check-msrv.py

fmt:
	$(CARGO) fmt --all

bench:
	integration-tests/bench/run.sh

images:
	deploy/scripts/images.sh build

push:
	deploy/scripts/images.sh push $(REGISTRY)

## Build, push to a loopback registry, pull back, inspect and smoke-run the images.
image-test:
	deploy/scripts/images.sh test

clean:
	$(CARGO) clean
