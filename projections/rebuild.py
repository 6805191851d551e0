"""Blue/green rebuilds: a new version built beside the one serving, then switched to.

1. A new version (schema and tables) is created and marked as building.
2. It is filled from the store at full speed: big pages, and for projections that offer a
   bulk builder, state kept in memory and written with COPY at the end.
3. When it has caught up, one short transaction locks the projection's registry row (live
   workers wait), applies what is still missing, points the read_models views at the new
   version and makes it active. Readers never see a half-built version, and read-your-writes
   waiters hear of the new version's position only then (only the active version announces).
4. The old version's schema is dropped.

If the rebuild fails or is killed, the old version keeps serving; the registry says why
(or the status reports the rebuild silent); running it again starts a fresh version.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from infra.store import EVENTS_TABLE
from infra.store.log import LogEvent, head, read_page
from projections.base import BulkBuilder, Projection, schema_name
from projections.runtime import (
    ABOUT_THE_ENTRIES,
    apply_isolated,
    create_version,
    expose_version,
    lock_projection,
    record_set_aside,
    track,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 20_000
# What a bulk build can meet in entries no reader has met before: values the database
# refuses, votes that do not add up. Page by page, such entries are set aside one by one.
UNWRITABLE = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.ProgrammingError,
    psycopg.InternalError,
    psycopg.NotSupportedError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    # A limit an entry's rows went past (a key too large for its index): operational to
    # psycopg, but about the entries, as the live runner takes it (projections/runtime.py).
    *ABOUT_THE_ENTRIES,
)


class RebuildRefused(Exception):
    """A rebuild cannot start (another is running, or the projection has no version)."""


class RebuildRunning(RebuildRefused):
    """Another rebuild of the same projection holds its rebuild lock, in any process."""


@dataclass
class Progress:
    version: int
    position: int
    head: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext('cardinal-rebuild'), hashtext(%s))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext('cardinal-rebuild'), hashtext(%s))"


async def _take_rebuild_lock(conn: AsyncConnection[Any], name: str) -> bool:
    cursor = await conn.execute(TRY_LOCK, (name,))
    row = await cursor.fetchone()
    return row is not None and bool(row[0])


# Whether a session holds TRY_LOCK's lock, read from pg_locks (a two-key advisory lock is
# classid, objid, objsubid 2): looking takes no lock.
HELD = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = hashtext('cardinal-rebuild')::oid AND objid = hashtext(%s)::oid
)
"""


async def rebuild_running(conn: AsyncConnection[Any], name: str) -> bool:
    """Whether some process is rebuilding ``name`` now (it holds the rebuild lock). It
    looks without taking the lock: taking it for a moment refused a rebuild starting
    meanwhile as "already running", and a request cancelled between the lock and its
    release left it held by a pooled connection, refusing every rebuild after (the merge
    review)."""
    cursor = await conn.execute(HELD, (name,))
    row = await cursor.fetchone()
    return row is not None and bool(row[0])


async def running_detail(conn: AsyncConnection[Any], name: str) -> str:
    """What a refusal says of the rebuild of ``name`` that is running: the version it builds
    and since when, as the registry has them (not yet, in its first moments)."""
    cursor = await conn.execute(
        "SELECT building_version, rebuild_started_at FROM projections "
        "WHERE name = %s AND state = 'rebuilding'",
        (name,),
    )
    row = await cursor.fetchone()
    which = ""
    if row is not None and row[0] is not None:
        since = f", started {row[1].isoformat(timespec='seconds')}" if row[1] else ""
        which = f" (version {row[0]}{since})"
    return f"a rebuild of {name} is already running{which}; follow it in the status"


