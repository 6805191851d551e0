"""Blue/green rebuilds against a real PostgreSQL: the old version serves until the switch."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from domain.application import VotingApplication
from domain.errors import AlreadyWithdrawn, BallotNotFound
from domain.recount import Recount
from domain.rules import ElectionRules
from domain.voter import Voter
from infra.store import open_application
from infra.store.log import LogEvent, head, recount_store
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from projections import PROJECTIONS, projection
from projections.base import BulkBuilder, Projection
from projections.positions import PositionWatcher
from projections.queries import tally_snapshot
from projections.rebuild import Progress, Rebuild, RebuildRefused
from projections.runtime import NOTIFY_CHANNEL, ProjectionRunner
from projections.status import projection_status
from projections.tally import TallyProjection
from tests.databases import create_database, drop_database
from tests.e2e.load import recount
from tests.integration.test_projection_runtime import _fill, _served, _truth


@pytest.fixture
async def store() -> AsyncIterator[tuple[str, AsyncConnectionPool]]:
    url = create_database("cardinal_rebuild")
    migrate(url)
    pool = AsyncConnectionPool(url, min_size=1, max_size=6, open=False, kwargs={"autocommit": True})
    await pool.open()
    try:
        yield url, pool
    finally:
        await pool.close()
        drop_database(url)


def _schemas(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'proj_%' ORDER BY nspname"
        ).fetchall()
    return [str(row[0]) for row in rows]


async def _live(pool: AsyncConnectionPool) -> None:
    for name in PROJECTIONS:
        runner = ProjectionRunner(projection(name), pool)
        await runner.prepare()
        await runner.catch_up()


async def test_a_rebuild_switches_to_a_new_version_equal_to_a_recount(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    election_id = await _fill(url, random.Random(11))
    await _live(pool)
    reports: list[Progress] = []
    for name in PROJECTIONS:
        version = await Rebuild(projection(name), pool, progress=reports.append).run()
        assert version == 2
    assert reports
    assert reports[-1].position == reports[-1].head
    assert _schemas(url) == ["proj_catalog_v2", "proj_statistics_v2", "proj_tally_v2"]
    assert await _served(pool, election_id) == _truth((await recount(url))[str(election_id)])
    async with pool.connection() as conn:
        status = {entry["name"]: entry for entry in await projection_status(conn)}
    assert all(entry["state"] == "live" for entry in status.values())
    assert status["tally"]["version"] == 2
    assert status["tally"]["lag"] == 0
    assert status["tally"]["rebuild"] is None


class _Exploding(TallyProjection):
    """A tally whose bulk build fails half-way, as a bug or a full disk would."""

    def bulk(self) -> BulkBuilder:
        inner = super().bulk()

        class Failing:
            seen = 0
            set_aside = inner.set_aside

            def add(self, events: Sequence[LogEvent]) -> None:
                Failing.seen += len(events)
                if Failing.seen > 100:
                    raise RuntimeError("disk full")
                inner.add(events)

            async def write(self, conn: Any, schema: str) -> None:
                await inner.write(conn, schema)

        return Failing()


async def test_a_failed_rebuild_leaves_the_old_version_serving_and_says_why(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    election_id = await _fill(url, random.Random(12))
    await _live(pool)
    before = await _served(pool, election_id)
    with pytest.raises(RuntimeError, match="disk full"):
        await Rebuild(_Exploding(), pool, page_size=50).run()
    async with pool.connection() as conn:
        status = {entry["name"]: entry for entry in await projection_status(conn)}
    assert status["tally"]["state"] == "failed"
    assert "disk full" in status["tally"]["detail"]
    assert status["tally"]["version"] == 1
    assert await _served(pool, election_id) == before
    # Running it again succeeds, and the leftover half-built version is gone.
    assert await Rebuild(TallyProjection(), pool).run() == 2
    assert "proj_tally_v1" not in _schemas(url)
    assert await _served(pool, election_id) == before


async def test_a_killed_rebuild_leaves_the_old_version_and_can_run_again(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    election_id = await _fill(url, random.Random(13), ballots=600)
    await _live(pool)
    before = await _served(pool, election_id)
    started = asyncio.Event()

    def on_progress(_: object) -> None:
        started.set()

    job = asyncio.create_task(
        Rebuild(_SlowCatalog(), pool, page_size=20, progress=on_progress).run()
    )
    await started.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert "proj_catalog_v1" in _schemas(url)
    assert await _served(pool, election_id) == before
    assert await Rebuild(projection("catalog"), pool).run() == 2
    assert _schemas(url).count("proj_catalog_v2") == 1


class _SlowCatalog(Projection):
    """The catalog, applied slowly, so that the test can interrupt a rebuild mid-way."""

    name = "catalog"
    tables = ("elections",)

    def __init__(self) -> None:
        self.inner = projection("catalog")

    async def apply(self, conn: Any, schema: str, events: Any) -> None:
        await asyncio.sleep(0.05)
        await self.inner.apply(conn, schema, events)


async def test_a_second_rebuild_of_the_same_projection_is_refused(
    store: tuple[str, AsyncConnectionPool],
) -> None:
    url, pool = store
    await _fill(url, random.Random(14), ballots=200)
    await _live(pool)
    started = asyncio.Event()
    first = asyncio.create_task(
        Rebuild(_SlowCatalog(), pool, page_size=10, progress=lambda _: started.set()).run()
    )
    await started.wait()
    with pytest.raises(RebuildRefused, match="already running"):
        await Rebuild(projection("catalog"), pool).run()
    assert await first == 2


async def _fill_open(url: str, rng: random.Random, step: int, entries: int) -> UUID:
    """An open election counted in steps, with casts, revisions and withdrawals."""
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "abc"], method="star", live_results_step=step
        )
        election_id = (await app.create_election("Stepped", rules)).id
        await app.open_election(election_id)
        for _ in range(entries):
            name = f"s{rng.randrange(12)}"
            voter = Voter(name, name)
            if rng.random() < 0.15:
                with contextlib.suppress(BallotNotFound, AlreadyWithdrawn):
                    await app.withdraw_ballot(election_id, voter)
                    continue
            scores = {o: rng.randint(0, 5) for o in "abc"}
            await app.cast_ballot(election_id, voter, {"scores": scores})
        return election_id
    finally:
        await writer.stop()
        app.close()


async def _published(pool: AsyncConnectionPool, election_id: UUID) -> tuple[Any, ...]:
    async with pool.connection() as conn:
        snapshot = await tally_snapshot(conn, election_id)
    return snapshot.entries, snapshot.published_position, snapshot.published_counters


@pytest.mark.parametrize("step", [3, 7])
async def test_live_pages_a_rebuild_and_a_recount_publish_the_same_steps(
    store: tuple[str, AsyncConnectionPool], step: int
) -> None:
    url, pool = store
    election_id = await _fill_open(url, random.Random(step), step, entries=90)
    live = ProjectionRunner(TallyProjection(), pool, page_size=step + 2)  # pages across steps
    await live.prepare()
    await live.catch_up()
    served_live = await _published(pool, election_id)
    await Rebuild(TallyProjection(), pool).run()
    assert await _published(pool, election_id) == served_live
    counted = await _recount_store(url)
    count = counted.elections[election_id]
    entries, position, counters = served_live
    assert (entries, position) == (count.steps.entries, count.steps.position)
    assert counters == count.published_tally().counters()
    assert counters is not None  # something was published, and it is the same everywhere
    assert entries >= 60


async def _recount_store(url: str) -> Recount:
    app = VotingApplication(env={"TRANSCODER_TOPIC": "infra.store.transcoder:OrjsonTranscoder"})
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return await recount_store(conn, app.mapper)


class _PausedBeforeSwitch(Rebuild):
    """A rebuild that stops between its fill and its switch until told to go on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filled = asyncio.Event()
        self.go = asyncio.Event()

    async def _switch(self, version: int) -> None:
        self.filled.set()
        await self.go.wait()
        await super()._switch(version)


