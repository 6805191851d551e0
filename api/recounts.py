"""Time travel's recounts: one election replayed from the log, off the event loop.

A recount is CPU work as long as the election (decoding and counting every ballot entry,
then a ranked method's tabulation): it runs in a worker thread, page by page as the log is
read, so that the API's event loop keeps answering meanwhile. One runs at a time per
process and turn (``run_shared``: auditors and admins have a turn of their own), and
identical requests share the one already running. Everyone else's turn (client and operator
tokens, voter tokens, no token) owes a rest of REST_FACTOR times each recount's time (its
CPU time, at most its wall time), a leaky bucket: a new recount starts while at most BURST
seconds are owed, so that those readers, whatever they ask, hold at most about a quarter of
a core per process in the long run, and a few small recounts in a row are not refused.

A replay also notes, for every position it passed, what a reader of stepped results saw
there (``StepIndex``): the last publication, the election's status and its entries set
aside. The log up to a position never changes, so once an election's log has been replayed
up to a position, any earlier position maps to its publication without replaying again.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from psycopg import AsyncConnection
from starlette.exceptions import HTTPException

from api import turns
from domain.election import ElectionStatus
from domain.errors import NotFound
from domain.publication import Steps
from domain.recount import ElectionCount, Recount
from domain.rules import ElectionRules
from infra.audit.records import Entry, election_entries, election_page
from infra.runtime.bootstrap import Services
from infra.store import EVENTS_TABLE
from projections.queries import TallySnapshot
from projections.results import recounted_snapshot

T = TypeVar("T")

RECOUNT_WAIT = 1.0  # seconds a recount waits for the one running to end, then 503
BUSY = "a recount is running in this process (one runs at a time); retry in a few seconds"
BATCH = 2_000  # log entries handed to the worker thread at a time
# Every recount in the turn of readers other than auditors and admins (and every long replay
# of the tally's lag for them, ``last_publication``) owes a rest of REST_FACTOR times as long
# as it took (``charged``), on top of its own time: a leaky bucket whose level is
# ``Services.recounts_rest_until`` less now. A new one starts while at most BURST seconds
# are owed (so a handful of small recounts in a row, or a few readers at once, pass), else
# it is a 503 busy at once with Retry-After the seconds until BURST is owed again; nothing
# sleeps in the turn. In the long run they hold at most 1 / (1 + REST_FACTOR) of a core per
# process, a quarter: one STV recount of 50,000 ballots took 2-5 s of CPU (5-15 s wall),
# and anonymous readers asking distinct positions kept one running.
REST_FACTOR = 3.0
BURST = 3.0  # seconds of rest the limited turn may owe and still start a recount
RESTING = (
    "recounts for readers other than auditors and admins ran in this process; each owes a "
    "rest of {factor:g} times as long as it took, and the next starts once at most {burst:g} s "
    "are owed (positions already counted are answered meanwhile); retry in {seconds} s"
)
clock = time.monotonic  # (a test gives a recount a known duration through these two)
cpu_clock = time.process_time

CLOSED_AT = f"""
SELECT min(notification_id) FROM {EVENTS_TABLE}
WHERE originator_id = %s AND topic LIKE '%%:Election.Closed'
"""


async def closed_at(conn: AsyncConnection[Any], election_id: UUID) -> int | None:
    """The position of the election's Closed entry in the log (None: not closed)."""
    cursor = await conn.execute(CLOSED_AT, (election_id,))
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])


CREATED_AT = f"""
SELECT min(notification_id) FROM {EVENTS_TABLE} WHERE originator_id = %s
"""


async def created_at(conn: AsyncConnection[Any], election_id: UUID) -> int | None:
    """The position of the election's creation in the log (None: not in the log)."""
    cursor = await conn.execute(CREATED_AT, (election_id,))
    row = await cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def untouched(conn: AsyncConnection[Any], election_id: UUID, after: int, upto: int) -> bool:
    """Whether the log holds no entry of the election after ``after`` up to ``upto``: then
    what its readers saw at ``after`` they saw up to ``upto`` (one read, not a replay)."""
    return not await election_page(conn, election_id, after, 1, upto)


def not_yet(election_id: UUID, at: int) -> NotFound:
    """The answer for a position before the election existed, however it was found out."""
    return NotFound(f"election {election_id} did not exist yet at position {at}")


