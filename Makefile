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

# Most tests wait on processes (a stack, a PostgreSQL cluster or a RabbitMQ node of their
# own), so the suite runs on three workers (pytest-xdist), each test file on one worker, in
# the order of a file's tests; each worker has its own database and RabbitMQ namespace.
# The coverage of the three is reported together.
test: $(STAMP) services tools lint typecheck
	@rm -f .coverage .coverage.*
	$(BIN)/pytest -p no:cacheprovider -n 3 --dist loadfile --cov --cov-report=term \
	  --durations=25 -m "not chaos_full" tests

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
	@command -v promtool >/dev/null || test -x .cardinal/tools/prometheus/usr/bin/promtool || { \
		echo "unpacking promtool (Debian package prometheus, not installed: for the alert rules' tests)"; \
		mkdir -p .cardinal/tools && cd .cardinal/tools && \
		{ apt-get download -q prometheus >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null && apt-get download -q prometheus >/dev/null; }; } && \
		dpkg -x prometheus_*.deb prometheus && rm -f prometheus_*.deb; }

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage
