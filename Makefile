# keysvc — `make run` starts the dev service, `make test` runs the whole suite, `make unit` only the tests that
# start nothing (no process, server or moto). All build .venv from nothing (test and unit .venv-tools too).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Linters for the Dockerfile and the helm chart live in their own venv: checkov pins many packages that
# would otherwise constrain the service's own dependencies.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
# node `jose`: an independent verifier of our tokens, in another language
NODE_STAMP := tests/node/node_modules/.installed

.PHONY: run test lint unit bench tools clean image

# The image: keysvc:$(VERSION), labelled with the version and the git revision it was built from.
IMAGE ?= keysvc
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DOCKER ?= docker

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/keysvc serve --dev

lint: $(STAMP)
	$(BIN)/ruff check keysvc tests bench
	$(BIN)/mypy

test: $(STAMP) $(TOOLS_STAMP) $(NODE_STAMP) lint
	sh tests/tools/ensure_promtool.sh
	sh tests/tools/ensure_chromium.sh
	sh tests/tools/ensure_postgres.sh
	$(BIN)/python -m pytest -q

# the chart's unit tests render it with the tools venv's Python (a pure renderer, no cluster): build it first
unit: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/python -m pytest -q -m unit

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

image:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make image: no '$(DOCKER)' command here; build where a Docker engine runs (a workstation or a CI runner with Docker)" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make image: '$(DOCKER)' is installed but no Docker engine answers (daemon not running, or DOCKER_HOST unreachable)" >&2; exit 1; }
	$(DOCKER) build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE):$(VERSION) .

clean:
	rm -rf $(VENV) .keysvc-dev .pytest_cache .mypy_cache

$(TOOLS_STAMP): requirements-tools.txt
	test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --upgrade pip
	$(TOOLS)/bin/python -m pip install --quiet -r requirements-tools.txt
	touch $(TOOLS_STAMP)
tools: $(TOOLS_STAMP)

$(NODE_STAMP): tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --silent
	touch $(NODE_STAMP)
