"""The tests' own PostgreSQL clusters and RabbitMQ nodes: a slow boot is waited for, and one
that fails leaves no server behind (raised from ``__enter__``, no ``__exit__`` stops it, and
a leaked server loads the machine for the rest of the run)."""

from __future__ import annotations

import subprocess
import tempfile
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
