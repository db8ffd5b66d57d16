# usage-consumer: every target sets up what it needs from a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.deps-stamp
PYTEST_FLAGS ?= -q
TEST_WORKERS ?= 2

.PHONY: help setup kafka-jars lint typecheck unit integration faults chart-tools chart-test image-test lock test \
	demo bench bench-peers clean

help:
	@echo "make demo   - run the pipeline end to end on a local broker and emulators"
	@echo "make test   - set up everything, then ruff, mypy, unit and integration tests"
	@echo "make bench  - throughput, CPU, memory and latency against the ceilings and a naive baseline"
	@echo "make image-test - build the image with buildah and smoke-run it (root, ~1.5 min)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

setup: $(STAMP) kafka-jars

kafka-jars: $(STAMP)
	@$(PY) scripts/local_kafka.py fetch >/dev/null

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit -n $(TEST_WORKERS) $(PYTEST_FLAGS)

integration: setup
	$(BIN)/pytest tests/integration -n $(TEST_WORKERS) $(PYTEST_FLAGS)

faults: setup
	$(BIN)/pytest tests/faults $(PYTEST_FLAGS)

chart-tools: $(STAMP)
	VENV=$(VENV) scripts/dev-tools

chart-test: chart-tools
	$(BIN)/pytest tests/chart $(PYTEST_FLAGS)

image-test: setup
	VENV=$(VENV) scripts/image-test

lock: $(STAMP)
	VENV=$(VENV) scripts/lock-requirements

test: setup lint typecheck unit chart-test integration faults

demo: setup
	$(PY) scripts/demo.py

# The peers of `make bench` (Quix Streams, sentry-arroyo) each get a virtual environment of their own,
# .venv-peers/<peer>, from bench/requirements-peers-<peer>.txt (bench/run.py also builds them on first use).
bench-peers: $(STAMP)
	$(PY) bench/peers/venvs.py

bench: setup bench-peers
	$(PY) bench/run.py $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) .venv-peers .mypy_cache .ruff_cache .pytest_cache .hypothesis .local
