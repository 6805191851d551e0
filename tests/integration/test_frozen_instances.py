"""Hot standby against a frozen active instance (SIGSTOP, a stalled host): the frozen one
keeps its TCP session, so only the server's idle limits end its locks (HA review).

A freeze is simulated in-process: a worker stopped inside its page transaction, a relay
or sealer whose lock-holding session goes silent. Each runs on a database of its own.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from infra.store.log import LogEvent
from infra.store.migrations import migrate
from projections import runtime
from projections.runtime import ProjectionRunner
from projections.tally import TallyProjection
from tests.databases import create_database, drop_database
from tests.integration.test_projection_runtime import _entries, _fill, _served


@pytest.fixture
async def store() -> AsyncIterator[tuple[str, AsyncConnectionPool, AsyncConnectionPool]]:
    """A database and two pools on it: the projection workers of two instances."""
    url = create_database("cardinal_frozen")
    migrate(url)
    pools = [
        AsyncConnectionPool(url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
        for _ in range(2)
    ]
    for pool in pools:
        await pool.open()
    try:
        yield url, pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()
        drop_database(url)


class FrozenTally(TallyProjection):
    """A tally that stops inside its page's transaction until thawed (SIGSTOP)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = asyncio.Event()
        self.thaw = asyncio.Event()

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        if not self.thaw.is_set():
            self.frozen.set()
            await self.thaw.wait()
        await super().apply(conn, schema, events)


async def test_a_projector_frozen_in_its_page_holds_the_projection_for_seconds_only(
    store: tuple[str, AsyncConnectionPool, AsyncConnectionPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen inside its page (its session `idle in transaction`, the position row locked
    FOR UPDATE), a projector held every other one of that projection waiting, with no
    limit: the page's transaction now idles for PAGE_IDLE_TIMEOUT at most, the server ends
    it, the standby applies the page, and the frozen one, thawed, finds its page rolled
    back and applies it again, without an error: a duplicate. Nothing is counted twice."""
    url, pool_a, pool_b = store
    election_id = await _fill(url, random.Random(7), ballots=200)
    entries = await _entries(pool_a)
    after, last = 0, entries[-1].position
    frozen_tally = FrozenTally()
    monkeypatch.setattr(runtime, "PAGE_IDLE_TIMEOUT", 1.0)
    frozen = ProjectionRunner(frozen_tally, pool_a)
    standby = ProjectionRunner(TallyProjection(), pool_b)
    await frozen.prepare()

    stuck = asyncio.ensure_future(frozen.apply_page(after, last, entries))
    await asyncio.wait_for(frozen_tally.frozen.wait(), 10)
    # The standby's page waits on the frozen one's lock, for about a second, not for ever.
    applied = await asyncio.wait_for(standby.apply_page(after, last, entries), 15)
    assert not applied.duplicate
    assert applied.position == last

    frozen_tally.thaw.set()
    again = await asyncio.wait_for(stuck, 10)
    assert again.duplicate
    assert again.position == last
    assert await frozen.position() == last

    served = await _served(pool_b, election_id)
    fresh = ProjectionRunner(TallyProjection(), pool_b)
    assert (await fresh.catch_up()) == 0
    assert served == await _served(pool_a, election_id)
    async with pool_b.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction'"
        )
        row = await cursor.fetchone()
    assert row is not None
    assert row[0] == 0