@dataclass(frozen=True)
class StepIndex:
    """What one election's log held up to ``reach``, as stepped readers see it."""

    election_id: UUID
    reach: int
    created_at: int
    opened_at: int | None
    closed_at: int | None
    # positions where what stepped readers see changed, ascending: each step's publication,
    # and the Opened entry before any (``Steps``: one rule for the tally, time travel, verify)
    publications: tuple[int, ...]
    set_aside: tuple[int, ...]  # positions of the election's entries set aside, ascending

    def covers(self, at: int) -> bool:
        """Whether ``at`` is a stepped reader's position this index answers for: reached,
        and before the close (from the close on, results are exact)."""
        return at <= self.reach and (self.closed_at is None or at < self.closed_at)

    def view(self, at: int) -> tuple[int, ElectionStatus, int]:
        """At ``at`` (at most ``reach``, not after the close): where what a stepped reader
        sees last changed (``Steps.position`` then: the last publication, the Opened entry
        before any, the creation before that), the election's status then, and its entries
        set aside by then."""
        if at < self.created_at:
            raise not_yet(self.election_id, at)
        found = bisect.bisect_right(self.publications, at)
        shown = self.publications[found - 1] if found else self.created_at
        opened = self.opened_at is not None and self.opened_at <= at
        status = ElectionStatus.OPEN if opened else ElectionStatus.DRAFT
        return shown, status, bisect.bisect_right(self.set_aside, at)

    def size(self) -> int:
        """About the bytes it takes (a step of one publishes at every ballot entry)."""
        return 300 + 40 * (len(self.publications) + len(self.set_aside))


@dataclass(frozen=True)
class Recounted:
    """A recount as of ``target``: the rules, the status then, and the snapshot (counters,
    not ballots); with the step index of the whole replay (which may reach further)."""

    rules: ElectionRules
    status: ElectionStatus
    snapshot: TallySnapshot
    index: StepIndex


class _Replay:
    """One election's entries applied in position order; used by one thread at a time
    (each batch is handed over by an ``await``, never shared)."""

    def __init__(self, mapper: Mapper[UUID], election_id: UUID, target: int) -> None:
        self.mapper = mapper
        self.election_id = election_id
        self.target = target
        self.recount = Recount()
        self.captured: tuple[ElectionRules, ElectionStatus, TallySnapshot] | None = None
        self.missing = False  # the election did not exist yet at the target
        self.created_at = 0
        self.opened_at: int | None = None
        self.publications: list[int] = []
        self.set_aside: list[int] = []

    def apply(self, batch: list[Entry]) -> None:
        recount, election_id = self.recount, self.election_id
        for entry in batch:
            if entry.position > self.target:
                self.capture()
            aside = len(recount.set_aside)
            try:
                event = self.mapper.to_domain_event(
                    StoredEvent(entry.stream_id, entry.version, entry.topic, entry.state)
                )
            except Exception as error:  # an unreadable entry: left out, and said so
                recount.position = entry.position
                recount.put_aside(entry.position, election_id, f"{type(error).__name__}")
            else:
                recount.apply(entry.position, event)
            if len(recount.set_aside) > aside and recount.set_aside[-1].election_id in (
                election_id,
                None,
            ):
                self.set_aside.append(entry.position)
            count = recount.elections.get(election_id)
            if count is None:
                continue
            if not self.created_at:
                self.created_at = entry.position
            if self.opened_at is None and count.status is ElectionStatus.OPEN:
                self.opened_at = entry.position
            steps = count.steps
            if entry.position in (steps.published_at, steps.opened_at):
                self.publications.append(entry.position)

    def capture(self) -> None:
        """Keep the count as of the target (once: the replay may go on past it)."""
        if self.captured is not None or self.missing:
            return
        count = self.recount.elections.get(self.election_id)
        if count is None:
            self.missing = True
            return
        set_aside = sum(
            1 for s in self.recount.set_aside if s.election_id in (self.election_id, None)
        )
        snapshot = recounted_snapshot(count, self.target, set_aside)
        self.captured = (count.rules, count.status, snapshot)

    def finish(self, reach: int) -> Recounted:
        self.capture()
        if self.captured is None:
            raise not_yet(self.election_id, self.target)
        count = self.recount.elections[self.election_id]
        rules, status, snapshot = self.captured
        index = StepIndex(
            election_id=self.election_id,
            reach=reach,
            created_at=self.created_at,
            opened_at=self.opened_at,
            closed_at=count.closed_at,
            publications=tuple(self.publications),
            set_aside=tuple(self.set_aside),
        )
        return Recounted(rules, status, snapshot, index)


