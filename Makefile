# The two commands a newcomer needs: `make up` and `make test`. Both install what is missing.
SHELL := /bin/bash
# Python versions the project runs on (apache-flink 2.2.1 ships wheels for 3.11 and 3.12 only).
SUPPORTED := 3.11 3.12
# PYTHON=... picks the interpreter; otherwise the first of these that runs and is supported.
CANDIDATES := $(or $(PYTHON),python3.12 python3.11 python3)
VENV ?= .venv
IOT := $(VENV)/bin/iot
PYTEST := $(VENV)/bin/pytest
STAMP := $(VENV)/.installed

.PHONY: python up up-replicated down status test test-unit test-integration test-e2e test-replicated bench lint venv clean

venv: $(STAMP)

# Exit 0 when the interpreter running it is a supported version.
SUPPORTED_CHECK := import sys; sys.exit("%d.%d" % sys.version_info[:2] not in "$(SUPPORTED)".split())
# Shell: the first supported interpreter of CANDIDATES on stdout, or a clear error and exit 1.
FIND_PYTHON := for py in $(CANDIDATES); do \
	    if $$py -c '$(SUPPORTED_CHECK)' 2>/dev/null; then echo $$py; exit 0; fi; \
	  done; \
	  echo "No supported Python found (tried: $(CANDIDATES)). Supported: Python $(SUPPORTED);" \
	    "install one (e.g. apt-get install python3.11-venv) or run make PYTHON=/path/to/python3.12 ..." >&2; \
	  exit 1

# The interpreter a new venv would be built with.
python:
	@$(FIND_PYTHON)

# Reinstall when the dependency list changes; editable, so code changes need no reinstall.
# A venv of an unsupported Python (built before, or by hand) is rebuilt.
$(STAMP): pyproject.toml
	@if test -x $(VENV)/bin/python && ! $(VENV)/bin/python -c '$(SUPPORTED_CHECK)' 2>/dev/null; then \
	  echo "$(VENV) runs Python $$($(VENV)/bin/python -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo '?'), which this project does not support ($(SUPPORTED)); rebuilding it"; \
	  rm -rf $(VENV); \
	fi
	@if ! test -x $(VENV)/bin/python; then \
	  found=$$($(FIND_PYTHON)) || exit 1; \
	  echo "creating $(VENV) with $$found ($$($$found -c 'import sys; print(sys.version.split()[0])'))"; \
	  $$found -m venv $(VENV) || exit 1; \
	fi
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

up: $(STAMP)
	$(IOT) up

# Three Kafka brokers, three Cassandra nodes, two task managers, two bridges and writers, with
# authentication between services (docs/replicated.md); `make down` stops it like the default.
up-replicated: $(STAMP)
	$(IOT) up --profile replicated

down: $(STAMP)
	$(IOT) down

status: $(STAMP)
	$(IOT) status

# Runs a command and prints how long it took, also when it fails.
timed = SECONDS=0; $(2); rc=$$?; printf '%s: %dm%02ds (exit %d)\n' '$(1)' $$((SECONDS / 60)) $$((SECONDS % 60)) $$rc; exit $$rc

# Unit tests first (fast, no services); then the tiers that start real services themselves.
test: $(STAMP)
	@$(call timed,unit tier,$(PYTEST) tests/unit -q)
	@$(call timed,integration + e2e tiers,$(PYTEST) tests/integration tests/e2e -q)

test-unit: $(STAMP)
	@$(call timed,unit tier,$(PYTEST) tests/unit -q)

test-integration: $(STAMP)
	$(PYTEST) tests/integration -q

test-e2e: $(STAMP)
	$(PYTEST) tests/e2e -q

# The replicated profile's tests (docs/replicated.md): they stop the default profile, start the
# replicated one, kill one node at a time, and start the default profile again. REPLICATED_SELECT
# narrows them (pytest -k).
REPLICATED_SELECT ?=
test-replicated: $(STAMP)
	@$(call timed,replicated tier,$(PYTEST) tests/replicated -q -m replicated $(REPLICATED_SELECT))

bench: $(STAMP)
	$(VENV)/bin/python -m bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
