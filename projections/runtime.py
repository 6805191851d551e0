"""Applying the log to a projection exactly once.

A projection version's tracking position moves in the same transaction as its rows. Given a
page "all committed entries with after < position <= last" and the tracked position T:

- last <= T: a duplicate; nothing to do.
- after > T: entries (T, after] were missed (a lost or refused message); they are read from
  the store first, in the same transaction.
- otherwise the entries beyond T are applied.

Any page can therefore be applied any number of times, in any order, with the same result.

One bad entry never stops the others: an entry the projection cannot apply (unreadable, of
an unknown election, a value the database refuses, a bug) is *set aside*. It is recorded in
``projection_set_aside`` with the reason, in the transaction whose position passes it, and
the rest of its page is applied. A rebuild, which builds a new version, tries it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from infra import metrics
from infra.store import EVENTS_TABLE
from infra.store.log import LogEvent, head, read_page
from projections.base import Projection, schema_name

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "cardinal_projections"
PAGE_SIZE = 5000
# How long a live page's transaction may sit idle between its statements (set for that
# transaction alone, by its first statement). A worker frozen inside a page (SIGSTOP, a
# stalled host) holds the projection's position row FOR UPDATE: every other worker of the
# projection waited on it, with no limit, and the projection stood still. Past this the
# server ends the frozen session, its page rolls back, and the others go on; the frozen
# worker, when it wakes, finds its session ended and applies the page again on a fresh
# connection (a duplicate by then). A page's own gaps between statements are its Python
# work on the entries (the tally: about 30 us an entry for a few options, 440 us for a
# STAR election of 100 options, statements included): a run of merged pages (up to 256
# relay pages) is given PAGE_IDLE_PER_ENTRY for each of its positions if that is more,
# lest a long run be cut, retried and cut again for good. Generous on purpose: the limit
# is there to free a frozen worker's lock, not to time a live one (at 5 s and 100 us, a
# page of 20,000 such ballots was cut at each try: merge review mr2). Rebuilds, which hold
# long transactions, take no page lock and are not bounded by it.
PAGE_IDLE_TIMEOUT = 30.0
PAGE_IDLE_PER_ENTRY = 0.001
# Failures that say nothing about the entries: the page is tried again as a whole. (A
# page's session ended by PAGE_IDLE_TIMEOUT is filed by psycopg under InternalError.)
TRANSIENT = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
    psycopg.errors.IdleInTransactionSessionTimeout,
)
# ... except for these, which psycopg files as operational too: a limit an entry's own rows
# went past (SQLSTATE class 54: a key too large for its index, say). Trying again would
# meet it again, and hold up every entry after it: the entry is set aside instead.
ABOUT_THE_ENTRIES = (
    psycopg.errors.ProgramLimitExceeded,
    psycopg.errors.StatementTooComplex,
    psycopg.errors.TooManyColumns,
    psycopg.errors.TooManyArguments,
)
SET_ASIDE = """
INSERT INTO projection_set_aside (name, version, position, election_id, type, reason)
SELECT %s, %s, * FROM unnest(%s::bigint[], %s::uuid[], %s::text[], %s::text[])
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True)
class Applied:
    """What applying a page did: how many entries, and the position now tracked."""

    events: int
    position: int
    duplicate: bool = False
    set_aside: int = 0


class GapTooLarge(Exception):
    """A page starts too far ahead to fill the gap inside one transaction."""


class BeyondTheLog(Exception):
    """A page that ends past the last entry of this store, or whose last entry is another
    than this store's at that position (``strange``): entries it holds are not in it (pages
    of the store this one was restored from, or failed over from, with the entries the
    restore lost). Nothing of it is applied."""

    def __init__(self, name: str, last: int, head: int, strange: int | None = None) -> None:
        where = (
            f"runs past the last entry of this store ({head:,})"
            if strange is None
            else f"holds at position {strange:,} another entry than this store's"
        )
        super().__init__(
            f"projection {name}: a page up to position {last:,} {where}: it holds entries "
            "this store does not have (the store was restored from a backup or failed over, "
            "losing the log's tail); not applied"
        )
        self.last, self.head, self.strange, self.where = last, head, strange, where


