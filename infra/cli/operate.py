"""Operating the read models: `cardinal projections` (a status table) and `cardinal rebuild`
(blue/green, with a progress bar)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os

import psycopg
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from infra.cli.environment import (
    Commands,
    operator_settings,
    positive_int,
    print_table,
    run_until_interrupted,
)
from infra.store.names import COMMAND_CONNECTION, CONNECT_TIMEOUT
from projections import PROJECTIONS, projection
from projections.rebuild import Progress as RebuildProgress
from projections.rebuild import Rebuild, RebuildRefused, RebuildRunning
from projections.status import projection_status

console = Console()
# `cardinal rebuild`'s exit status when another rebuild of the projection holds its lock
# (1: refused otherwise, e.g. a projection with no live version yet).
ALREADY_RUNNING = 3


def add_commands(sub: Commands) -> None:
    status = sub.add_parser(
        "projections",
        help="show every projection's version, state, position, lag, refusals and rebuild progress",
        description="Where every projection stands (what GET /api/admin/projections "
        "answers), as a table; --json for the raw document.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(command=run_status)

    rebuild = sub.add_parser(
        "rebuild",
        help="rebuild a projection blue/green, with a progress bar",
        description="Build a new version of a projection's tables from the event store "
        "while the current version keeps serving, then switch reads to it atomically and "
        "drop the old one. A failed or interrupted rebuild leaves the old version serving.",
    )
    rebuild.add_argument("name", choices=sorted(PROJECTIONS), metavar="NAME", help="projection")
    rebuild.add_argument(
        "--page-size",
        type=positive_int,
        default=20_000,
        help="log entries read per page (progress is reported per page)",
    )
    rebuild.add_argument(
        "--started-fd",
        type=int,
        default=None,
        metavar="FD",
        help="write one JSON line to this inherited file descriptor, then close it: "
        '{"started": VERSION} once this rebuild holds the lock and the status says '
        '`rebuilding`, or {"refused": WHY, "running": true|false} (how the API, which '
        "starts it as a child, answers 202 or 409)",
    )
    rebuild.set_defaults(
        command=run_rebuild,
        interrupted="the previous version keeps serving; run the rebuild again",
    )


def run_status(args: argparse.Namespace) -> int:
    settings = operator_settings()
    assert settings.database_url is not None
    return run_until_interrupted(print_status(settings.database_url, as_json=args.json))


def run_rebuild(args: argparse.Namespace) -> int:
    settings = operator_settings()
    assert settings.database_url is not None
    return run_until_interrupted(
        rebuild_with_progress(
            settings.database_url, args.name, args.page_size, started_fd=args.started_fd
        )
    )


async def print_status(database_url: str, *, as_json: bool) -> int:
    async with await psycopg.AsyncConnection.connect(database_url, **COMMAND_CONNECTION) as conn:
        found = await projection_status(conn)
    if as_json:
        print(json.dumps({"projections": found}, indent=2))
        return 0
    table = Table(title="Projections")
    columns = (
        "name",
        "version",
        "state",
        "position",
        "head",
        "lag",
        "dead-lettered",
        "unsigned",
        "stale",
        "set aside",
    )
    for column in columns:
        table.add_column(
            column, justify="right" if column not in ("name", "state") else "left", no_wrap=True
        )
    table.add_column("rebuild / detail", overflow="fold")  # (folded, never cut short)
    said: list[str] = []  # why a projection is not live, under the table (any width)
    for entry in found:
        colour = {"live": "green", "rebuilding": "yellow"}.get(entry["state"], "red")
        rebuild = entry["rebuild"]
        note = (
            f"v{rebuild['version']} at {rebuild['position']:,}/{rebuild['head']:,}, "
            f"{rebuild['events_per_second']:,.0f}/s"
            if rebuild and entry["state"] == "rebuilding"
            else (entry["detail"] or "")
        )
        if entry["state"] != "live" and entry["detail"]:
            said.append(f"[{colour}]{entry['name']} ({entry['state']})[/]: {entry['detail']}")
        table.add_row(
            entry["name"],
            str(entry["version"]),
            f"[{colour}]{entry['state']}[/]",
            f"{entry['position']:,}",
            f"{entry['head']:,}",
            f"{entry['lag']:,}",
            str(entry["dead_lettered"]),
            f"[yellow]{entry['unsigned']:,}[/]" if entry["unsigned"] else "0",
            f"[yellow]{entry['stale']:,}[/]" if entry["stale"] else "0",
            f"[red]{entry['set_aside']}[/]" if entry["set_aside"] else "0",
            note,
        )
    print_table(console, table)
    for line in said:
        console.print(line)
    return 0 if all(entry["state"] == "live" for entry in found) else 1


class _Announcer:
    """Says once, on ``fd`` (if any), whether this rebuild started or was refused."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def say(self, message: dict[str, object]) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):  # nobody listens any more: it goes on
                os.write(self.fd, json.dumps(message).encode() + b"\n")
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


async def rebuild_with_progress(
    database_url: str, name: str, page_size: int, *, started_fd: int | None = None
) -> int:
    announcer = _Announcer(started_fd)
    pool = AsyncConnectionPool(
        database_url,
        min_size=2,
        max_size=4,
        open=False,
        kwargs={"autocommit": True, **COMMAND_CONNECTION},
    )
    # A server that cannot be reached is a PoolTimeout here (`cannot reach the database`),
    # not a rebuild that waits for connections that never come.
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
    try:
        with Progress(
            TextColumn(f"rebuilding {name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("rebuild", total=None, rate="")

            def show(progress: RebuildProgress) -> None:
                bar.update(
                    task,
                    completed=progress.position,
                    total=progress.head,
                    rate=f"{progress.rate:,.0f} events/s",
                )

            try:
                job = Rebuild(
                    projection(name),
                    pool,
                    page_size=page_size,
                    progress=show,
                    started=lambda version: announcer.say({"started": version}),
                )
                version = await job.run()
            except RebuildRefused as refused:
                running = isinstance(refused, RebuildRunning)
                announcer.say({"refused": str(refused), "running": running})
                console.print(f"[red]{refused}[/red]")
                return ALREADY_RUNNING if running else 1
        console.print(f"{name}: version {version} is live; the previous version was dropped")
        return 0
    finally:
        announcer.close()  # unsaid if it stopped before it started (its error is logged)
        await pool.close()
