"""The tests' own PostgreSQL clusters and RabbitMQ nodes: a slow boot is waited for, and one
that fails leaves no server behind (raised from ``__enter__``, no ``__exit__`` stops it, and
a leaked server loads the machine for the rest of the run)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.pg_cluster import Cluster
from tests.rabbit_node import RabbitNode


def _running_from(folder: Path) -> list[psutil.Process]:
    """The processes whose command line names ``folder`` (or a path in it)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(folder) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def _running_as(node: RabbitNode) -> list[psutil.Process]:
    """The processes of ``node`` (started with its environment), the shared epmd aside."""
    found = []
    for process in psutil.process_iter(["name"]):
        try:
            ours = process.environ().get("RABBITMQ_NODENAME") == node.name
        except psutil.Error:
            continue
        if ours and process.info["name"] != "epmd":
            found.append(process)
    return found


def test_a_cluster_that_does_not_start_in_time_is_not_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Cluster, "START_TIMEOUT", 0, raising=False)  # pg_ctl gives up at once
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="cardinal-slow-pg-")))
    try:
        with pytest.raises(subprocess.CalledProcessError), cluster:
            pass
        assert _running_from(cluster.data) == []
    finally:
        for process in _running_from(cluster.data):  # (what the old code left)
            process.kill()
        subprocess.run(["rm", "-rf", str(cluster.root)], check=False)


def test_a_rabbit_node_that_does_not_start_in_time_is_not_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RabbitNode, "BOOT_TIMEOUT", 0, raising=False)
    node = RabbitNode(Path(tempfile.mkdtemp(prefix="cardinal-slow-mq-")))
    try:
        with pytest.raises(RuntimeError), node:
            pass
        assert _running_as(node) == []
    finally:
        for process in _running_as(node):
            process.kill()
        subprocess.run(["rm", "-rf", str(node.root)], check=False)


def test_a_rabbit_node_slower_than_one_await_startup_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first ``rabbitmqctl await_startup`` runs out of time, as on a loaded machine:
    the node is asked again until BOOT_TIMEOUT, not given up on."""
    real = RabbitNode._ctl
    timed_out: list[str] = []

    def slow(self: RabbitNode, *args: str, timeout: float) -> Any:
        if args[0] == "await_startup" and not timed_out:
            timed_out.append(args[0])
            raise subprocess.TimeoutExpired([args[0]], timeout)
        return real(self, *args, timeout=timeout)

    monkeypatch.setattr(RabbitNode, "_ctl", slow)
    node = RabbitNode(Path(tempfile.mkdtemp(prefix="cardinal-slow-mq-")))
    try:
        with node:
            assert timed_out == ["await_startup"]
            assert real(node, "status", timeout=60).returncode == 0
        assert _running_as(node) == []
    finally:
        for process in _running_as(node):  # (what the old code left)
            process.kill()


def test_a_worker_s_own_cluster_is_what_the_tests_use_and_is_removed_if_it_is_killed() -> None:
    """A pytest-xdist worker other than the first starts a cluster of its own as
    tests/conftest.py is imported, before tests/databases.py reads the server (a conftest
    below imports it); a worker killed before it stops the cluster leaves none behind (its
    reaper removes it: pg_ctl's server outlives the worker)."""
    script = (
        "import os, sys\n"
        "import tests.conftest\n"
        "import tests.databases as d\n"
        "print(d.SERVER_URL, os.environ['TEST_DATABASE_URL'], flush=True)\n"
        "d.create_database()\n"  # the cluster answers
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"  # until killed
    )
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    env["PYTEST_XDIST_WORKER"] = "gw7"
    with subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[2],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as worker:
        try:
            assert worker.stdout is not None
            server, named = worker.stdout.readline().split()
            assert worker.stdout.readline().strip() == "ready"
            assert server == named
            assert ":5432/" not in server  # not the machine's server
            roots = [
                p for p in Path(tempfile.gettempdir()).glob("cardinal-tests-gw7-*") if p.is_dir()
            ]
            assert len(roots) == 1, roots
            assert _running_from(roots[0])  # its server
        finally:
            worker.kill()
    deadline = time.monotonic() + 60
    while roots[0].exists() or _running_from(roots[0] / "data"):
        assert time.monotonic() < deadline, "the killed worker's cluster was left behind"
        time.sleep(0.2)