@pytest.mark.parametrize(("name", "page_size"), [("tally", 20_000), ("catalog", 50)])
async def test_a_version_being_built_wakes_no_waiter_and_its_switch_wakes_them(
    store: tuple[str, AsyncConnectionPool], name: str, page_size: int
) -> None:
    """Read-your-writes waiters (``?min_position``) are woken by the version that serves.

    The version a rebuild builds, once past a lagging live version, announced its position
    as the projection's: waiters were told their position was served (results without
    their ballot, no ``Warning: 199``) until the switch. Built in bulk (tally) and page by
    page (catalog); the switch's announcement then wakes them.
    """
    url, pool = store
    await _fill(url, random.Random(15), ballots=120)
    live = ProjectionRunner(projection(name), pool)
    await live.prepare()  # the live version lags: still at 0
    async with pool.connection() as conn:
        top = await head(conn)
    watcher = PositionWatcher(url, pool)
    await watcher.start()
    job = _PausedBeforeSwitch(projection(name), pool, page_size=page_size)
    run: asyncio.Task[int] | None = None
    try:
        deadline = time.monotonic() + 10
        while not watcher.listening:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        waiter = asyncio.create_task(watcher.wait_for(name, top, 30))
        run = asyncio.create_task(job.run())
        await job.filled.wait()
        # A marker sent after the fill committed: once the watcher has it, it has had every
        # announcement of the fill (one listener gets notifications in commit order).
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_notify(%s, 'marker:1')", (NOTIFY_CHANNEL,))
        while watcher.positions.get("marker") != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert await live.position() == 0
        assert watcher.positions.get(name, 0) == 0
        assert not waiter.done()
        assert await watcher.wait_for(name, top, 0.1) is False
        job.go.set()
        assert await run == 2
        # The switch announces the new version's position: the waiter is answered.
        assert await asyncio.wait_for(waiter, 10) is True
        assert watcher.positions[name] == top
        assert await live.position() == top
    finally:
        job.go.set()
        if run is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(run, 30)
        await watcher.stop()
