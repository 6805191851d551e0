"""Benchmark: audit verification speed on a big store.

Fills a scratch database (default 1,000,000 events), seals it, projects it, exports it,
then times `audit verify` from the export file (what an auditor runs, on their own machine;
target: 100,000 entries/s) and from the database (reported too).

Run: ``cardinal bench verify [--events 1000000]``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg
from rich.table import Table

from infra.audit.chain import Signer, new_seed
from infra.audit.export import export
from infra.audit.sealer import Sealer
from infra.audit.sources import verify_database, verify_file
from infra.bench.projection import (
    _catch_up_all,
    _create_database,
    _drop_database,
    _fill,
    _progress,
    console,
)
from infra.options import Parser
from infra.store.migrations import migrate

TARGET_ENTRIES_PER_SECOND = 100_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cardinal bench verify", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000, help="store size")
    parser.add_argument(
        "--server-url",
        default="postgresql://root@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create the scratch database on",
    )
    args = parser.parse_args(argv)
    return asyncio.run(_run(args.events, args.server_url))


async def _run(events: int, server_url: str) -> int:
    url = _create_database(server_url)
    signer = Signer(new_seed())
    keys = {signer.key_id: signer.public_key}
    figures: dict[str, tuple[int, float]] = {}
    try:
        migrate(url)
        await _fill(url, events)
        started = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            sealer = Sealer(url, signer, page_size=20_000)
            sealed = await sealer.seal_pending(conn)
            await sealer.checkpoint_head(conn, "benchmark")
        figures["seal"] = (sealed, time.perf_counter() - started)
        await _catch_up_all(url)
        with tempfile.TemporaryDirectory() as folder:
            exported = Path(folder) / "audit.ndjson"
            started = time.perf_counter()
            count = await export(url, exported, signer)
            figures["export"] = (count, time.perf_counter() - started)
            with _progress() as bar:
                task = bar.add_task("verifying (database)", total=None)
                started = time.perf_counter()
                report = await verify_database(
                    url,
                    public_keys=keys,
                    election=None,
                    validate=False,
                    progress=lambda p, h: bar.update(task, completed=p, total=h),
                )
                figures["verify (database)"] = (report.entries, time.perf_counter() - started)
                task = bar.add_task("verifying (file)", total=None)
                started = time.perf_counter()
                report = verify_file(
                    exported,
                    election=None,
                    validate=False,
                    progress=lambda p, h: bar.update(task, completed=p, total=h),
                )
                figures["verify (file)"] = (report.entries, time.perf_counter() - started)
    finally:
        _drop_database(server_url, url)
    table = Table(title=f"Audit on a {events:,}-event store")
    for column in ("step", "entries", "seconds", "entries/s"):
        table.add_column(column, justify="right")
    for step, (count, seconds) in figures.items():
        table.add_row(step, f"{count:,}", f"{seconds:.1f}", f"{count / seconds:,.0f}")
    console.print(table)
    rates = {step: round(c / s) for step, (c, s) in figures.items()}
    print(json.dumps({"bench": "verify", "store": events, "entries_per_second": rates}))
    # The target is for the auditor's own run: an export verified on their machine.
    return 0 if rates["verify (file)"] >= TARGET_ENTRIES_PER_SECOND else 1
