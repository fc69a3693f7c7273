PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint fmt migrate worker clean bench bench-smoke locust faults faults-short lock

install: $(STAMP)

# Exactly the versions in requirements-dev.lock, each checked against its hashes; then this
# project and its client, with nothing more (a changed lock makes a fresh venv).
$(STAMP): requirements-dev.lock pyproject.toml clients/python/pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . -e clients/python
	$(PY) -m pip check
	touch $(STAMP)

## Serve the API with its writers on AUDIT_HOST:AUDIT_PORT (embedded Postgres/Redis when no URLs are set);
## DEMO=1 loads a small demo set for organization "demo" once.
run: install
	$(PY) -m app dev $(if $(DEMO),--demo)

## The whole suite against real PostgreSQL and Redis.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

## Fault injection on throwaway PostgreSQL and Redis: every scenario at full length (loadtests/faults).
faults: install
	$(PY) -m loadtests.faults

## The short version of every scenario (the test suite runs a few of them).
faults-short: install
	$(PY) -m loadtests.faults --short

lint: install
	$(VENV)/bin/ruff check app tests loadtests alembic clients
	$(VENV)/bin/ruff format --check app tests loadtests alembic clients
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: install
	$(VENV)/bin/ruff check --fix app tests loadtests alembic clients
	$(VENV)/bin/ruff format app tests loadtests alembic clients

migrate: install
	$(PY) -m app migrate

worker: install
	$(PY) -m app worker

## The write-side benchmark (README, Benchmarks): storage limit, bulk ramp and hold, single
## events, steady load, accounting and verification; BENCH_ARGS="--runs 1 --hold 30" etc.
bench: install
	$(PY) -m loadtests.bench $(BENCH_ARGS)

## The same in about 20 s, Python generators only: checks accounting and verification, not speed.
bench-smoke: install
	$(PY) -m loadtests.bench --smoke $(BENCH_ARGS)

AUDIT_URL ?= http://127.0.0.1:8000
LOCUST_TIME ?= 1m
LOCUST_USERS ?= 20
LOCUST_SPAWN_RATE ?= 5

## Locust scenarios, headless, against AUDIT_URL (default: `make run`'s server) with AUDIT_KEY
## (default: the dev key); CSV and HTML report in locust-report/.
locust: install
	@mkdir -p locust-report
	AUDIT_KEY="$${AUDIT_KEY:-$$(cat .data/dev-api-key 2>/dev/null)}" $(VENV)/bin/locust \
	  -f loadtests/locustfile.py --host $(AUDIT_URL) --headless -u $(LOCUST_USERS) \
	  -r $(LOCUST_SPAWN_RATE) -t $(LOCUST_TIME) --csv locust-report/locust \
	  --html locust-report/report.html

## Pin the dependencies again, with hashes, from pyproject.toml's ranges (keeping the pins
## that still satisfy them; LOCK_ARGS=--upgrade for the newest): requirements.lock holds what
## the service runs on (the container image), requirements-dev.lock that and the extras.
LOCK_VENV := .venv-lock
LOCK_COMPILE = $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras \
  --no-emit-index-url --no-emit-find-links --no-emit-trusted-host $(LOCK_ARGS)
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet pip-tools
	$(LOCK_COMPILE) --output-file=requirements.lock pyproject.toml
	$(LOCK_COMPILE) --allow-unsafe --all-build-deps --extra embedded --extra test --extra lint \
	  --extra bench --output-file=requirements-dev.lock pyproject.toml clients/python/pyproject.toml

clean:
	rm -rf $(VENV) $(LOCK_VENV) .mypy_cache .ruff_cache .pytest_cache
