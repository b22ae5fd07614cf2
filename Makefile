# Every target creates .venv itself, so `make test` and `make demo` work on a
# fresh machine with nothing but python3 (3.11+).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check orchestrator tests bench
	$(VENV)/bin/ruff format --check orchestrator tests bench
	$(VENV)/bin/mypy

demo: $(STAMP)
	$(VENV)/bin/orchestrator demo

bench: $(STAMP)
	$(PY) -m bench.all

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