class ProjectionRunner:
    """Applies pages of the log to one projection's active version."""

    def __init__(
        self,
        projection: Projection,
        pool: AsyncConnectionPool,
        page_size: int = PAGE_SIZE,
        *,
        page_idle: tuple[float, float] | None = None,
    ) -> None:
        """``page_idle``: (PAGE_IDLE_TIMEOUT, PAGE_IDLE_PER_ENTRY) for this runner's pages
        when not the module's (tests: a runner of their own, the process's others
        untouched)."""
        self.projection = projection
        self.pool = pool
        self.page_size = page_size
        self.page_idle = page_idle
        # (version, position) this runner last committed: while the tracked position is
        # still that, nobody else (a standby, a rebuild's switch) has written the version
        # since, and the projection's caches of its rows hold.
        self._committed: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return self.projection.name

    async def prepare(self) -> None:
        """Give the projection an active version (version 1, empty) if it has none."""
        async with self.pool.connection() as conn, conn.transaction():
            await lock_projection(conn, self.name)
            cursor = await conn.execute(
                "SELECT active_version FROM projections WHERE name = %s", (self.name,)
            )
            row = await cursor.fetchone()
            if row is not None and row[0] is not None:
                return
            version = await create_version(conn, self.projection)
            await conn.execute(
                "INSERT INTO projections (name, active_version, state) VALUES (%s, %s, 'live') "
                "ON CONFLICT (name) DO UPDATE SET active_version = excluded.active_version, "
                "state = 'live', updated_at = now()",
                (self.name, version),
            )
            await expose_version(conn, self.projection, version)
            log.info("projection %s: created version %d", self.name, version)

    async def position(self) -> int:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT p.position FROM projections r JOIN projection_positions p "
                "ON p.name = r.name AND p.version = r.active_version WHERE r.name = %s",
                (self.name,),
            )
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])

    async def apply_page(
        self,
        after: int,
        last: int,
        events: Sequence[LogEvent] | None,
        ends: Sequence[LogEvent] = (),
    ) -> Applied:
        """Apply one page, exactly once, in one transaction (``events`` None: the page's
        entries are read from the store, as for a message that could not be decoded).
        ``ends``: the last entry of each relay page it was merged from, each checked to be
        this store's (same position, stream and version), as ``last`` is checked to be
        within its log (``track``, ``BeyondTheLog``)."""
        started = time.perf_counter()
        _page_span.set(last - after)  # (this task's: read by the page's lock statement)
        try:
            applied = await self._apply_page(after, last, events, ends)
        except psycopg.errors.IdleInTransactionSessionTimeout:
            # This worker stopped inside its page past PAGE_IDLE_TIMEOUT (a frozen process):
            # the server ended its session and rolled the page back, and another worker may
            # have applied it since. Tried again on a fresh connection (a duplicate, then).
            log.warning(
                "projection %s: the page (%d, %d] sat idle in its transaction past %s (was "
                "this process stopped?); the server rolled it back; applying it again",
                self.name,
                after,
                last,
                _idle_limit(self.page_idle),
            )
            applied = await self._apply_page(after, last, events, ends)
        if not applied.duplicate:
            metrics.PROJECTION_APPLY_SECONDS.labels(self.name).observe(
                time.perf_counter() - started
            )
            metrics.PROJECTION_APPLIED.labels(self.name).inc(applied.events)
            metrics.PROJECTION_POSITION.labels(self.name).set(applied.position)
        return applied

    async def _apply_page(
        self, after: int, last: int, events: Sequence[LogEvent] | None, ends: Sequence[LogEvent]
    ) -> Applied:
        # Most pages apply whole: try without a savepoint (two statements fewer); only when
        # that fails is the page applied again, in savepoints, setting aside what fails.
        try:
            return await self._attempt(after, last, events, ends, isolated=False)
        except _Unapplied:
            return await self._attempt(after, last, events, ends, isolated=True)

    async def _attempt(
        self,
        after: int,
        last: int,
        events: Sequence[LogEvent] | None,
        ends: Sequence[LogEvent],
        *,
        isolated: bool,
    ) -> Applied:
        try:
            async with self.pool.connection() as conn, conn.transaction():
                version, tracked = await _lock_active_position(
                    conn, self.name, _idle_limit(self.page_idle)
                )
                if self._committed != (version, tracked):
                    self.projection.forget()  # someone else wrote this version since
                    self._committed = (version, tracked)
                if last <= tracked:
                    return Applied(0, tracked, duplicate=True)
                if events is None:
                    after, events = last, []  # read the whole page from the store
                pending = [e for e in events if e.position > tracked]
                if after > tracked:
                    if after - tracked > self.page_size:
                        raise GapTooLarge(f"{after - tracked} positions missing before {after}")
                    pending = await read_page(conn, tracked, after, self.page_size) + pending
                if isolated:
                    aside = await apply_isolated(conn, self.projection, version, pending)
                else:
                    aside = await _apply_whole(conn, self.projection, version, pending)
                # (refused, and the transaction rolled back, if ``last`` is beyond this
                # store's head or a page's last entry is not this store's: ``BeyondTheLog``)
                await track(conn, self.name, version, last, within_log=True, ends=ends)
            self._committed = (version, last)
            return Applied(len(pending) - aside, last, set_aside=aside)
        except BaseException:
            self._committed = None
            self.projection.forget()
            raise

    async def catch_up(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Apply whatever the store holds beyond the tracked position; return how many.

        ``progress(position, head)`` is called after each page.
        """
        applied = 0
        while True:
            async with self.pool.connection() as conn:
                tracked = await _tracked(conn, self.name)
                upto = await head(conn)
                if tracked >= upto:
                    return applied
                events = await read_page(conn, tracked, upto, self.page_size)
            last = events[-1].position if len(events) == self.page_size else upto
            applied += (await self.apply_page(tracked, last, events)).events
            if progress is not None:
                progress(last, upto)


def transient(error: BaseException) -> bool:
    """Whether a failure to apply entries says nothing about them (tried again as is)."""
    return isinstance(error, TRANSIENT) and not isinstance(error, ABOUT_THE_ENTRIES)


class _Unapplied(Exception):
    """A page that did not apply whole: it is applied again, entry runs in savepoints."""


async def _apply_whole(
    conn: AsyncConnection[Any], projection: Projection, version: int, events: Sequence[LogEvent]
) -> int:
    """Apply every entry, or raise _Unapplied (the transaction is then to be rolled back)."""
    if any(e.unreadable is not None for e in events):
        return await apply_isolated(conn, projection, version, events)
    if events:
        try:
            await projection.apply(conn, schema_name(projection.name, version), events)
        except Exception as error:
            if transient(error):
                raise
            raise _Unapplied from error
    return 0


async def apply_isolated(
    conn: AsyncConnection[Any], projection: Projection, version: int, events: Sequence[LogEvent]
) -> int:
    """Apply ``events`` to a version of ``projection``, setting aside each one that cannot
    be applied; return how many were set aside.

    The entries go in together, in a savepoint. If that fails for any reason but a
    transient one, the savepoint is rolled back and the run is split in two, each half
    tried the same way: the good entries are applied in order, and a bad one is found in
    a few rounds (log2 of the run) and recorded with its reason.
    """
    aside = [(e, e.unreadable) for e in events if e.unreadable is not None]
    readable = [e for e in events if e.unreadable is None] if aside else events
    if readable:
        await _apply_or_split(
            conn, projection, schema_name(projection.name, version), readable, aside
        )
    await record_set_aside(conn, projection.name, version, aside)
    return len(aside)


async def _apply_or_split(
    conn: AsyncConnection[Any],
    projection: Projection,
    schema: str,
    events: Sequence[LogEvent],
    aside: list[tuple[LogEvent, str]],
) -> None:
    try:
        async with conn.transaction():  # a savepoint: a failure undoes this try alone
            await projection.apply(conn, schema, events)
    except Exception as error:
        if transient(error):
            raise
        projection.forget()  # its caches may hold what was just rolled back
        if len(events) == 1:
            aside.append((events[0], f"{type(error).__name__}: {error}"))
            return
        middle = len(events) // 2
        await _apply_or_split(conn, projection, schema, events[:middle], aside)
        await _apply_or_split(conn, projection, schema, events[middle:], aside)


async def record_set_aside(
    conn: AsyncConnection[Any], name: str, version: int, aside: list[tuple[LogEvent, str]]
) -> None:
    """Record entries set aside by a version (in the caller's transaction), loudly."""
    if not aside:
        return
    for event, reason in aside:
        log.error(
            "projection %s SET ASIDE the entry at position %d (%s): %s; the count of its "
            "election is incomplete until a rebuild applies it",
            name,
            event.position,
            event.type,
            reason,
        )
    await conn.execute(
        SET_ASIDE,
        (
            name,
            version,
            [e.position for e, _ in aside],
            [e.election_id for e, _ in aside],
            [e.type for e, _ in aside],
            [reason[:2000] for _, reason in aside],
        ),
    )
    metrics.PROJECTION_SET_ASIDE.labels(name).inc(len(aside))


async def lock_projection(conn: AsyncConnection[Any], name: str) -> None:
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('cardinal-projection'), hashtext(%s))", (name,)
    )


