# The two commands a newcomer needs: `make up` and `make test`. Both install what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
IOT := $(VENV)/bin/iot
PYTEST := $(VENV)/bin/pytest
STAMP := $(VENV)/.installed

.PHONY: up down status test test-unit test-integration test-e2e bench lint venv clean

venv: $(STAMP)

# Reinstall when the dependency list changes; editable, so code changes need no reinstall.
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

up: $(STAMP)
	$(IOT) up

down: $(STAMP)
	$(IOT) down

status: $(STAMP)
	$(IOT) status

# Unit tests first (fast, no services); then the tiers that start real services themselves.
test: $(STAMP)
	$(PYTEST) tests/unit -q
	$(PYTEST) tests/integration tests/e2e -q

test-unit: $(STAMP)
	$(PYTEST) tests/unit -q

test-integration: $(STAMP)
	$(PYTEST) tests/integration -q

test-e2e: $(STAMP)
	$(PYTEST) tests/e2e -q

bench: $(STAMP)
	$(VENV)/bin/python -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
