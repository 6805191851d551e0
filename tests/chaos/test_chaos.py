"""The chaos suite: `cardinal serve` under steady ballots while its dependencies and its own
processes fail, on a PostgreSQL cluster and a RabbitMQ node of the suite's own.

`make chaos` runs every scenario and prints the table (scenario, 2xx, counted, lost,
double, slowest answer during the fault, recovery); `make test` runs the scenarios not
marked ``chaos_full``.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from infra.bench.stack import SERVE, Stack
from tests.chaos.harness import TOKENS, SteadyLoad, judge, open_elections
from tests.pg_cluster import Cluster
from tests.rabbit_node import RabbitNode

pytestmark = [pytest.mark.chaos, pytest.mark.slow]
full = pytest.mark.chaos_full
WARM_UP = 3.0
AFTER = 7.0
OUTAGE = 15.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(Path(tempfile.mkdtemp(prefix="cardinal-chaos-pg-"))) as own:
        yield own


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    with RabbitNode(Path(tempfile.mkdtemp(prefix="cardinal-chaos-mq-"))) as own:
        yield own


@pytest.fixture
def stack(cluster: Cluster, node: RabbitNode) -> Iterator[Stack]:
    with Stack(
        cluster.url,
        Path(tempfile.mkdtemp(prefix="cardinal-chaos-")),
        tokens=TOKENS,
        commands=SERVE,
        amqp_url=node.url,
        prefix="chaos",
        env={"LOG_LEVEL": "WARNING"},
    ) as running:
        yield running
    # A scenario that failed half-way may have left a dependency stopped.
    if not cluster.running():
        cluster.start()


def _children(stack: Stack) -> list[psutil.Process]:
    return psutil.Process(stack.processes["serve"].pid).children()


def _child(stack: Stack, marker: str) -> psutil.Process:
    return next(c for c in _children(stack) if marker in " ".join(c.cmdline()))


def _run(name: str, stack: Stack, fault: Callable[[], float], *, elections: int = 2) -> None:
    """Steady load; ``fault`` runs in a thread and returns when its dependency is back
    (the time it returns is the fault's end)."""

    async def scenario() -> tuple[SteadyLoad, tuple[float, float]]:
        load = SteadyLoad(stack.port, await open_elections(stack.port, elections))
        running = asyncio.create_task(load.run())
        await asyncio.sleep(WARM_UP)
        started = time.monotonic()
        ended = await asyncio.to_thread(fault)
        await asyncio.sleep(AFTER)
        load.stop()
        await running
        await load.settle()
        return load, (started, ended)

    load, window = asyncio.run(scenario())
    verdict = judge(name, load, stack, window)
    assert not verdict.failures(), (verdict.failures(), verdict)


def _back(wait: Callable[[], None]) -> float:
    wait()
    return time.monotonic()


# -- the store -------------------------------------------------------------------------


def test_postgresql_restart_immediate(stack: Stack, cluster: Cluster) -> None:
    _run(
        "PostgreSQL restart (immediate)", stack, lambda: _back(lambda: cluster.restart("immediate"))
    )


@full
def test_postgresql_restart_fast(stack: Stack, cluster: Cluster) -> None:
    _run("PostgreSQL restart (fast)", stack, lambda: _back(lambda: cluster.restart("fast")))


@full
def test_postgresql_down_for_15_seconds(stack: Stack, cluster: Cluster) -> None:
    def outage() -> float:
        cluster.stop("fast")
        time.sleep(OUTAGE)
        cluster.start()
        return time.monotonic()

    _run("PostgreSQL down 15 s", stack, outage)


# -- the broker ------------------------------------------------------------------------


@full
def test_broker_restart(stack: Stack, node: RabbitNode) -> None:
    _run("RabbitMQ restart", stack, lambda: _back(node.restart))


@full
def test_broker_down_for_15_seconds(stack: Stack, node: RabbitNode) -> None:
    def outage() -> float:
        node.stop()
        time.sleep(OUTAGE)
        node.start()
        return time.monotonic()

    _run("RabbitMQ down 15 s", stack, outage)


# -- our own processes -----------------------------------------------------------------


def test_sigkill_of_an_api_process(stack: Stack) -> None:
    def kill() -> float:
        _child(stack, "api --child").kill()
        return time.monotonic()

    _run("SIGKILL of an API process", stack, kill)


@full
def test_sigkill_of_the_relay_and_projections_process(stack: Stack) -> None:
    def kill() -> float:
        _child(stack, "project --relay").kill()
        return time.monotonic()

    _run("SIGKILL of relay + projections", stack, kill)


@full
def test_sigkill_of_serve_takes_its_children_and_a_new_serve_starts(stack: Stack) -> None:
    def kill() -> float:
        children = _children(stack)
        stack.kill("serve")
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"orphans left serving: {[c.pid for c in alive]}"
        stack.start("serve")
        stack.wait_ready()
        return time.monotonic()

    _run("SIGKILL of serve (then started again)", stack, kill)


@full
def test_sigterm_under_load_answers_every_ballot(stack: Stack) -> None:
    def restart() -> float:
        stack.stop("serve")  # SIGTERM, waits for it
        stack.start("serve")
        stack.wait_ready()
        return time.monotonic()

    _run("SIGTERM of serve under load (then started again)", stack, restart)


@full
def test_sigterm_during_a_store_outage(stack: Stack, cluster: Cluster) -> None:
    def both() -> float:
        cluster.stop("fast")
        time.sleep(2)
        stack.stop("serve")
        cluster.start()
        stack.start("serve")
        stack.wait_ready()
        return time.monotonic()

    _run("SIGTERM of serve during a store outage", stack, both)


@pytest.fixture
def small_disk(node: RabbitNode) -> Iterator[tuple[Stack, Cluster, Path]]:
    """A cluster whose WAL lives on a 48 MiB tmpfs (1 MiB segments), and a stack on it."""
    root = Path(tempfile.mkdtemp(prefix="cardinal-chaos-disk-"))
    root.chmod(0o755)  # the postgres user works below it
    disk = root / "disk"
    disk.mkdir()
    (root / "logs").mkdir()
    mounted = subprocess.run(  # root is needed to mount; CI runs as root
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, f"cannot mount a small disk: {mounted.stderr}"
    shutil.chown(disk, "postgres", "postgres")
    try:
        with (
            Cluster(root / "pg", wal_dir=disk / "pg_wal", wal_segment_mb=1) as cluster,
            Stack(
                cluster.url,
                root / "logs",
                tokens=TOKENS,
                commands=SERVE,
                amqp_url=node.url,
                prefix="chaos",
                env={"LOG_LEVEL": "WARNING"},
            ) as stack,
        ):
            yield stack, cluster, disk
            if not cluster.running():
                cluster.start()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        shutil.rmtree(root, ignore_errors=True)


@full
def test_a_full_disk(small_disk: tuple[Stack, Cluster, Path]) -> None:
    """The WAL's disk fills: PostgreSQL stops itself. Ballots are refused fast, the log says
    why, and once there is space again (and PostgreSQL is started) the service recovers."""
    stack, cluster, disk = small_disk
    filler = disk / "filler"

    def fill() -> float:
        free = shutil.disk_usage(disk).free
        with filler.open("wb") as out:  # leave 2 MiB: a few seconds of ballots
            out.write(b"\0" * max(0, free - 2 * 1024 * 1024))
        deadline = time.monotonic() + 90
        while cluster.running():
            assert time.monotonic() < deadline, "the WAL never filled"
            time.sleep(0.2)
        time.sleep(3)  # the service keeps refusing meanwhile
        filler.unlink()
        cluster.start()
        return time.monotonic()

    _run("Full disk (WAL), space freed, PostgreSQL started", stack, fill)
    assert "event store unreachable" in stack.log("serve")


def test_a_second_serve_on_the_same_port_refuses_to_start(stack: Stack) -> None:
    """With the same settings (its data folder too), it is refused for the data folder
    first, naming the serve that holds it and its port (the port's own check: test_cli)."""
    second = stack.cardinal("serve", timeout=60)
    assert second.returncode == 2, second.stdout + second.stderr
    said = " ".join((second.stdout + second.stderr).split())
    assert (
        f"another `cardinal serve` (pid {stack.processes['serve'].pid}, port {stack.port}," in said
    )
    assert stack.processes["serve"].poll() is None  # the first one is untouched