# The page lock, and the transaction's idle limit (set_config(..., true): this transaction
# alone; the pooled connection keeps its own settings for whatever runs on it next).
LOCK_PAGE = (
    "SELECT l.version, l.tracked, "
    "set_config('idle_in_transaction_session_timeout', %s, true) "
    "FROM lock_projection_page(%s) l"
)


# The positions the page being applied by this task spans (its entries, at most).
_page_span: ContextVar[int] = ContextVar("page_span", default=0)


def _idle_limit(given: tuple[float, float] | None = None) -> str:
    """The idle limit of this task's page, as PostgreSQL reads it ("5000ms"):
    PAGE_IDLE_TIMEOUT, or PAGE_IDLE_PER_ENTRY for each position of a long run (``given``:
    these two, when not the module's)."""
    timeout, per_entry = given if given is not None else (PAGE_IDLE_TIMEOUT, PAGE_IDLE_PER_ENTRY)
    seconds = max(timeout, _page_span.get() * per_entry)
    return f"{max(1, round(seconds * 1000))}ms"


async def _lock_active_position(
    conn: AsyncConnection[Any], name: str, idle_limit: str
) -> tuple[int, int]:
    """The active version and its position, locked for this transaction (and the WAL flush
    not waited for at its commit), in one round trip: ``lock_projection_page``; the
    transaction may then idle between statements for PAGE_IDLE_TIMEOUT at most, not for
    ever while every other worker waits on its lock.

    The registry row is read FOR SHARE: a version switch takes it FOR UPDATE, so no page is
    applied to a version while it is being replaced. The function reads it and the position
    in two statements, not one join: a join blocked by a switch would re-check the updated
    registry row against the old version's position row after the switch commits, and find
    no row at all.
    """
    cursor = await conn.execute(LOCK_PAGE, (idle_limit, name), prepare=True)
    row = await cursor.fetchone()
    if row is not None and row[0] is not None and row[1] is not None:
        return int(row[0]), int(row[1])
    raise LookupError(f"projection {name} has no active version; run prepare() first")


