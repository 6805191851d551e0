# Cardinal Vote. The two commands a newcomer needs: `make run` and `make test`.
#   make check         lint, format, types and the unit tests: the fast loop (under a minute)
#   make integration   tests against the real PostgreSQL and RabbitMQ
#   make e2e           processes started as an operator would (slow)
#   make chaos         every fault scenario under load, and the Reliability table (minutes)
#   make test          everything (a subset of the chaos suite), with coverage: what CI runs
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed with the tests' tools (.[dev]); the runtime alone, what `make run` needs.
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-runtime

.PHONY: run test check integration e2e chaos lint typecheck services tools clean

run: $(RUN_STAMP)
	$(BIN)/cardinal serve

# The tests that need the machine's services mostly wait on processes and run one at a
# time, in order (they share its PostgreSQL's 100 connections and outages' timing). Beside
# them, in a second pytest: the tests that break a PostgreSQL cluster or a RabbitMQ node of
# their own and use none of the machine's connections (APART), then the unit tests (pure,
# CPU-bound: about 2 minutes with coverage; test_cli starts `cardinal` against PostgreSQL,
# so it runs with the services' tests). The second run's output follows the first's; the
# coverage of both is reported together.
APART := tests/chaos tests/e2e/test_hangup.py tests/integration/test_shutdown.py \
  tests/integration/test_store_outage.py tests/integration/test_store_outage_log.py \
  tests/integration/test_test_nodes.py
UNIT_ONLY := --ignore=tests/unit/test_cli.py tests/unit
SERVICES := tests/e2e tests/integration tests/unit/test_cli.py

test: $(STAMP) services tools lint typecheck
	@rm -f .coverage .coverage.unit .coverage.services
	@mkdir -p .cardinal; COVERAGE_FILE=.coverage.unit $(BIN)/pytest -q -p no:cacheprovider \
	  --cov --cov-report= --durations=10 -m "not chaos_full" $(APART) $(UNIT_ONLY) \
	  > .cardinal/unit-tests.log 2>&1 & unit=$$!; \
	COVERAGE_FILE=.coverage.services $(BIN)/pytest --cov --cov-report= --durations=20 \
	  -m "not chaos_full" $(addprefix --ignore=,$(APART)) $(SERVICES); services=$$?; \
	wait $$unit; units=$$?; echo "--- apart and unit tests (beside the above) ---"; \
	cat .cardinal/unit-tests.log; \
	$(BIN)/coverage combine -q .coverage.unit .coverage.services && $(BIN)/coverage report; \
	test $$services -eq 0 && test $$units -eq 0

check: $(STAMP) lint typecheck
	CARDINAL_EXAMPLES=0.2 $(BIN)/pytest -q tests/unit

integration: $(STAMP) services
	$(BIN)/pytest tests/integration

e2e: $(STAMP) services tools
	$(BIN)/pytest tests/e2e

chaos: $(STAMP) services
	rm -f .cardinal/chaos/results.jsonl
	$(BIN)/pytest -m chaos tests/chaos; status=$$?; \
	$(BIN)/python -m tests.chaos.table .cardinal/chaos/results.jsonl; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# `make run` installs the runtime only (a newcomer's first minute); the other targets
# install the tests' tools too, which include it (so `make run` after them installs nothing,
# and neither does it in a .venv that they installed before this stamp existed).
$(RUN_STAMP): pyproject.toml
	@if test $(STAMP) -nt pyproject.toml; then touch $(RUN_STAMP); else \
	  echo "installing Cardinal Vote's dependencies into $(VENV) (first run only, about a minute)..." && \
	  { test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); } && \
	  $(BIN)/python -m pip install --quiet --upgrade pip && \
	  $(BIN)/python -m pip install --quiet -e . && \
	  touch $(RUN_STAMP); fi

$(STAMP): pyproject.toml
	@echo "installing Cardinal Vote's dependencies and the tests' tools into $(VENV) (first run only, a few minutes)..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

# Start the local PostgreSQL and RabbitMQ where they are installed but stopped.
services:
	@if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		echo "starting PostgreSQL"; \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -n1) main start; \
	fi
	@if command -v rabbitmq-server >/dev/null && ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then \
		echo "starting RabbitMQ"; rabbitmq-server -detached; \
		for i in $$(seq 60); do rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break; sleep 1; done; \
	fi

# Debian packages the tests use: docker-compose validates the compose file (no engine here).
tools:
	@command -v docker-compose >/dev/null || { \
		echo "installing docker-compose (Debian package)"; \
		apt-get update -q >/dev/null && apt-get install -y -q docker-compose >/dev/null; }
	@command -v chromium >/dev/null || { \
		echo "installing chromium (Debian package, for the dashboards' browser tests)"; \
		apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage
