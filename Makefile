# The two commands: `make demo` and `make test`. Both install what is missing first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test bootstrap lint format model bench clean

# The demo needs only the runtime (no browser, no test tools on a Pi).
demo:
	@VENV=$(VENV) scripts/bootstrap.sh --runtime
	$(PY) -m devstack.demo

test: bootstrap
	$(PY) -m pytest

bootstrap:
	@VENV=$(VENV) scripts/bootstrap.sh

lint: bootstrap
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: bootstrap
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Train a model on fresh simulator data (what `make demo` does when none exists).
model: bootstrap
	$(PY) -m devstack.demo --train-only

# Benchmarks print figures (see README "Performance"); ~6 min on 2 cores.
bench: bootstrap
	$(PY) -m bench.bench_gateway

clean:
	rm -rf var .pytest_cache .ruff_cache