async def _tracked(conn: AsyncConnection[Any], name: str) -> int:
    cursor = await conn.execute(
        "SELECT p.position FROM projections r JOIN projection_positions p "
        "ON p.name = r.name AND p.version = r.active_version WHERE r.name = %s",
        (name,),
    )
    row = await cursor.fetchone()
    return 0 if row is None else int(row[0])


async def track(
    conn: AsyncConnection[Any],
    name: str,
    version: int,
    position: int,
    *,
    within_log: bool = False,
    ends: Sequence[LogEvent] = (),
) -> None:
    """Move a version's position and, if it is the active version, announce it, in one
    statement (it runs per page). ``within_log``: only if the log holds an entry at or past
    ``position``, and each of ``ends`` (pages' last entries) is the entry this store holds
    at its position (same stream and version: one index probe each), all checked in the
    same statement; else raise ``BeyondTheLog`` (the caller's transaction is then to be
    rolled back): a page of entries not in this store, which a restore's lost tail leaves
    in the broker, is never applied nor moves a position past the head.

    Only the active version announces: the announcement wakes read-your-writes waiters
    (``PositionWatcher``), who then read the served version. A rebuild's version being
    built, once past a lagging live version, announced a position nobody served yet, and
    voters got results without their ballot as if current. A switch tracks its version
    after making it active, so the switch itself announces the new version's position.
    """
    cursor = await conn.execute(
        f"WITH head AS (SELECT max(notification_id) AS head FROM {EVENTS_TABLE} "
        "WHERE %(within_log)s), "
        "strange AS (SELECT min(p.pos) AS pos FROM unnest(%(end_positions)s::bigint[], "
        "%(end_streams)s::uuid[], %(end_versions)s::bigint[]) AS p(pos, stream, ver) "
        f"WHERE NOT EXISTS (SELECT 1 FROM {EVENTS_TABLE} e WHERE e.originator_id = p.stream "
        "AND e.originator_version = p.ver AND e.notification_id = p.pos)), "
        "moved AS (UPDATE projection_positions SET position = %(position)s, "
        "updated_at = now() WHERE name = %(name)s AND version = %(version)s "
        "AND (NOT %(within_log)s OR (%(position)s <= (SELECT head FROM head) "
        "AND (SELECT pos FROM strange) IS NULL)) RETURNING 1) "
        "SELECT EXISTS (SELECT 1 FROM moved), (SELECT head FROM head), "
        "(SELECT pos FROM strange), "
        "(SELECT pg_notify(%(channel)s, %(announcement)s) FROM moved WHERE EXISTS ("
        "SELECT 1 FROM projections WHERE name = %(name)s AND active_version = %(version)s))",
        {
            "position": position,
            "name": name,
            "version": version,
            "within_log": within_log,
            "end_positions": [e.position for e in ends],
            "end_streams": [e.stream_id for e in ends],
            "end_versions": [e.version for e in ends],
            "channel": NOTIFY_CHANNEL,
            "announcement": f"{name}:{position}",
        },
        prepare=True,
    )
    row = await cursor.fetchone()
    if within_log and row is not None and not row[0]:
        strange = None if row[2] is None else int(row[2])
        raise BeyondTheLog(name, position, int(row[1] or 0), strange)


