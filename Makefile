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
lint: venv ## ruff, mypy (strict), import contracts, CRDs and gRPC modules in step with their sources
	$(BIN)/ruff check .
	$(BIN)/ruff format --check operator tests bench scripts images
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/orchard crds --check
	$(BIN)/orchard crds --check --output manifests/crds
	$(BIN)/orchard operator --check-rbac manifests/rbac/role.yaml
	$(BIN)/python scripts/protos.py --check

.PHONY: protos
protos: venv ## regenerate the model server's gRPC modules from serving/proto/*.proto
	$(BIN)/python scripts/protos.py

.PHONY: crds
crds: venv ## regenerate crds/ from the models and the RBAC role from the handlers
	$(BIN)/orchard crds --output crds
	$(BIN)/orchard crds --output manifests/crds
	$(BIN)/orchard operator --write-rbac manifests/rbac/role.yaml

.PHONY: test-unit
test-unit: venv ## unit tests: no cluster, seconds
	$(BIN)/pytest tests/unit -q

# --- Local cluster (tests/cluster/README.md) ---------------------------------

HARNESS := $(BIN)/python -m tests.cluster.harness
BUILD_IMAGES := $(BIN)/python -m images.build

.PHONY: deps
deps: ## install the Debian packages the cluster and image builds need (root; fast when present)
	tests/cluster/deps.sh

.PHONY: cluster-build
cluster-build: ## build etcd, the Kubernetes components and CoreDNS from Go sources into $ORCHARD_CACHE (once)
	tests/cluster/build.sh

.PHONY: argocd
argocd: ## build the argocd CLI from its Go module into $ORCHARD_CACHE (once); the GitOps tests use it
	tests/cluster/build.sh argocd

.PHONY: cluster-up
cluster-up: venv deps ## start the local cluster (LEVEL=node default, LEVEL=api); writes .cluster/kubeconfig
	$(HARNESS) up --level $(LEVEL)

.PHONY: cluster-down
cluster-down: venv ## stop the local cluster; leaves no process, mount, iptables chain or bridge
	$(HARNESS) down

.PHONY: cluster-status
cluster-status: venv ## show which cluster components run
	$(HARNESS) status

.PHONY: images
images: venv deps ## build every images/*/Dockerfile as localhost/orchard/<dir>:dev and load it into the node
	$(BUILD_IMAGES)

.PHONY: kind-up
kind-up: venv ## (with Docker, not on this machine) a kind cluster with the images loaded
	kind create cluster --name orchard --kubeconfig .cluster/kind.kubeconfig
	$(BUILD_IMAGES) --no-import
	for archive in .cluster/images/*.tar; do kind load image-archive "$$archive" --name orchard; done
	@echo "export KUBECONFIG=$(CURDIR)/.cluster/kind.kubeconfig  # then make test-e2e"

.PHONY: test-api
test-api: venv ## api tests on etcd + kube-apiserver (or the cluster KUBECONFIG names)
	$(HARNESS) up --level api --unless-external
	$(BIN)/pytest tests/api -q -m api

.PHONY: test-e2e
test-e2e: venv ## e2e tests on the node level with every image built and loaded
	$(HARNESS) up --level node --unless-external
	$(BUILD_IMAGES) --unless-external
	# ~15 min when all is well; past 40 the tests left are not started, so a broken run
	# still ends in its report of what failed and why
	$(BIN)/pytest tests/e2e tests/api -q -m e2e --session-timeout=2400

# --- The two commands of the README -------------------------------------------

.PHONY: test
test: venv deps ## everything on a fresh machine: lint, unit, api and e2e tests (starts the local cluster)
	$(MAKE) lint
	# both Go builds at once (a cache hit when built): their module downloads overlap
	$(MAKE) -j2 --output-sync=target argocd cluster-build
	$(MAKE) test-unit
	$(MAKE) test-api
	$(MAKE) test-e2e

.PHONY: demo
demo: venv deps argocd ## the main job end to end: local cluster, Orchard, a model trained, served, rolled out
	$(HARNESS) up --level node --unless-external
	$(BUILD_IMAGES) --unless-external
	KUBECONFIG=$${KUBECONFIG:-$(CURDIR)/.cluster/kubeconfig} $(BIN)/python scripts/demo.py

# --- Benchmarks ---------------------------------------------------------------

.PHONY: bench-serving
bench-serving: venv ## Orchard's server vs KServe and MLServer (envs in bench/envs; QUICK=1 for a smoke run)
	$(BIN)/python bench/serving.py $(if $(QUICK),--quick)

.PHONY: bench-dataset
bench-dataset: venv ## the trainer's peak memory reading a CSV, against pandas' read_csv (MB=280)
	$(BIN)/python bench/dataset_memory.py --megabytes $(or $(MB),280)

.PHONY: bench-operator
bench-operator: venv ## the operator under OBJECTS (5000) objects, at once or RATE a second, on the api level: latency, RSS, CPU, 429s
	$(HARNESS) up --level api --unless-external
	$(BIN)/python bench/operator_load.py --objects $(or $(OBJECTS),5000) --rate $(or $(RATE),0)

.PHONY: bench-soak
bench-soak: venv ## the model server for MINUTES (10) at LOAD (0.8) of its capacity, every request collected: RSS, p99, errors each minute
	$(BIN)/python bench/serving_soak.py --minutes $(or $(MINUTES),10) --load $(or $(LOAD),0.8)

.PHONY: bench-queue
bench-queue: venv deps ## TRAININGS (500) TrainingJobs at once on the node level: all end, the queue holds, API requests a second
	$(HARNESS) up --level node --unless-external
	$(BUILD_IMAGES) trainer server --unless-external
	$(BIN)/python bench/training_queue.py --trainings $(or $(TRAININGS),500)

.PHONY: bench-training
bench-training: venv ## kubectl apply -> ModelVersion Ready beside a local `orchard train` (needs the node level)
	$(BIN)/python bench/training.py $(if $(ROUNDS),--rounds $(ROUNDS))
