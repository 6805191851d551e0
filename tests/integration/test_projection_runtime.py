"""The exactly-once feed protocol, page by page, against a real PostgreSQL.

Any page (after, last] may arrive any number of times, in any order, overlapping others
or leaving gaps; the read model must end up as if each entry were applied once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from domain.ballot import Ballot
from domain.errors import AlreadyWithdrawn, BallotNotFound
from domain.recount import Recount
from domain.rules import ElectionRules
from domain.tabulation import Tally
from domain.voter import Voter
from infra.store import open_application
from infra.store.log import LogEvent, head, read_page
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from projections import projection
from projections.queries import tally_snapshot
from projections.runtime import ProjectionRunner, create_version
from projections.tally import TallyProjection
from tests.databases import create_database, drop_database
from tests.e2e.load import recount


@pytest.fixture
async def store() -> AsyncIterator[tuple[str, AsyncConnectionPool]]:
    url = create_database("cardinal_runtime")
    migrate(url)
    pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open()
    try:
        yield url, pool
    finally:
        await pool.close()
        drop_database(url)


async def _fill(url: str, rng: random.Random, ballots: int = 400) -> UUID:
    """An IRV election with casts, revisions and withdrawals, closed, then two late ballots."""
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "abcd"], method="irv", allow_revote=True
        )
        election_id = (await app.create_election("Runtime", rules)).id
        await app.open_election(election_id)
        for n in range(ballots):
            voter = f"k{rng.randrange(ballots // 2)}"
            ranking = rng.sample("abcd", rng.randint(1, 4))
            if rng.random() < 0.05:
                with contextlib.suppress(BallotNotFound, AlreadyWithdrawn):  # none, or withdrawn
                    await app.withdraw_ballot(election_id, Voter(voter, voter))
            else:
                await app.cast_ballot(
                    election_id, Voter(voter, voter), {"ranking": ranking}, f"r{n}"
                )
        await app.close_election(election_id)
        # Late ballots: recorded after the close, as another API process with a stale view
        # of the election could do. They must not count.
        for _ in range(2):
            late = Ballot(election_id=str(election_id), vote={"ranking": ["d"]}, request_key=None)
            await writer.append(late)
        return election_id
    finally:
        await writer.stop()
        app.close()


async def _entries(pool: AsyncConnectionPool) -> list[LogEvent]:
    async with pool.connection() as conn:
        return await read_page(conn, 0, await head(conn), 100_000)


def _page(entries: list[LogEvent], first: int, last: int) -> tuple[int, int, list[LogEvent]]:
    """The page holding entries[first..last] (inclusive)."""
    after = entries[first - 1].position if first else 0
    return after, entries[last].position, entries[first : last + 1]


async def _served(pool: AsyncConnectionPool, election_id: UUID) -> dict[str, Any]:
    async with pool.connection() as conn:
        snapshot = await tally_snapshot(conn, election_id)
    assert snapshot.rules is not None
    result = Tally.from_counters(ElectionRules.from_json(snapshot.rules), snapshot.counters)
    return {**result.result().to_json(), "late_ballots": snapshot.late_ballots}


def recount_entries(entries: list[LogEvent]) -> dict[str, dict[str, Any]]:
    """Every election's results, recounted from these entries alone."""
    counted = Recount()
    for entry in entries:
        counted.record(entry.position, entry.stream_id, entry.type, entry.data)
    return {str(i): count.results(counted.position) for i, count in counted.elections.items()}


def _truth(recounted: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in recounted.items() if k not in ("election_id", "status", "position")}


async def test_pages_in_order_give_the_recount(store: tuple[str, AsyncConnectionPool]) -> None:
    url, pool = store
    election_id = await _fill(url, random.Random(1))
    entries = await _entries(pool)
    runner = ProjectionRunner(TallyProjection(), pool)
    await runner.prepare()
    for start in range(0, len(entries), 37):
        applied = await runner.apply_page(*_page(entries, start, min(start + 36, len(entries) - 1)))
        assert not applied.duplicate
    assert await runner.position() == entries[-1].position
    served = await _served(pool, election_id)
    assert served == _truth((await recount(url))[str(election_id)])
    assert served["late_ballots"] == 2


