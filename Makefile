# The two commands of the quick start are `make demo` and `make test`; each installs what it needs first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-unit test-integration test-deploy test-faults lint typecheck train clean

$(STAMP): pyproject.toml requirements/assets.txt requirements/debian.txt scripts/bootstrap.sh
	./scripts/bootstrap.sh

install: $(STAMP)

## The service's main job on the embedded default: real broker, real Triton, real data replayed through it.
demo: $(STAMP)
	$(PY) -m streams demo

## Unit, integration (real broker and Triton) and deployment-file tests.
test: $(STAMP)
	$(PY) -m pytest

## One tier at a time: no network; the real broker, Triton and Prometheus (about 5 minutes);
## the deployment files (a few checks start a throwaway Triton).
test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

test-deploy: $(STAMP)
	$(PY) -m pytest tests/deploy

## Not part of `make test`: Triton killed, stalled and its Python stub killed, the broker stalled, workers
## joining, leaving and killed, each under a steady stream; prints what was lost, wrongly dead-lettered
## and repeated, and the time back to zero lag (about 30 minutes on 2 cores).
test-faults: $(STAMP)
	$(PY) -m pytest tests/faults -m faults

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