async def replay(services: Services, election_id: UUID, target: int, reach: int) -> Recounted:
    """The election recounted from the log as of ``target``, the replay going on to
    ``reach`` (at least ``target``) for its step index. The log is read here, on the event
    loop; each batch of entries is decoded and counted in a worker thread."""
    state = _Replay(services.app.mapper, election_id, target)
    batch: list[Entry] = []
    async with services.reads.connection() as conn:
        async for entry in election_entries(conn, election_id, reach):
            batch.append(entry)
            if len(batch) >= BATCH:
                await asyncio.to_thread(state.apply, batch)
                batch = []
    if batch:
        await asyncio.to_thread(state.apply, batch)
    return await asyncio.to_thread(state.finish, reach)


# Where the tally stands, and the election's publication there: a row even while the
# tally holds no row of the election (its creation not applied yet).
TALLY_STEPS = """
SELECT p.position, coalesce(e.entries, 0), coalesce(e.published_position, 0)
FROM read_models.tally_position p
LEFT JOIN read_models.tally_elections e ON e.election_id = %s
"""
LAG_PAGE = 1_000  # the election's entries past the tally read at a time
# So few entries of the tally's lag are decoded on the event loop, outside any turn (a
# thread hop costs more); more, in the limited turn.
INLINE = 50


async def last_publication(
    services: Services,
    conn: AsyncConnection[Any],
    election_id: UUID,
    rules: ElectionRules,
    at: int,
) -> int | None:
    """The position of an open election's last publication at or before ``at`` as the log
    has it (``Steps.position``: before any, the Opened entry's, or the creation's; 0 if the
    tally holds no row of it), whatever the tally's lag; None if the tally has published after
    ``at`` already (a position in the past: the step index or a replay answers it).

    The tally's publication stands up to the tally's position; from there on, the
    election's entries the tally has not applied yet are counted under the same law as a
    replay's (``domain.publication``), starting from the tally's count of entries. So the
    work is the tally's lag (usually none, or a few entries), never a replay, and the
    answer is the same whether the tally is behind or not.

    Asked only for readers of the limited turn (neither auditors nor admins): a lag of more
    than INLINE entries is replayed in that turn, owing its rest like a recount, and kept
    (the tally stopped, each ``?at=`` decoded every entry it had not applied, outside any
    turn: merge review of 3fd17ef); up to INLINE, here, like any request's own work."""
    cursor = await conn.execute(TALLY_STEPS, (election_id,), prepare=True)
    row = await cursor.fetchone()
    tallied, entries, published = (0, 0, 0) if row is None else (int(row[0] or 0), row[1], row[2])
    if tallied >= at:
        return None if published > at else published
    lag = _Lag(
        services.app.mapper,
        election_id,
        rules,
        at=at,
        tallied=tallied,
        entries=entries,
        published=published,
    )
    first = await election_page(conn, election_id, tallied, INLINE + 1, at)
    if len(first) <= INLINE:
        lag.state.apply(first)
        return lag.found()
    key = ("lag", election_id, tallied, at)
    kept: int | None = services.travel_cache.get(key)
    if kept is not None:
        return kept
    return await run_shared(services, key, partial(_replay_lag, services, lag, key), role=False)


class _Lag:
    """The election's entries past the tally's position up to ``at``, counted on from the
    tally's count (an ElectionCreated in the lag replaces it)."""

    def __init__(
        self,
        mapper: Mapper[UUID],
        election_id: UUID,
        rules: ElectionRules,
        *,
        at: int,
        tallied: int,
        entries: int,
        published: int,
    ) -> None:
        self.election_id = election_id
        self.at = at
        self.tallied = tallied
        self.published = published
        self.state = _Replay(mapper, election_id, at)
        self.state.recount.position = tallied
        self.state.recount.elections[election_id] = ElectionCount(
            election_id,
            rules,
            status=ElectionStatus.OPEN,
            steps=Steps(rules.live_results_step, entries=entries, published_at=published),
        )

    def found(self) -> int:
        return self.state.publications[-1] if self.state.publications else self.published