class Rebuild:
    """Rebuilds one projection; ``run`` returns the new active version."""

    def __init__(
        self,
        projection: Projection,
        pool: AsyncConnectionPool,
        *,
        page_size: int = PAGE_SIZE,
        progress: Callable[[Progress], None] | None = None,
        started: Callable[[int], None] | None = None,
    ) -> None:
        self.projection = projection
        self.pool = pool
        self.page_size = page_size
        self.progress = progress
        # Told the new version once the lock is held and the registry says `rebuilding`:
        # from then on this rebuild is the one running (how an HTTP request answers 202).
        self.started = started

    @property
    def name(self) -> str:
        return self.projection.name

    async def run(self) -> int:
        async with self.pool.connection() as guard:
            # Held for the whole rebuild, on a connection of its own: a second rebuild of
            # the same projection is refused, and a killed one releases it by dying.
            if not await _take_rebuild_lock(guard, self.name):
                raise RebuildRunning(f"a rebuild of {self.name} is already running")
            try:
                version, old = await self._start()
                try:
                    if self.started is not None:
                        self.started(version)
                    await self._fill(version)
                    await self._switch(version)
                except BaseException as error:
                    await self._failed(version, error)
                    raise
                await self._drop(old)
                log.info("projection %s: version %d is live (was %d)", self.name, version, old)
                return version
            finally:
                await guard.execute(UNLOCK, (self.name,))

    async def _start(self) -> tuple[int, int]:
        async with self.pool.connection() as conn, conn.transaction():
            await lock_projection(conn, self.name)
            cursor = await conn.execute(
                "SELECT active_version, building_version FROM projections WHERE name = %s",
                (self.name,),
            )
            row = await cursor.fetchone()
            if row is None or row[0] is None:
                raise RebuildRefused(f"projection {self.name} has no live version to replace")
            active, leftover = row
            if leftover is not None:  # a rebuild that failed or was killed: start afresh
                await self._discard(conn, int(leftover))
            version = await create_version(conn, self.projection)
            await conn.execute(
                "UPDATE projections SET building_version = %s, state = 'rebuilding', "
                "detail = NULL, rebuild_started_at = now(), rebuild_position = 0, "
                "rebuild_head = NULL, rebuild_rate = NULL, updated_at = now() WHERE name = %s",
                (version, self.name),
            )
        log.info("projection %s: building version %d beside version %d", self.name, version, active)
        return version, int(active)

    async def _fill(self, version: int) -> None:
        # A bulk build holds a million long-lived objects: the cyclic collector would walk
        # them again and again (a third of the run, measured). Nothing here makes cycles.
        collecting = gc.isenabled()
        gc.disable()
        try:
            bulk = self.projection.bulk()
            try:
                await self._fill_pages(version, bulk)
            except UNWRITABLE as error:
                if bulk is None:
                    raise
                # Its write was rolled back whole: build page by page instead, where each
                # entry that cannot be applied is set aside on its own.
                log.warning(
                    "projection %s: the bulk build failed (%s: %s); building page by page",
                    self.name,
                    type(error).__name__,
                    error,
                )
                del bulk
                self.projection.forget()
                await self._fill_pages(version, None)
        finally:
            if collecting:
                gc.enable()

    async def _fill_pages(self, version: int, bulk: BulkBuilder | None) -> None:
        started = time.perf_counter()
        position = events = 0
        async with self.pool.connection() as conn:
            # Fresh statistics keep the page reads on the notification_id index (stale ones,
            # after a burst of ballots, can make PostgreSQL sort whole ranges on disk).
            await conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(EVENTS_TABLE)))
            upto = await head(conn)
            ahead: asyncio.Future[list[LogEvent]] | None = None
            while position < upto:
                page = await (ahead or read_page(conn, position, upto, self.page_size))
                ahead = None
                last = page[-1].position if len(page) == self.page_size else upto
                if bulk is not None:
                    if last < upto:
                        # Ask for the next page now: PostgreSQL reads it on the other core
                        # while this one is counted.
                        ahead = asyncio.ensure_future(read_page(conn, last, upto, self.page_size))
                        await asyncio.sleep(0)
                    bulk.add(page)
                else:
                    async with conn.transaction():
                        await apply_isolated(conn, self.projection, version, page)
                        await track(conn, self.name, version, last)
                position, events = last, events + len(page)
                await self._report(
                    conn,
                    version=version,
                    position=position,
                    upto=upto,
                    events=events,
                    started=started,
                )
                if position >= upto:
                    upto = await head(conn)  # the log moved on meanwhile: keep going
            if bulk is not None:
                async with conn.transaction():
                    await bulk.write(conn, schema_name(self.name, version))
                    await record_set_aside(conn, self.name, version, bulk.set_aside)
                    await track(conn, self.name, version, position)
        self.projection.forget()

    async def _switch(self, version: int) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM projections WHERE name = %s FOR UPDATE", (self.name,))
            cursor = await conn.execute(
                "SELECT position FROM projection_positions WHERE name = %s AND version = %s",
                (self.name, version),
            )
            row = await cursor.fetchone()
            position = int(row[0]) if row else 0
            upto = await head(conn)
            while position < upto:  # what arrived since the fill: usually a few pages
                page = await read_page(conn, position, upto, self.page_size)
                await apply_isolated(conn, self.projection, version, page)
                position = page[-1].position if len(page) == self.page_size else upto
            await expose_version(conn, self.projection, version)
            await conn.execute(
                "UPDATE projections SET active_version = %s, building_version = NULL, "
                "state = 'live', detail = NULL, rebuild_position = %s, rebuild_head = %s, "
                "updated_at = now() WHERE name = %s",
                (version, position, position, self.name),
            )
            # After the version is made active: only the active version announces its
            # position (``track``), and this announcement wakes the waiters up to it.
            await track(conn, self.name, version, position)
        self.projection.forget()

    async def _report(
        self,
        conn: AsyncConnection[Any],
        *,
        version: int,
        position: int,
        upto: int,
        events: int,
        started: float,
    ) -> None:
        progress = Progress(version, position, upto, events, time.perf_counter() - started)
        await conn.execute(
            "UPDATE projections SET rebuild_position = %s, rebuild_head = %s, "
            "rebuild_rate = %s, updated_at = now() WHERE name = %s",
            (position, upto, progress.rate, self.name),
        )
        if self.progress is not None:
            self.progress(progress)

    async def _failed(self, version: int, error: BaseException) -> None:
        if isinstance(error, (SystemExit, KeyboardInterrupt, asyncio.CancelledError)):
            # Its process was stopped (SIGTERM, Ctrl-C): the exception's name and its exit
            # status ("SystemExit: 0") say nothing to the operator who reads this.
            reason = f"rebuild of version {version} was interrupted: its process was stopped"
        else:
            reason = f"rebuild of version {version} failed: {type(error).__name__}: {error}"
        log.error("projection %s: %s; the previous version keeps serving", self.name, reason)
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE projections SET state = 'failed', detail = %s, updated_at = now() "
                "WHERE name = %s",
                (reason[:2000], self.name),
            )

    async def _drop(self, version: int) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await self._discard(conn, version)

    async def _discard(self, conn: AsyncConnection[Any], version: int) -> None:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(schema_name(self.name, version))
            )
        )
        for table in ("projection_positions", "projection_set_aside"):
            await conn.execute(
                sql.SQL("DELETE FROM {} WHERE name = %s AND version = %s").format(
                    sql.Identifier(table)
                ),
                (self.name, version),
            )
