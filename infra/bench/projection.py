"""Benchmark: how fast a projection worker catches up a backlog from the store.

Fills a fresh database with a backlog (elections of several methods, ballots with ~10%
revisions and ~2% withdrawals), then times each projection's catch-up from position 0,
one worker each, and checks the tally against a recount. Target: 20,000 events/s.

Run: ``cardinal bench projection [--events 200000]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from domain.errors import AlreadyWithdrawn, BallotNotFound, ConcurrentRevision
from domain.rules import ElectionRules
from domain.voter import Voter
from infra.options import Parser
from infra.store import open_application
from infra.store.log import recount_store
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from projections import PROJECTIONS, projection
from projections.results import differences_from_recount
from projections.runtime import ProjectionRunner

TARGET_EVENTS_PER_SECOND = 20_000
METHODS = ("plurality", "approval", "score", "star", "irv", "schulze", "borda")
OPTIONS = [{"id": f"o{i}", "label": f"Option {i}"} for i in range(5)]

console = Console()


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cardinal bench projection", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000, help="backlog size")
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
        figures = await _catch_up_all(url)
        mismatches = await _check_against_recount(url)
    finally:
        if not keep:
            _drop_database(server_url, url)
    return report_rates(
        "projection",
        title=f"Projection catch-up of a {events:,}-event backlog (one worker each)",
        about={"backlog": events},
        figures=figures,
        mismatches=mismatches,
        target=TARGET_EVENTS_PER_SECOND,
    )


def report_rates(
    bench: str,
    *,
    title: str,
    about: dict[str, int],
    figures: dict[str, tuple[int, float]],
    mismatches: list[str],
    target: int,
) -> int:
    """Print each projection's rate (a table and a JSON line); 0 if the tally meets
    ``target`` and equals a recount of the log."""
    table = Table(title=title)
    for column in ("projection", "events", "seconds", "events/s", "target"):
        table.add_column(column, justify="right")
    for name, (count, seconds) in figures.items():
        ok = count / seconds >= target or name != "tally"
        table.add_row(
            name,
            f"{count:,}",
            f"{seconds:.2f}",
            f"[{'green' if ok else 'red'}]{count / seconds:,.0f}[/]",
            f"{target:,}" if name == "tally" else "",
        )
    console.print(table)
    console.print(
        f"[red]the tally differs from a recount for {', '.join(mismatches)}[/red]"
        if mismatches
        else "the tally equals a recount of the log for every election"
    )
    rates = {
        name: {"events": c, "seconds": round(s, 2), "events_per_second": round(c / s)}
        for name, (c, s) in figures.items()
    }
    summary = {"bench": bench, **about, "projections": rates, "equals_recount": not mismatches}
    print(json.dumps(summary))
    count, seconds = figures["tally"]
    return 0 if count / seconds >= target and not mismatches else 1


async def _check_against_recount(url: str) -> list[str]:
    """Elections whose tally read model differs from a recount of the log."""
    app = open_application(url)
    try:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            recount = await recount_store(conn, app.mapper)
            differing, _ = await differences_from_recount(conn, recount)
    finally:
        app.close()
    return [str(election_id) for election_id in differing]


async def _fill(url: str, events: int) -> None:
    """Write the backlog through the service layer and the group-commit writer."""
    rng = random.Random(42)
    app = open_application(url)
    writer = GroupCommitWriter(app, url, max_batch=1000, max_queue=100_000)
    app.writer = writer
    writer.start()
    try:
        elections = []
        for method in METHODS:
            rules = ElectionRules.create(options=OPTIONS, method=method, allow_revote=True)
            election_id = (await app.create_election(f"Bench {method}", rules)).id
            await app.open_election(election_id)
            elections.append((election_id, method))
        voters: list[tuple[uuid.UUID, str, Voter]] = []
        with _progress() as progress:
            task = progress.add_task("writing the backlog", total=events)
            written = 2 * len(METHODS)
            while written < events:
                chunk = min(2000, events - written)
                jobs = [_one(app, rng, elections, voters) for _ in range(chunk)]
                await asyncio.gather(*jobs)
                written += chunk
                progress.update(task, completed=written)
    finally:
        await writer.stop()
        app.close()


async def _one(
    app: Any,
    rng: random.Random,
    elections: list[tuple[uuid.UUID, str]],
    voters: list[tuple[uuid.UUID, str, Voter]],
) -> None:
    roll = rng.random()
    if voters and roll < 0.12:
        election_id, method, voter = rng.choice(voters)
    else:
        election_id, method = rng.choice(elections)
        name = uuid.uuid4().hex
        voter = Voter(name, name)
        voters.append((election_id, method, voter))
    # Two changes to one ballot in the same burst race; the loser's refusal is fine here.
    with contextlib.suppress(AlreadyWithdrawn, BallotNotFound, ConcurrentRevision):
        if roll < 0.02:
            await app.withdraw_ballot(election_id, voter)
        else:
            await app.cast_ballot(election_id, voter, _ballot(method, rng))


def _ballot(method: str, rng: random.Random) -> dict[str, Any]:
    ids = [o["id"] for o in OPTIONS]
    if method == "plurality":
        return {"choice": rng.choice(ids)}
    if method == "approval":
        return {"approve": rng.sample(ids, rng.randint(1, 3))}
    if method in ("score", "star"):
        top = 2 if method == "score" else 5
        return {"scores": {i: rng.randint(top - 4 if method == "score" else 0, top) for i in ids}}
    return {"ranking": rng.sample(ids, rng.randint(1, len(ids)))}


async def _catch_up_all(url: str) -> dict[str, tuple[int, float]]:
    figures: dict[str, tuple[int, float]] = {}
    pool = AsyncConnectionPool(url, min_size=2, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open()
    try:
        with _progress() as progress:
            for name in PROJECTIONS:
                runner = ProjectionRunner(projection(name), pool)
                await runner.prepare()
                task = progress.add_task(f"catching up {name}", total=None)
                started = time.perf_counter()

                def advance(position: int, head: int, task: TaskID = task) -> None:
                    progress.update(task, completed=position, total=head)

                count = await runner.catch_up(advance)
                figures[name] = (count, time.perf_counter() - started)
    finally:
        await pool.close()
    return figures


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _create_database(server_url: str) -> str:
    name = f"cardinal_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_url, dbname=name)


def _drop_database(server_url: str, url: str) -> None:
    name = str(conninfo_to_dict(url)["dbname"])
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
