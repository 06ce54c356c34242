# Thrifty developer entry points. `make demo` and `make test` do all their own set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# `uv` on PATH, else the module in the running Python, else the one scripts/system-deps.sh
# installs into its own environment. Looked up when a recipe runs (`=`), so after
# `system-deps` has installed it on a fresh machine.
export UV_VENV ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/thrifty/uv-venv
UV ?= $(shell command -v uv >/dev/null 2>&1 && echo uv \
	|| { python3 -m uv --version >/dev/null 2>&1 && echo "python3 -m uv"; } \
	|| echo "$(UV_VENV)/bin/uv")
export UV_LINK_MODE ?= copy
RUN = $(UV) run --frozen --all-extras
K8S_VERSION ?= v1.36.3

.PHONY: help install system-deps test-deps k8s-tools demo test test-unit test-integration test-e2e lint fmt crds cluster-up cluster-down bench

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

system-deps: ## install uv and redis-server when missing
	@./scripts/system-deps.sh

test-deps: ## also chromium, for the headless dashboard test
	@./scripts/system-deps.sh --test

install: system-deps ## create the uv environment from the lock file
	@$(UV) sync --frozen --all-extras --group dev

demo: install ## run the simulator + gateway on embedded defaults and replay a workload
	@$(RUN) python -m thrifty_cli.demo

lint: install ## ruff, mypy strict, import-linter, CRD drift
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy core gateway operator distill cli tests bench
	$(RUN) lint-imports
	$(RUN) thrifty crds generate --check

fmt: install ## apply ruff formatting and fixes
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

crds: install ## regenerate crds/ from the API types
	$(RUN) thrifty crds generate

test: lint test-deps k8s-tools ## lint, then unit, integration and e2e tests
	$(RUN) pytest tests

test-unit: install
	$(RUN) pytest tests/unit

test-integration: install
	$(RUN) pytest tests/integration

test-e2e: install test-deps k8s-tools
	$(RUN) pytest tests/e2e

k8s-tools: ## build (or reuse) the pinned control-plane binaries
	@K8S_VERSION=$(K8S_VERSION) ./scripts/k8s/build.sh

cluster-up: k8s-tools ## start (or reuse) the local test control plane
	@K8S_VERSION=$(K8S_VERSION) ./scripts/k8s/cluster.sh up

cluster-down: ## stop the local test control plane
	@K8S_VERSION=$(K8S_VERSION) ./scripts/k8s/cluster.sh down

bench: install ## run the benchmarks (JSON on stdout); see bench/RESULTS.md
	$(RUN) python -m bench
