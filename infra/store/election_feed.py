"""Keeps the API's in-memory elections current by following election events in the log.

A close recorded by another API process takes effect here within a poll interval (sooner:
the writer announces a commit that holds an election's event on ELECTIONS_CHANNEL, which
wakes the feed; commits of ballots alone do not, so a feed wakes for what it reads). The
log order stays the law for counting: a ballot recorded after its election's Closed event
is not counted, whatever a cache believed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import StoredEvent
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from domain.application import VotingApplication
from domain.election import Election
from domain.ports import StoreUnavailable
from infra.store import ELECTIONS_CHANNEL, EVENTS_TABLE
from infra.store.names import ALIVE

log = logging.getLogger(__name__)

ELECTION_TOPIC_PREFIX = f"{Election.__module__}:{Election.__qualname__}."
PAGE = 1000
MIN_SCAN_INTERVAL = 0.05
# How long a start waits for the first load of every election (it takes milliseconds; a
# store that is locked or frozen holds the start, and a SIGTERM, no longer than this), and
# a listing for it after. Until it is loaded, /api/ready answers 503.
START_WAIT = 5.0
LISTING_WAIT = 1.0
SYNC_WAIT = 2.0  # for a sync's catch-up (behind the follower's, if it holds the scan)
NOT_LOADED = "the elections are still being loaded from the event store; retry in a few seconds"
SELECT = f"""
SELECT notification_id, originator_id, originator_version, topic, state
FROM {EVENTS_TABLE}
WHERE notification_id > %s AND notification_id <= %s AND topic LIKE %s
ORDER BY notification_id LIMIT {PAGE}
"""
# The visible head and the first page up to it, in one round trip (one snapshot): a row
# with only the head where no election event is new.
HEAD_AND_PAGE = f"""
SELECT h.head, e.notification_id, e.originator_id, e.originator_version, e.topic, e.state
FROM (SELECT coalesce(max(notification_id), 0) AS head FROM {EVENTS_TABLE}) h
LEFT JOIN LATERAL (
    SELECT * FROM {EVENTS_TABLE}
    WHERE notification_id > %s AND notification_id <= h.head AND topic LIKE %s
    ORDER BY notification_id LIMIT {PAGE}
) e ON true
"""


class ElectionFeed:
    """Loads every election at start, then follows new election events."""

    def __init__(
        self,
        app: VotingApplication,
        database_url: str,
        poll_interval: float = 1.0,
        reads: AsyncConnectionPool | None = None,
    ) -> None:
        self.app = app
        self.database_url = database_url
        self.poll_interval = poll_interval
        self.position = 0
        self.loaded = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # One catch-up at a time (the follower's or a sync's), and when the last one that
        # completed started: a sync asked before that has nothing left to wait for.
        self._scanning = asyncio.Lock()
        self._scanned_from = float("-inf")
        # Set (and replaced) each time the position moves: ``reached`` waits on it.
        self._moved = asyncio.Event()
        self.reads = reads
        if reads is not None:
            app.catch_up = self.sync

    async def start(self, wait: float | None = None) -> None:
        """Start following, and return once every election in the log is loaded (or after
        ``wait`` seconds, if the store does not answer: listings then answer 503 until it
        does). Before, a restarted API listed no elections until its first scan ran."""
        self._task = asyncio.create_task(self._follow(), name="election-feed")
        wait = START_WAIT if wait is None else wait
        try:
            await asyncio.wait_for(self.loaded.wait(), wait)
        except TimeoutError:
            log.warning("election feed: not loaded after %.0f s; listings wait for it", wait)

    async def complete(self) -> None:
        """Return once every election recorded before the start is loaded; raise
        StoreUnavailable (a 503) if that takes longer than LISTING_WAIT."""
        if not self.loaded.is_set():
            try:
                await asyncio.wait_for(self.loaded.wait(), LISTING_WAIT)
            except TimeoutError:
                raise StoreUnavailable(NOT_LOADED) from None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url,
                    autocommit=True,
                    connect_timeout=2,
                    **ALIVE,
                ) as conn:
                    listen = sql.SQL("LISTEN {}").format(sql.Identifier(ELECTIONS_CHANNEL))
                    await conn.execute(listen)
                    while True:
                        await self._scan(conn)
                        self.loaded.set()
                        await self._wait_for_notify(conn)
            except asyncio.CancelledError:
                raise
            except (psycopg.OperationalError, psycopg.errors.UndefinedTable) as error:
                # Before migrations, or the database is restarting: try again shortly.
                log.debug("election feed waiting for the store: %s", error)
                await asyncio.sleep(self.poll_interval)

    async def sync(self) -> None:
        """Return once every election event recorded before this call is applied here: a
        catch-up that started after the call has completed (this one's, on a connection of
        the reads pool, or another's it waited behind). It costs a read of what is new in
        the log since the last catch-up, not of any election: a voter token another process
        issued a moment ago is looked for so (``VotingApplication.token_holder_election``).
        StoreUnavailable if the store does not answer."""
        asked = time.monotonic()
        assert self.reads is not None
        try:
            async with asyncio.timeout(SYNC_WAIT), self._scanning:
                if self._scanned_from >= asked:
                    return  # one that started after the call completed meanwhile
                started = time.monotonic()
                async with self.reads.connection() as conn:
                    await self._catch_up(conn)
                self._scanned_from = started
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
            raise StoreUnavailable(
                "the event store did not answer in time; try again in a few seconds"
            ) from error

    async def reached(self, position: int, within: float) -> bool:
        """Whether this process's elections reflect every election event up to ``position``
        of the log, waiting up to ``within`` seconds for it: a position recorded before the
        call (a close's receipt, written through any process) takes one ``sync``; one past
        the head, the catch-ups that pass it. False if not within the time, or if the store
        did not answer (the caller serves what it holds, saying so)."""
        if self.position >= position:
            return True
        if self.reads is None:
            return False
        try:
            async with asyncio.timeout(within):
                await self.sync()
                while self.position < position:
                    await self._moved.wait()
        except (TimeoutError, StoreUnavailable):
            return False
        return True

    def _advance(self, position: int) -> None:
        self.position = position
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def _scan(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async with self._scanning:
            started = time.monotonic()
            await self._catch_up(conn)
            self._scanned_from = started

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # Every row up to the visible head has committed (inserts hold the table lock until
        # commit), so scanning up to it and moving past it skips nothing; moving past the
        # ballots in between keeps each wake-up proportional to what is new.
        cursor = await conn.execute(HEAD_AND_PAGE, (self.position, ELECTION_TOPIC_PREFIX + "%"))
        first = await cursor.fetchall()
        head = int(first[0][0])
        rows = [row[1:] for row in first if row[1] is not None]
        while self.position < head:
            if not rows:
                self._advance(head)
                return
            for event in self._readable(rows):
                try:
                    self.app.observe([event])
                except Exception as error:  # keep following; the election reloads on use
                    log.error("election feed: cannot apply %r: %s", event, error)
                    self.app.forget(event.originator_id)
            self._advance(head if len(rows) < PAGE else int(rows[-1][0]))
            if self.position < head:
                cursor = await conn.execute(
                    SELECT, (self.position, head, ELECTION_TOPIC_PREFIX + "%")
                )
                rows = await cursor.fetchall()

    def _readable(self, rows: list[tuple[Any, ...]]) -> list[DomainEventProtocol[UUID]]:
        """The rows as election events; one that cannot be read is logged and skipped,
        and its election dropped from the cache (the next use reads it from the store)."""
        events = []
        for position, stream_id, version, topic, state in rows:
            try:
                stored = StoredEvent(stream_id, version, topic, bytes(state))
                events.append(self.app.mapper.to_domain_event(stored))
            except Exception as error:
                log.error(
                    "election feed: the entry at position %s (%s) cannot be read, skipped: %s",
                    position,
                    topic,
                    error,
                )
                self.app.forget(stream_id)
        return events

    async def _wait_for_notify(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
            pass
        # Elections created in a burst announce themselves commit by commit; a short pause
        # lets one scan cover many of them.
        await asyncio.sleep(MIN_SCAN_INTERVAL)
