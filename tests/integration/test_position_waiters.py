"""Read-your-writes waiters (?min_position=N) park on the positions watcher: one NOTIFY
wakes all of them, and none polls while notifications are heard."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from infra.store.migrations import migrate
from projections.positions import PositionWatcher
from projections.runtime import NOTIFY_CHANNEL
from tests.databases import create_database, drop_database

WAITERS = 1000


class CountingWatcher(PositionWatcher):
    """The real watcher, counting how often it re-reads the positions table."""

    rereads = 0

    async def _reread(self) -> None:
        self.rereads += 1
        await super()._reread()


@pytest.fixture
async def watcher() -> AsyncIterator[CountingWatcher]:
    url = create_database("cardinal_positions")
    migrate(url)
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
    await pool.open()
    found = CountingWatcher(url, pool, fallback_interval=0.05)
    await found.start()
    try:
        yield found
    finally:
        await found.stop()
        await pool.close()
        drop_database(url)


async def _until(condition: object, patience: float = 10) -> None:
    deadline = time.monotonic() + patience
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def _notify(url: str, payload: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))


async def test_a_thousand_waiters_are_woken_by_one_notification(watcher: CountingWatcher) -> None:
    await _until(lambda: watcher.listening)
    waiters = [asyncio.create_task(watcher.wait_for("tally", 7, 30)) for _ in range(WAITERS)]
    await _until(lambda: watcher.waiting == WAITERS)
    # Parked, not polling: the loop stays free (a health check would answer at once).
    # (CPU time of the loop's thread, not the clock: a loaded machine may pause the
    # process for longer, but cannot make a parked loop work.)
    started = time.thread_time()
    await asyncio.sleep(0.3)
    assert time.thread_time() - started < 0.1
    assert watcher.rereads == 0
    assert not any(w.done() for w in waiters)
    await _notify(watcher.database_url, "tally:7")
    assert await asyncio.wait_for(asyncio.gather(*waiters), 10) == [True] * WAITERS
    assert watcher.waiting == 0
    assert watcher.rereads == 0


async def test_waiters_wake_only_for_their_own_projection_and_position(
    watcher: CountingWatcher,
) -> None:
    await _until(lambda: watcher.listening)
    low = asyncio.create_task(watcher.wait_for("tally", 3, 30))
    high = asyncio.create_task(watcher.wait_for("tally", 9, 30))
    other = asyncio.create_task(watcher.wait_for("catalog", 3, 30))
    await _until(lambda: watcher.waiting == 3)
    await _notify(watcher.database_url, "tally:5")
    assert await asyncio.wait_for(low, 5) is True
    await asyncio.sleep(0.1)
    assert not high.done()
    assert not other.done()
    await _notify(watcher.database_url, "catalog:4")
    assert await asyncio.wait_for(other, 5) is True
    high.cancel()


async def test_a_waiter_gives_up_after_its_patience(watcher: CountingWatcher) -> None:
    await _until(lambda: watcher.listening)
    started = time.monotonic()
    assert await watcher.wait_for("tally", 10**9, 0.2) is False
    assert 0.15 < time.monotonic() - started < 5
    assert watcher.waiting == 0


async def test_without_notifications_one_poller_serves_every_waiter(
    watcher: CountingWatcher,
) -> None:
    await _until(lambda: watcher.listening)
    watcher.listening = False  # as while the LISTEN connection is down
    waiters = [asyncio.create_task(watcher.wait_for("tally", 10**9, 0.5)) for _ in range(200)]
    assert await asyncio.gather(*waiters) == [False] * 200
    # One re-read per fallback interval for all of them, not one per waiter.
    assert 1 <= watcher.rereads <= 0.5 / watcher.fallback_interval + 3
