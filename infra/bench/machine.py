"""Benchmark: what this machine charges for the steps a ballot cannot avoid.

A durable ballot crosses processes several times: the client's request wakes the API, the
writer's statement wakes a PostgreSQL backend and its answer wakes the writer, a commit's
NOTIFY wakes the listeners, the relay's page wakes the broker and the projections. What such
a step costs depends on the machine more than on our code: on a virtual machine, a wake-up
across cores and a round trip to the database cost several times what they cost on bare
metal, and they bound what any code on these cores can reach (docs/performance.md, "Where
the limits are"). This measures them, so that the ballot path's figures can be read against
them:

- a PostgreSQL round trip, ``SELECT 1`` through psycopg and through libpq alone: CPU in
  this process and in the server's backend (when the server runs on this machine), and wall
  time; over TCP, and over the Unix-domain socket where the server listens on one;
- a wake-up between two processes (a byte back and forth over two pipes): wall time and
  this side's CPU per round trip, with the two processes on two cores, then on one;
- the group commit's own statement (``cardinal_append`` through the writer's code, on a
  scratch database): CPU in this process and in the backend per batch of 16 ballots (what a
  group commit costs before any ballot's own rows) and per ballot in batches of 1,000 (the
  bulk path's floor in the log alone: no HTTP, no validation, no projections).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from rich.console import Console
from rich.table import Table

from infra.options import Parser

console = Console()
CHUNKS = 5  # each figure is the median of this many runs
GROUP = 16  # ballots per group commit measured
BULK = 1000  # ballots per group commit of the bulk path
BALLOT_TOPIC = "domain.ballot:Ballot.Cast"
CHILD = """
import os, sys
read_fd, write_fd, rounds = (int(a) for a in sys.argv[1:4])
for _ in range(rounds):
    os.read(read_fd, 1)
    os.write(write_fd, b"x")
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cardinal bench machine", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3000, help="round trips per figure")
    parser.add_argument(
        "--server-url",
        default="postgresql://root@127.0.0.1:5432/postgres",
        help="PostgreSQL server to send the round trips to",
    )
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"bench": "machine", "rounds": args.rounds, "postgresql": {}}
    transport = _transport(args.server_url)
    with console.status(f"PostgreSQL round trips over {transport}"):
        report["postgresql"][transport] = _round_trips(args.server_url, args.rounds)
    socket_url = _socket_url(args.server_url) if transport == "tcp" else None
    if socket_url is not None:
        with console.status("PostgreSQL round trips over the Unix-domain socket"):
            try:
                report["postgresql"]["unix socket"] = _round_trips(socket_url, args.rounds)
            except psycopg.Error as error:  # a socket of another server, say
                console.print(f"[yellow]the Unix-domain socket was not measured: {error}[/]")
    with console.status("group commits of 16 ballots on a scratch database"):
        report["group commit of 16"] = _group_commits(
            args.server_url, max(CHUNKS, args.rounds // 10), GROUP
        )
    with console.status(f"group commits of {BULK:,} ballots on a scratch database"):
        report[f"group commit of {BULK}"] = _group_commits(
            args.server_url, max(CHUNKS * 2, args.rounds // 150), BULK
        )
    report["wakeup"] = {}
    for label, cores in _placements():
        with console.status(f"wake-ups between two processes, {label}"):
            report["wakeup"][label] = _wakeups(args.rounds, cores)
    console.print(_table(report))
    line = json.dumps(report)
    if args.output is not None:
        args.output.write_text(line + "\n")
    print(line)
    return 0


def _round_trips(url: str, rounds: int) -> dict[str, float | None]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        for _ in range(100):  # warm: the connection's first statements cost more
            conn.execute("SELECT 1").fetchall()
        backend = _backend_cpu(conn.info.backend_pid)

        def psycopg_query() -> None:
            conn.execute("SELECT 1").fetchall()

        pgconn = conn.pgconn

        def libpq_query() -> None:
            pgconn.exec_(b"SELECT 1")

        figures: dict[str, float | None] = {}
        for name, query in (("psycopg", psycopg_query), ("libpq", libpq_query)):
            wall, cpu, server = _timed(query, rounds, backend)
            figures[f"{name} wall µs"] = wall
            figures[f"{name} client CPU µs"] = cpu
            figures[f"{name} server CPU µs"] = server
    return figures


def _timed(
    step: Callable[[], None], rounds: int, backend: Callable[[], float | None]
) -> tuple[float, float, float | None]:
    """Per round: the medians over CHUNKS runs (a shared machine's load comes and goes)."""
    walls, cpus, servers = [], [], []
    per_chunk = max(1, rounds // CHUNKS)
    for _ in range(CHUNKS):
        server_before = backend()
        cpu_before, wall_before = time.thread_time(), time.perf_counter()
        for _ in range(per_chunk):
            step()
        walls.append((time.perf_counter() - wall_before) / per_chunk * 1e6)
        cpus.append((time.thread_time() - cpu_before) / per_chunk * 1e6)
        server_after = backend()
        if server_before is not None and server_after is not None:
            servers.append((server_after - server_before) / per_chunk * 1e6)
    server = round(statistics.median(servers), 1) if servers else None
    return round(statistics.median(walls), 1), round(statistics.median(cpus), 1), server


def _group_commits(server_url: str, count: int, size: int) -> dict[str, float | None]:
    """Per batch, over ``count`` batches of ``size`` ballots each."""
    from infra.bench.projection import _create_database, _drop_database
    from infra.store.batch import Append, Progress, commit_batch
    from infra.store.migrations import migrate

    url = _create_database(server_url)
    loop = asyncio.new_event_loop()
    try:
        migrate(url)
        election = uuid.uuid4()
        state = orjson.dumps({"vote": {"choice": "a"}, "ballot_key": "k" * 64})

        def batch() -> list[Append]:
            return [
                Append(
                    [StoredEvent(uuid.uuid4(), 1, BALLOT_TOPIC, state)],
                    loop.create_future(),
                    election,
                )
                for _ in range(size)
            ]

        with psycopg.connect(url, autocommit=True) as conn:
            for _ in range(max(6, 320 // size)):  # warm: prepared on its fifth use
                commit_batch(conn, batch(), Progress(), recognise_own=False)
            batches = [batch() for _ in range(count)]
            pending = iter(batches)

            def step() -> None:
                commit_batch(conn, next(pending), Progress(), recognise_own=False)

            wall, cpu, server = _timed(step, len(batches), _backend_cpu(conn.info.backend_pid))
    finally:
        loop.close()
        _drop_database(server_url, url)
    return {"wall µs": wall, "client CPU µs": cpu, "server CPU µs": server}


def _backend_cpu(pid: int) -> Callable[[], float | None]:
    """The backend's CPU seconds so far, from /proc/PID/schedstat (nanoseconds; None where
    the server runs on another machine)."""
    schedstat = Path(f"/proc/{pid}/schedstat")

    def read() -> float | None:
        try:
            return int(schedstat.read_text().split()[0]) / 1e9
        except (OSError, IndexError, ValueError):
            return None

    return read


def _transport(url: str) -> str:
    """What libpq will use: a host that is a directory (or none at all) is a socket."""
    host = str(conninfo_to_dict(url).get("host") or "")
    return "unix socket" if not host or host.startswith("/") else "tcp"


def _socket_url(url: str) -> str | None:
    """The same server through its Unix-domain socket, where it is local and has one (the
    socket file for its port must be there: a server in a container has none here)."""
    params = conninfo_to_dict(url)
    if params.get("host") not in ("127.0.0.1", "localhost", "::1"):
        return None
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SHOW unix_socket_directories").fetchone()
            port = conn.info.port
    except psycopg.Error:
        return None
    directories = [d.strip() for d in str(row[0] if row else "").split(",") if d.strip()]
    for directory in directories:
        if (Path(directory) / f".s.PGSQL.{port}").exists():
            return make_conninfo(url, host=directory)
    return None


def _placements() -> list[tuple[str, tuple[int, int] | None]]:
    cores = sorted(os.sched_getaffinity(0))
    placements: list[tuple[str, tuple[int, int] | None]] = []
    if len(cores) >= 2:
        placements.append(("two cores", (cores[0], cores[1])))
    placements.append(("one core", (cores[0], cores[0])))
    return placements


def _wakeups(rounds: int, cores: tuple[int, int] | None) -> dict[str, float]:
    per_chunk = max(1, rounds // CHUNKS)
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    mine = os.sched_getaffinity(0)
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHILD, str(to_child_r), str(to_parent_w), str(per_chunk * CHUNKS)],
        pass_fds=(to_child_r, to_parent_w),
    )
    try:
        if cores is not None:
            os.sched_setaffinity(child.pid, {cores[1]})
            os.sched_setaffinity(0, {cores[0]})
        walls, cpus = [], []
        for _ in range(CHUNKS):
            cpu_before, wall_before = time.thread_time(), time.perf_counter()
            for _ in range(per_chunk):
                os.write(to_child_w, b"x")
                os.read(to_parent_r, 1)
            walls.append((time.perf_counter() - wall_before) / per_chunk * 1e6)
            cpus.append((time.thread_time() - cpu_before) / per_chunk * 1e6)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        child.wait(timeout=30)
    finally:
        os.sched_setaffinity(0, mine)
        if child.poll() is None:
            child.kill()
            child.wait()
        for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
            os.close(fd)
    return {"round trip wall µs": round(wall, 1), "CPU µs, one side": round(cpu, 1)}


def _table(report: dict[str, Any]) -> Table:
    table = Table(title="What this machine charges per step (µs)")
    table.add_column("step")
    table.add_column("wall", justify="right")
    table.add_column("CPU here", justify="right")
    table.add_column("CPU in the server", justify="right")
    for transport, figures in report["postgresql"].items():
        for client in ("psycopg", "libpq"):
            server = figures[f"{client} server CPU µs"]
            table.add_row(
                f"SELECT 1 via {client}, {transport}",
                f"{figures[f'{client} wall µs']:,.1f}",
                f"{figures[f'{client} client CPU µs']:,.1f}",
                "-" if server is None else f"{server:,.1f}",
            )
    for size, per in ((GROUP, 1), (BULK, BULK)):
        commits = report[f"group commit of {size}"]
        server = commits["server CPU µs"]
        table.add_row(
            f"group commit of {size:,} ballots (cardinal_append)"
            + (", per ballot" if per > 1 else ""),
            f"{commits['wall µs'] / per:,.1f}",
            f"{commits['client CPU µs'] / per:,.1f}",
            "-" if server is None else f"{server / per:,.1f}",
        )
    for placement, figures in report["wakeup"].items():
        table.add_row(
            f"wake-up and back between processes, {placement}",
            f"{figures['round trip wall µs']:,.1f}",
            f"{figures['CPU µs, one side']:,.1f}",
            "",
        )
    return table