async def _replay_lag(services: Services, lag: _Lag, key: Hashable) -> int:
    """A long lag replayed in the limited turn (on a connection of its own: readers who
    join it may outlive the first one's request), and kept."""
    kept: int | None = services.travel_cache.get(key)  # replayed while this waited its turn
    if kept is not None:
        return kept
    after = lag.tallied
    async with services.reads.connection() as conn:
        while True:
            page = await election_page(conn, lag.election_id, after, LAG_PAGE, lag.at)
            if len(page) > INLINE:
                await asyncio.to_thread(lag.state.apply, page)
            else:
                lag.state.apply(page)
            if len(page) < LAG_PAGE:
                break
            after = page[-1].position
    found = lag.found()
    services.travel_cache.put(key, found, 200)
    return found


async def run_shared(
    services: Services, key: Hashable, work: Callable[[], Awaitable[T]], *, role: bool
) -> T:
    """``work`` (a recount, and the document counted from it), run as one task shared by
    every identical request (same ``key``) while it runs, and one at a time per process
    and turn: one that waits RECOUNT_WAIT seconds for its turn is a 503 with Retry-After.
    Auditors and admins (``role``) take turns of their own: anonymous readers of a public
    election (``?at=`` the head after each ballot) could otherwise hold the only one, and an
    auditor got 503s; so could a client token (pasted into every dashboard) or an operator's.

    Everyone else's turn owes a rest after each recount (``charged``): a new recount asked
    while more than BURST seconds are owed is a 503 at once, asked again when its turn comes
    (it may have waited for it behind others), with Retry-After the seconds until it would
    start; nothing sleeps holding the turn (a rest waited out there made readers of other
    positions run out their wait for the turn: 503s when no recount ran, merge review of
    3fd17ef). A request identical to the recount running joins it, rest or not, and what is
    cached is answered before this is asked. A caller that goes away leaves the task running
    for the others (and the cache): the handler is not told of a disconnection, and the
    time it takes is owed all the same whoever waits for it."""
    if role:
        return await turns.run_shared(
            services.recounts,
            (True, key),
            work,
            turn=services.recounting_for_roles,
            wait=RECOUNT_WAIT,
            busy=BUSY,
        )
    if (False, key) not in services.recounts:
        check_rest(services)
    return await turns.run_shared(
        services.recounts,
        (False, key),
        partial(_admitted, services, work),
        turn=services.recounting,
        wait=RECOUNT_WAIT,
        busy=BUSY,
    )


def check_rest(services: Services) -> None:
    """A 503 busy if the limited turn owes more than BURST seconds of rest, with
    Retry-After the seconds until it owes BURST again."""
    owed = services.recounts_rest_until - clock()
    if owed > BURST:
        seconds = max(1, math.ceil(owed - BURST))
        raise HTTPException(
            503,
            RESTING.format(factor=REST_FACTOR, burst=BURST, seconds=seconds),
            headers={"Retry-After": str(seconds)},
        )


async def _admitted(services: Services, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` in the limited turn (held), if the rest owed allows it now, charged."""
    check_rest(services)
    return await charged(services, work)


async def charged(services: Services, work: Callable[[], Awaitable[T]]) -> T:
    """``work``, its time (and REST_FACTOR times it, the rest) owed by the limited turn,
    failed or not: a 404 after a replay spent its CPU all the same.

    The time charged is the lesser of its wall time and the process's CPU time meanwhile.
    The CPU time covers the recount wherever it runs (the log's rows read on the event
    loop, decoding in worker threads, a ranked method's tabulation in another) and none of
    its waiting (for a pool connection, the database, an idle thread pool), which wall time
    alone charged; the wall time caps what other threads of the process burned at once (a
    recount is one thread at a time, so neither is below its own CPU time, and the cap holds).
    Under load the CPU time still counts what ballots burned in the process meanwhile, so
    a cheap recount may owe more then: on the safe side (the thread's own CPU time is out
    of reach of the turn, spread over the loop and several worker threads)."""
    started, cpu = clock(), cpu_clock()
    try:
        return await work()
    finally:
        took = max(0.0, min(clock() - started, cpu_clock() - cpu))
        services.recounts_rest_until = (
            max(services.recounts_rest_until, started) + (1.0 + REST_FACTOR) * took
        )
