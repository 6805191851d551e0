"""Benchmark: blue/green rebuild speed on a big store.

Fills a scratch database (default 1,000,000 events, written through the service layer and
the group-commit writer), brings every projection live, then rebuilds each one and reports
its rate. Checks afterwards that the rebuilt tally equals a recount of the log.
Target: 50,000 events/s for the tally.

Run: ``cardinal bench rebuild [--events 1000000]``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from infra.bench.projection import (
    _catch_up_all,
    _check_against_recount,
    _create_database,
    _drop_database,
    _fill,
    _progress,
    report_rates,
)
from infra.options import Parser
from infra.store.migrations import migrate
from projections import PROJECTIONS, projection
from projections.rebuild import Progress, Rebuild

TARGET_EVENTS_PER_SECOND = 50_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cardinal bench rebuild", description=__doc__)
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
    return report_rates(
        "rebuild",
        title=f"Blue/green rebuilds of a {events:,}-event store",
        about={"store": events},
        figures=figures,
        mismatches=mismatches,
        target=TARGET_EVENTS_PER_SECOND,
    )


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
