"""`make test` runs the suite on three pytest-xdist workers. The machine's PostgreSQL has
100 connections, and three workers' stacks at once would take them all (98 were seen, and
tests failed on "too many clients"); a neighbour's stack needs some too. So the first
worker (and a run without workers) uses the machine's server, and each other worker starts
a PostgreSQL cluster of its own for its databases (initdb'd as the ``postgres`` user, on a
port of its own: tests/pg_cluster.py) and removes it at the end; a reaper process removes
it too if the worker is interrupted or killed first. TEST_DATABASE_URL, when set, names the
server for every worker instead.

The cluster starts as this file is imported: pytest imports it before any conftest below
it, and those import tests/databases.py, which reads TEST_DATABASE_URL as it is imported
(`pytest -n 2 tests/integration/x.py` imports tests/integration/conftest.py before any
``pytest_configure`` hook runs)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.own_logs import TEST, tagging
from tests.pg_cluster import Cluster, start_reaper

_OWN: list[Cluster] = []


def _own_cluster() -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if worker == "gw0" or "TEST_DATABASE_URL" in os.environ:
        return
    root = Path(tempfile.mkdtemp(prefix=f"cardinal-tests-{worker}-"))
    start_reaper(root)  # first: it also removes what a failed start leaves
    cluster = Cluster(root)
    try:
        cluster.__enter__()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    _OWN.append(cluster)
    os.environ["TEST_DATABASE_URL"] = cluster.url


_own_cluster()


def pytest_unconfigure(config: pytest.Config) -> None:
    while _OWN:
        _OWN.pop().__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _process_state_restored() -> Iterator[None]:
    """What an in-process `cardinal` command (infra.cli.main) changes for the rest of the
    process is put back after each test: PGAPPNAME (it names every later connection of the
    worker after that command, and tests that cut connections by name would cut their own)
    and the SIGTERM and SIGHUP handlers (flaky-test review)."""
    appname = os.environ.get("PGAPPNAME")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    if appname is None:
        os.environ.pop("PGAPPNAME", None)
    else:
        os.environ["PGAPPNAME"] = appname
    for sig, handler in handlers.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


@pytest.fixture(scope="session", autouse=True)
def _records_are_tagged() -> Iterator[None]:
    """Every record carries the id of the test whose code said it (tests/own_logs.py)."""
    make = logging.getLogRecordFactory()
    logging.setLogRecordFactory(tagging(make))
    yield
    logging.setLogRecordFactory(make)


@pytest.fixture(autouse=True)
def _records_name_this_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """TEST is this test's id while it and its function fixtures run: set here, in the
    context pytest-asyncio copies for each async fixture and test; put back after, so the
    session and module fixtures set up for the next test are set up outside any test's."""
    token = TEST.set(request.node.nodeid)
    yield
    TEST.reset(token)
