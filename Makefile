# The two commands of the quick start are `make demo` and `make test`; each installs what it needs first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint typecheck train clean

$(STAMP): pyproject.toml requirements/assets.txt requirements/debian.txt scripts/bootstrap.sh
	./scripts/bootstrap.sh

install: $(STAMP)

## The service's main job on the embedded default: real broker, real Triton, real data replayed through it.
demo: $(STAMP)
	$(PY) -m streams demo

## Unit, integration (real broker and Triton) and deployment-file tests.
test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