async def create_version(conn: AsyncConnection[Any], projection: Projection) -> int:
    """Create the next version's schema and tables, tracked from position 0."""
    cursor = await conn.execute(
        "SELECT coalesce(max(version), 0) + 1 FROM projection_positions WHERE name = %s",
        (projection.name,),
    )
    row = await cursor.fetchone()
    assert row is not None
    version = int(row[0])
    schema = schema_name(projection.name, version)
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    await conn.execute(
        sql.SQL("SELECT {}(%s)").format(sql.Identifier(f"create_{projection.name}_tables")),
        (schema,),
    )
    await conn.execute(
        "INSERT INTO projection_positions (name, version, position) VALUES (%s, %s, 0)",
        (projection.name, version),
    )
    return version


async def expose_version(conn: AsyncConnection[Any], projection: Projection, version: int) -> None:
    """Point the read_models views at this version (atomic with the caller's transaction)."""
    schema = schema_name(projection.name, version)
    for table in projection.tables:
        view = sql.Identifier("read_models", f"{projection.name}_{table}")
        await conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view))
        await conn.execute(
            sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(
                view, sql.Identifier(schema, table)
            )
        )
    position_view = sql.Identifier("read_models", f"{projection.name}_position")
    await conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(position_view))
    await conn.execute(
        sql.SQL(
            "CREATE VIEW {} AS SELECT position FROM projection_positions "
            "WHERE name = {} AND version = {}"
        ).format(position_view, sql.Literal(projection.name), sql.Literal(version))
    )