async def test_duplicates_overlaps_gaps_and_disorder_change_nothing(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    rng = random.Random(2)
    election_id = await _fill(url, rng)
    entries = await _entries(pool)
    runner = ProjectionRunner(TallyProjection(), pool, page_size=100_000)
    await runner.prepare()
    pages = []
    for _ in range(300):
        first = rng.randrange(len(entries))
        pages.append(_page(entries, first, min(len(entries) - 1, first + rng.randrange(60))))
    for page in pages + pages[::-1]:
        await runner.apply_page(*page)
    # Whatever the pages left out is filled from the store, as the idle catch-up does.
    await runner.catch_up()
    assert await runner.position() == entries[-1].position
    assert await _served(pool, election_id) == _truth((await recount(url))[str(election_id)])


async def test_a_page_after_a_gap_reads_the_gap_from_the_store(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    election_id = await _fill(url, random.Random(3), ballots=120)
    entries = await _entries(pool)
    runner = ProjectionRunner(TallyProjection(), pool)
    await runner.prepare()
    applied = await runner.apply_page(*_page(entries, len(entries) - 5, len(entries) - 1))
    assert applied.events == len(entries)  # the gap (0, after] came from the store
    duplicate = await runner.apply_page(*_page(entries, 0, 10))
    assert duplicate.duplicate
    assert await _served(pool, election_id) == _truth((await recount(url))[str(election_id)])


async def test_an_entry_that_cannot_be_applied_is_set_aside_and_the_page_goes_on(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    election_id = await _fill(url, random.Random(4), ballots=50)
    entries = await _entries(pool)
    runner = ProjectionRunner(TallyProjection(), pool)
    await runner.prepare()
    await runner.apply_page(*_page(entries, 0, 9))
    orphan = LogEvent(  # a revision of a ballot in an election the log does not hold
        entries[10].position,
        entries[10].stream_id,
        2,
        "BallotRevised",
        {"election_id": str(UUID(int=7)), "vote": {"ranking": ["a"]}, "timestamp": "2026-01-01"},
    )
    unreadable = entries[11]._replace(data={}, unreadable="unreadable state: not JSON")
    page = [orphan, unreadable, *entries[12:]]
    applied = await runner.apply_page(entries[9].position, entries[-1].position, page)
    assert (applied.set_aside, applied.events) == (2, len(entries) - 12)
    assert await runner.position() == entries[-1].position
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT position, election_id, type, reason FROM projection_set_aside ORDER BY 1"
        )
        aside = await cursor.fetchall()
        snapshot = await tally_snapshot(conn, election_id)
    assert [(p, e, t) for p, e, t, _ in aside] == [
        (orphan.position, UUID(int=7), "BallotRevised"),
        (unreadable.position, None, unreadable.type),
    ]
    assert "no election" in aside[0][3]
    assert "not JSON" in aside[1][3]
    # The election's other entries all counted; the results document says what is missing.
    truth = recount_entries([e for e in entries if e.position not in {p for p, *_ in aside}])
    assert await _served(pool, election_id) == _truth(truth[str(election_id)])
    assert snapshot.set_aside_unattributed == 1


async def test_every_projection_gets_its_own_version_and_views(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    await _fill(url, random.Random(5), ballots=30)
    from projections import PROJECTIONS, projection

    for name in PROJECTIONS:
        runner = ProjectionRunner(projection(name), pool)
        await runner.prepare()
        await runner.prepare()  # idempotent
        await runner.catch_up()
    with psycopg.connect(url) as conn:
        registry = conn.execute(
            "SELECT name, active_version, state FROM projections ORDER BY name"
        ).fetchall()
        catalog = conn.execute(
            "SELECT status, ballots_cast, late_ballots FROM read_models.catalog_elections"
        ).fetchone()
        hours = conn.execute(
            "SELECT sum(ballots), sum(late) FROM read_models.statistics_vote_statistics"
        ).fetchone()
    assert registry == [("catalog", 1, "live"), ("statistics", 1, "live"), ("tally", 1, "live")]
    assert catalog is not None
    assert catalog[0] == "closed"
    assert catalog[2] == 2
    assert hours is not None
    assert hours[1] == 2
    assert hours[0] == catalog[1]


async def _until_a_query_waits_on_a_lock(pool: AsyncConnectionPool) -> None:
    async with pool.connection() as conn:
        for _ in range(500):
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("no query ever waited on the switch's lock")


async def test_a_page_waiting_on_a_version_switch_is_applied_to_the_new_version(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    """A live page that arrives while a rebuild switches versions waits for the switch,
    then goes to the new version: not refused as if the projection had no version."""
    url, pool = store
    await _fill(url, random.Random(31), ballots=60)
    runner = ProjectionRunner(projection("tally"), pool)
    await runner.prepare()
    entries = await _entries(pool)
    await runner.apply_page(*_page(entries, 0, 9))
    async with pool.connection() as conn, conn.transaction():
        new_version = await create_version(conn, projection("tally"))
    async with await psycopg.AsyncConnection.connect(url) as switch:
        await switch.execute("SELECT 1 FROM projections WHERE name = 'tally' FOR UPDATE")
        waiting = asyncio.create_task(runner.apply_page(*_page(entries, 10, 19)))
        await _until_a_query_waits_on_a_lock(pool)
        await switch.execute(
            "UPDATE projections SET active_version = %s WHERE name = 'tally'", (new_version,)
        )
        await switch.commit()
        applied = await waiting
    assert applied.position == entries[19].position
    assert applied.events == 20  # the new version starts at 0: the gap came from the store
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT version, position FROM projection_positions WHERE name = 'tally' "
            "ORDER BY version"
        )
        positions = await cursor.fetchall()
    assert positions == [(1, entries[9].position), (new_version, entries[19].position)]


def _rows(url: str, name: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of a projection's active version, table by table, in a stable order."""
    tables = {"tally": ("elections", "ballots", "counters", "late_ballots")}
    rows = {}
    with psycopg.connect(url) as conn:
        for table in tables.get(name, projection(name).tables):
            found = conn.execute(f"SELECT * FROM read_models.{name}_{table}").fetchall()
            if table == "counters":  # a live count keeps a key that went back to 0
                found = [row for row in found if row[-1]]
            rows[table] = sorted(found, key=repr)
    return rows


async def test_two_runners_taking_turns_leave_what_a_rebuild_builds(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    """A projection keeps its rows' state in memory between pages; a hot standby's catch-up
    (another runner) writing in between must make it read them again, never count on its
    stale memory. Whatever the turns, the rows equal those a rebuild builds from the log."""
    from projections import PROJECTIONS
    from projections.rebuild import Rebuild

    url, pool = store
    rng = random.Random(7)
    election_id = await _fill(url, rng, ballots=300)
    entries = await _entries(pool)
    for name in PROJECTIONS:
        runners = [ProjectionRunner(projection(name), pool) for _ in range(2)]
        await runners[0].prepare()
        start = 0
        while start < len(entries):
            end = min(start + rng.randint(1, 25), len(entries) - 1)
            await rng.choice(runners).apply_page(*_page(entries, start, end))
            start = end + 1
        taken_turns = _rows(url, name)
        await Rebuild(projection(name), pool).run()
        assert _rows(url, name) == taken_turns, name
    assert await _served(pool, election_id) == _truth((await recount(url))[str(election_id)])


async def test_a_database_outage_does_not_say_the_broker_is_down() -> None:
    """The worker marked the broker disconnected on any error, a database one too: the
    broker alert fired in database outages, and for ever without a broker (review
    helper-31)."""
    from functools import partial

    from infra import metrics
    from projections.worker import ProjectionWorker
    from tests.integration.test_ingest import until

    unreachable = "postgresql://root@127.0.0.1:1/nothing?connect_timeout=1"
    pool = AsyncConnectionPool(unreachable, min_size=1, timeout=0.2, open=False)
    gauge = metrics.BROKER_CONNECTED.labels("tally")
    gauge.set(1)
    for amqp_url in (None, "amqp://guest:guest@127.0.0.1:5672/"):
        worker = ProjectionWorker(
            ProjectionRunner(projection("tally"), pool),
            unreachable,
            amqp_url=amqp_url,
            idle_interval=0.05,
        )
        running = asyncio.create_task(worker.run())
        await until(partial(getattr, worker.status, "last_error"), lambda e: e is not None)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        assert gauge._value.get() == 1  # the gauge's own value
