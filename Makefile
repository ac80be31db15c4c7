# Orchard: every entry point a person or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LEVEL ?= node
export ORCHARD_CACHE ?= $(HOME)/.cache/orchard

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# --- Python environment -------------------------------------------------------

$(BIN)/orchard: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[operator,train,serve,dev]'
	touch $@

.PHONY: venv
venv: $(BIN)/orchard ## create .venv with every extra installed

# --- Checks -------------------------------------------------------------------

.PHONY: lint
lint: venv ## ruff, mypy (strict), import contracts, CRDs in step with the models
	$(BIN)/ruff check .
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/orchard crds --check
	$(BIN)/orchard crds --check --output manifests/crds
	$(BIN)/orchard operator --check-rbac manifests/rbac/role.yaml

.PHONY: crds
crds: venv ## regenerate crds/ from the models and the RBAC role from the handlers
	$(BIN)/orchard crds --output crds
	$(BIN)/orchard crds --output manifests/crds
	$(BIN)/orchard operator --write-rbac manifests/rbac/role.yaml

.PHONY: test-unit
test-unit: venv ## unit tests: no cluster, seconds
	$(BIN)/pytest tests/unit -q

# --- Benchmarks ---------------------------------------------------------------

.PHONY: bench-serving
bench-serving: venv ## Orchard's server vs KServe and MLServer (envs in bench/envs; QUICK=1 for a smoke run)
	$(BIN)/python bench/serving.py $(if $(QUICK),--quick)

.PHONY: bench-training
bench-training: venv ## kubectl apply -> ModelVersion Ready beside a local `orchard train` (needs the node level)
	$(BIN)/python bench/training.py $(if $(ROUNDS),--rounds $(ROUNDS))
