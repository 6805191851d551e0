"""Benchmark: blue/green rebuild speed on a big store.

Fills a scratch database (default 1,000,000 events, written through the service layer and
the group-commit writer), brings every projection live, then rebuilds each one and reports
its rate. Checks afterwards that the rebuilt tally equals a recount of the log.
Target: 50,000 events/s for the tally.

Run: ``cardinal bench rebuild [--events 1000000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool
from rich.table import Table

from infra.bench_projection import (
    _catch_up_all,
    _check_against_recount,
    _create_database,
    _drop_database,
    _fill,
    _progress,
    console,
)
from infra.migrations import migrate
from projections import PROJECTIONS, projection
from projections.rebuild import Progress, Rebuild

TARGET_EVENTS_PER_SECOND = 50_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cardinal bench rebuild", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="store size")
    parser.add_argument(
        "--server-url",
        default="postgresql://root@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create the scratch database on",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args(argv)
    return asyncio.run(_run(args.events, args.server_url, keep=args.keep))


async def _run(events: int, server_url: str, *, keep: bool) -> int:
    url = _create_database(server_url)
    try:
        migrate(url)
        await _fill(url, events)
        await _catch_up_all(url)
        figures = await _rebuild_all(url)
        mismatches = await _check_against_recount(url)
    finally:
        if not keep:
            _drop_database(server_url, url)
    table = Table(title=f"Blue/green rebuilds of a {events:,}-event store")
    for column in ("projection", "events", "seconds", "events/s", "target"):
        table.add_column(column, justify="right")
    for name, (count, seconds) in figures.items():
        rate = count / seconds
        ok = rate >= TARGET_EVENTS_PER_SECOND or name != "tally"
        table.add_row(
            name,
            f"{count:,}",
            f"{seconds:.2f}",
            f"[{'green' if ok else 'red'}]{rate:,.0f}[/]",
            f"{TARGET_EVENTS_PER_SECOND:,}" if name == "tally" else "",
        )
    console.print(table)
    console.print(
        f"[red]rebuilt tally differs from a recount for {', '.join(mismatches)}[/red]"
        if mismatches
        else "rebuilt tally equals a recount of the log for every election"
    )
    report = {
        name: {"events": c, "seconds": round(s, 2), "events_per_second": round(c / s)}
        for name, (c, s) in figures.items()
    }
    print(json.dumps({"bench": "rebuild", "store": events, "projections": report}))
    count, seconds = figures["tally"]
    return 0 if count / seconds >= TARGET_EVENTS_PER_SECOND and not mismatches else 1


async def _rebuild_all(url: str) -> dict[str, tuple[int, float]]:
    figures: dict[str, tuple[int, float]] = {}
    pool = AsyncConnectionPool(url, min_size=2, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open()
    try:
        with _progress() as bar:
            for name in PROJECTIONS:
                task = bar.add_task(f"rebuilding {name}", total=None)
                seen: list[Progress] = []

                def show(
                    progress: Progress, task: object = task, seen: list[Progress] = seen
                ) -> None:
                    seen.append(progress)
                    bar.update(task, completed=progress.position, total=progress.head)  # type: ignore[arg-type]

                started = time.perf_counter()
                await Rebuild(projection(name), pool, progress=show).run()
                figures[name] = (seen[-1].events if seen else 0, time.perf_counter() - started)
    finally:
        await pool.close()
    return figures
