"""`make test` runs the suite on three pytest-xdist workers. The machine's PostgreSQL has
100 connections, and three workers' stacks at once would take them all (98 were seen, and
tests failed on "too many clients"); a neighbour's stack needs some too. So the first
worker (and a run without workers) uses the machine's server, and each other worker starts
a PostgreSQL cluster of its own for its databases (initdb'd as the ``postgres`` user, on a
port of its own: tests/pg_cluster.py) and removes it at the end. TEST_DATABASE_URL, when
set, names the server for every worker instead."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.pg_cluster import Cluster

_OWN: list[Cluster] = []


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if worker == "gw0" or "TEST_DATABASE_URL" in os.environ:
        return
    cluster = Cluster(Path(tempfile.mkdtemp(prefix=f"cardinal-tests-{worker}-")))
    cluster.__enter__()
    _OWN.append(cluster)
    # Read by tests/databases.py, imported after this (at collection): every database this
    # worker creates, and every stack over one, is on this cluster.
    os.environ["TEST_DATABASE_URL"] = cluster.url


def pytest_unconfigure(config: pytest.Config) -> None:
    while _OWN:
        _OWN.pop().__exit__(None, None, None)
