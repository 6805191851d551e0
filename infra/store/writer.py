"""The group-commit writer: every append in the service goes through here.

The event store serialises inserts with an EXCLUSIVE table lock (that keeps notification ids
in commit order, so readers tailing the log never skip a row that commits later). One
transaction per ballot would therefore cap the store at one commit latency per ballot. This
writer gathers whatever appends are waiting (up to ``max_batch``) and records them in one
transaction, on one dedicated connection and thread. The transaction is one statement,
``SELECT ... FROM cardinal_append(...)`` on an autocommit connection (migrations 0007 and 0008):

    LOCK TABLE cardinal_events IN EXCLUSIVE MODE; NOTIFY cardinal_events;
    INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING ...

so the table lock is held only while the server works, never across a round trip to this
thread (which may be waiting for a core or the GIL); where the batch cannot stand as
recorded (below), the statement records nothing and the batch is worked out statement by
statement instead.

``ON CONFLICT DO NOTHING`` isolates a conflicting append (a voter's second first-cast, a
concurrent revision) without failing its neighbours and without retry rounds: the rows that
come back are the ones recorded; an append whose rows did not come back gets
VersionConflict. A ballot is appended with its election as a guard: one that lands after
the election's Closed event (a close recorded by another process whose cache had not seen
it yet, or earlier in the same batch) is rolled back and refused with ElectionNotOpen, so a
2xx always means "recorded, and counted". Each caller awaits its own future, resolved only
after COMMIT returned, so no 2xx is ever sent for a ballot that is not durable.
``max_batch=1`` turns batching off. (The transaction itself is in infra/store/batch.py.)

Every caller whose append is still queued is answered within ``answer_within`` (5 s); one
whose commit is under way waits for its outcome, but at most ``OUTCOME_WITHIN`` (10 s)
from when the commit was sent: past that (a store that hangs), it is answered that the
outcome is not known yet (OutcomeUnknown: it may have been recorded, retry with the same
Idempotency-Key), and the outcome the store gives later has no caller left to tell. Every
other refusal is certain:

- while the store is down (see infra/store/health.py) appends are refused at the door,
  and those queued when it went down are refused at once, not tried batch after batch;
- an append still queued at its deadline, or whose caller went away, is withdrawn: it is
  never recorded after its caller was answered;
- a batch whose statement the server answered with an error (short of a PANIC) was not
  recorded and is refused; one answered with a PANIC, or whose connection was lost without
  an answer (it may have committed), is looked up when the store is back, before anyone is
  answered by its outcome (past ``OUTCOME_WITHIN``, its callers are told it is unknown);
- a commit with no answer for ``STALLED_AFTER``, when a fresh connection cannot get an
  answer either (a store that hangs, not a lock), marks the store down, so that what is
  queued, and what comes, is refused at once; that commit's own appends wait for its
  outcome, up to ``OUTCOME_WITHIN``. The election announcement that follows a commit
  (``_announce_elections``) is watched the same way: a store that freezes during it is
  marked down too, though its callers have their answers already;
- the callers of a batch are answered as soon as its commit's outcome is known, before
  the writer's bookkeeping (stats, metrics: one that fails is logged once and changes
  nothing); should the writer thread fail all the same (a bug), the batch it held is
  answered as of unknown outcome (OutcomeUnknown: the failure may have come after its
  commit), and the thread carries on;
- at shutdown, ``drain`` answers what is left (see api/server.py): queued, certainly not
  recorded; a batch in flight, by its outcome if the store gives it within a second, else
  UNKNOWN (may have been recorded: retry with the same Idempotency-Key), whatever the store
  does; ``stop`` is bounded too, and answers the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from uuid import UUID

import psycopg
from eventsourcing import persistence
from eventsourcing.application import project_aggregate
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

from domain.application import VotingApplication
from domain.ballot import Ballot
from domain.election import Election
from domain.ports import (
    OutcomeUnknown,
    Overloaded,
    Recorded,
    RecordedBallot,
    StoreUnavailable,
)
from infra import metrics
from infra.audit.chain import entry_hash
from infra.store import ELECTIONS_CHANNEL, EVENTS_TABLE
from infra.store.batch import Append, Key, Outcome, Progress, commit_batch
from infra.store.daemon_pool import DaemonPool
from infra.store.health import PROBE_INTERVAL, StoreHealth
from infra.store.log import event_type
from infra.store.names import ALIVE, connection_name

log = logging.getLogger(__name__)


class LookupUnavailable(StoreUnavailable):
    """A read on a request's path (``_lookup``) found the store unreachable or too slow:
    nothing was recorded. Said in a ballot's words (UNCHECKED); the API says it in a
    change's or a read's when the request is neither a ballot nor a withdrawal (a lookup
    does not know whose it is: ``load_election`` serves both)."""


class AttemptRefused(StoreUnavailable):
    """A certain refusal of an append that carries an Idempotency-Key: this attempt
    recorded nothing, but it may be the retry of an attempt that was recorded (told the
    outcome is not known yet, or whose answer was lost), so it is not told that the ballot
    was not recorded (KEYED_*; review D1). ``api/problems.py`` keeps these words for a
    withdrawal too."""


A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")

# A ballot request is answered within this long (if its append is still queued by then, it
# is withdrawn, certainly not recorded, and refused with 503).
ANSWER_WITHIN = 5.0
SWEEP_INTERVAL = 0.1  # how often queued appends are checked against their deadline
# A commit with no answer for this long: the store hangs (frozen, or cut off without a
# reset). It is marked down, so that ballots are refused at once rather than after their
# deadline; the commit itself is answered when the store decides it (or OUTCOME_WITHIN).
STALLED_AFTER = 2.0
STALL_PROBE = 1.5  # how long a fresh connection may take to answer SELECT 1 then
IDLE_LOOK = 1.0
STALL_REPROBE = 2.0  # while a stall lasts, the store is probed again this often
# A commit the store has not answered this long after it was sent: its callers are told
# that its outcome is not known yet (UNCONFIRMED), rather than wait for as long as the store
# hangs. Long enough for a commit that waits on a lock (a migration's) or a slow store to be
# answered truthfully, and for a hang to be seen (STALLED_AFTER and its probe: 3.5 s); short
# of the 11 s in which a connection cut without a reset fails (infra/store/names.py), and
# of the usual 30 s client timeouts. The writer still learns the outcome when the store
# answers; nobody is waiting for it then. (The deadline sweeper looks: no timer per ballot.)
OUTCOME_WITHIN = 10.0
LOOKUP_WAIT = 3.0  # a read on a ballot's path (withdrawal, revision, retry) waits this long
# A lookup of our own (``_again``) whose connection is found cut is tried again at once,
# on a fresh connection, this many times at most (within its LOOKUP_WAIT).
LOOKUP_RETRIES = 2
# What a cut connection raises (eventsourcing turns psycopg's errors into its own).
CUT: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    persistence.OperationalError,
    persistence.InterfaceError,
)
# After a batch of BUSY_BATCH appends or more, the writer waits BUSY_LINGER seconds before
# taking the next one. Measured (bench http, 64 clients): 2 ms gave the most ballots/s;
# 1 ms and 3 ms less, 5 ms less than none. A quiet writer commits at once.
# (Not when a full batch is already waiting, nor while stopping: nothing to gather.)
BUSY_BATCH = 8
BUSY_LINGER = 0.002
CONNECT_TIMEOUT = 2
CANCEL_TIMEOUT = 0.8  # drain()'s cancel request: well inside server.DRAIN_MARGIN
# drain() answers UNKNOWN to a caller whose batch has no outcome this long after it: after
# the cancel request's own limit, before uvicorn's (server.DRAIN_MARGIN, 1.5 s, later).
UNKNOWN_AFTER = 1.0
# stop() waits this long for the writer thread (what is queued commits in milliseconds on a
# store that answers); then the thread is left to the store and its callers are answered.
STOP_WITHIN = 2.0
NOT_RECORDED = "the event store is unreachable; the ballot was not recorded: retry shortly"
TOO_SLOW = (
    "the event store did not take the ballot within {:g} seconds; it was not recorded: "
    "retry shortly"
)
UNCHECKED = (
    "the event store is unreachable; this ballot was not recorded now (one of this voter's "
    "recorded earlier stays recorded): retry shortly, with the same Idempotency-Key if it "
    "had one"
)
SHUTTING_DOWN = "this process is shutting down; the ballot was not recorded: retry"
# NOT_RECORDED, TOO_SLOW and SHUTTING_DOWN for an append that carries an Idempotency-Key
# (a ballot, a revision, a withdrawal, a batch's item with its key): it may be the retry of
# an attempt that was recorded (one told the outcome is not known yet, or whose answer was
# lost), so "the ballot was not recorded" could be untrue, and a client that believed it
# gave up on a ballot that was counted (review D1). What is certain is this attempt's.
# (also the rate limiter's, api/ratelimit.py, for a keyed request it could not check)
KEYED_TAIL = (
    "this attempt recorded nothing, and an earlier attempt with this Idempotency-Key may have "
    "been recorded: retry shortly with the same key (it answers the earlier attempt's receipt "
    "if there is one; nothing is recorded twice)"
)
KEYED_NOT_RECORDED = f"the event store is unreachable; {KEYED_TAIL}"
KEYED_TOO_SLOW = (
    "the event store did not take this attempt within {:g} seconds; it recorded nothing, "
    "and an earlier attempt with this Idempotency-Key may have been recorded: retry shortly "
    "with the same key (nothing is recorded twice)"
)
KEYED_SHUTTING_DOWN = (
    "this process is shutting down; this attempt recorded nothing, and an earlier attempt "
    "with this Idempotency-Key may have been recorded: retry with the same key (nothing is "
    "recorded twice)"
)
UNKNOWN = (
    "the event store went away while committing this ballot and this process is shutting "
    "down before it could ask: the ballot may have been recorded; retry with the same "
    "Idempotency-Key to find out (it is never recorded twice)"
)
UNCONFIRMED = (
    "the event store has not confirmed this ballot within {:g} seconds of its commit: the "
    "outcome is not known yet, and the ballot may have been recorded; retry with the same "
    "Idempotency-Key to find out (if it was recorded, the retry answers its receipt; if "
    "not, the retry records it; it is never recorded twice)"
)
WRITER_FAILED = (
    "the writer failed while committing this ballot: the outcome is not known, and the "
    "ballot may have been recorded; retry with the same Idempotency-Key to find out (it is "
    "never recorded twice)"
)
# A change to an election (create, open, close, an issue of voter tokens) refused for
# certain is told so in its own words (review exhaust L4: it was told "the ballot was not
# recorded"); these are chosen by the append (``_said``: ballots are the guarded appends).
CHANGE_NOT_MADE = "the event store is unreachable; the change was not made: retry shortly"
CHANGE_TOO_SLOW = (
    "the event store did not take the change within {:g} seconds; it was not made: retry shortly"
)
CHANGE_SHUTTING_DOWN = "this process is shutting down; the change was not made: retry"
# UNKNOWN, UNCONFIRMED and WRITER_FAILED, for such a change: those take no Idempotency-Key,
# so the caller is told to look before doing it again (a second create would make a second
# draft; tokens of an issue nobody received are of no use to anyone, and are not refused
# for it).
CHANGE_UNKNOWN = (
    "the event store went away while committing this change and this process is shutting "
    "down before it could ask: it may have been made; read the election (GET "
    "/api/elections, or the election itself) before doing it again"
)
CHANGE_UNCONFIRMED = (
    "the event store has not confirmed this change within {:g} seconds of its commit: it "
    "may have been made; read the election (GET /api/elections, or the election itself) "
    "before doing it again"
)
CHANGE_WRITER_FAILED = (
    "the writer failed while committing this change: it may have been made; read the "
    "election (GET /api/elections, or the election itself) before doing it again"
)
RECORDED = (
    f"SELECT notification_id, topic, state FROM {EVENTS_TABLE} "
    "WHERE originator_id = %s AND originator_version = %s"
)

# Many ballots' entries at once, each with its place (the bulk path's retries): one
# statement, by the primary key's leading column.
STREAMS = (
    f"SELECT originator_id, originator_version, topic, state, notification_id "
    f"FROM {EVENTS_TABLE} WHERE originator_id = ANY(%s) "
    "ORDER BY originator_id, originator_version"
)


@dataclass
class WriterStats:
    """Running figures (the same go to Prometheus)."""

    batches: int = 0
    appends: int = 0
    last_batch_size: int = 0


class GroupCommitWriter:
    """Batches appends from the event loop into single transactions on a writer thread."""

    def __init__(
        self,
        app: VotingApplication,
        database_url: str,
        *,
        max_batch: int = 500,
        max_queue: int = 20_000,
        answer_within: float = ANSWER_WITHIN,
        health: StoreHealth | None = None,
    ) -> None:
        self.app = app
        self.database_url = database_url
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.answer_within = answer_within
        self.health = health or StoreHealth()
        self.stats = WriterStats()
        self._in_flight: list[Append] = []
        # monotonic: since when the writer thread waits on the store (a commit under way,
        # or the election announcement after one); the stall sweeper looks at it
        self._in_flight_since: float | None = None
        self._unconfirmed: float | None = None  # the commit whose callers were told so
        self._progress = Progress()  # the writer thread's commit, as it goes
        self._draining = False
        self._queue: deque[Append] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Event | None = None  # set when the writer thread has ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._probed_at = 0.0  # monotonic: the last probe's start
        self._probe_task: asyncio.Task[None] | None = None
        self._lookups = DaemonPool("writer lookup")
        self._count_failed = False  # the batch metrics failed once (logged once)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ended = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    async def stop(self, within: float = STOP_WITHIN) -> None:
        """Commit what is queued, then stop the writer thread: within ``within`` seconds.

        A store that hangs keeps the thread in its commit for as long as it hangs; then
        the thread is left behind (a daemon: it does not hold the process) and every caller
        still waiting is answered as ``drain`` answers them, never left to the shutdown."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is None or self._ended is None:
            return
        try:
            # (not a join in a thread of the loop's executor: one stuck on a frozen store
            # would hold the process at exit, when the loop waits for its executor)
            await asyncio.wait_for(self._ended.wait(), within)
        except TimeoutError:
            log.error(
                "the writer did not stop within %g s (the store does not answer): callers "
                "still waiting are answered, its commit is left to the store",
                within,
            )
            self._answer_all()

    def drain(self) -> None:
        """At the end of a shutdown's grace period: see that every waiting caller is
        answered before the server gives up on it (a cancelled request is a 500).

        Queued appends are withdrawn: 503, certainly not recorded. A batch still running
        its statements is cancelled in the database, and the writer refuses it rather than
        retrying (not recorded). Any caller whose batch is not answered within
        ``UNKNOWN_AFTER`` (a store that hangs: the cancel request cannot reach it; a COMMIT
        sent; an outcome waiting for the store's return), and any at once where the store is
        down, is told its outcome is unknown, in those words (UNKNOWN: retry with the same
        Idempotency-Key): the server's grace ends soon after, whatever the store does.
        """
        self._draining = True
        in_flight = self._refuse_waiting()
        if not in_flight:
            return
        conn = self._conn
        if conn is not None and (not self._progress.committing or self._progress.cancellable):
            # A cancel request is a connection of its own, and waits for its answer:
            # not on the event loop, which has every other caller to answer.
            threading.Thread(
                target=_cancel, args=(conn,), name="writer-cancel", daemon=True
            ).start()
        if not self.health.up:
            _unknown(in_flight)
            return
        assert self._loop is not None
        self._loop.call_later(UNKNOWN_AFTER, _unknown, in_flight)

    def _answer_all(self) -> None:
        """The writer is left behind: answer everyone still waiting on it, now."""
        _unknown(self._refuse_waiting())

    def _refuse_waiting(self) -> list[Append]:
        """Refuse what is queued (certainly not recorded: 503), and return the batch in
        flight, whose outcome the caller decides. On the event loop's thread."""
        with self._wakeup:
            queued = list(self._queue)
            self._queue.clear()
            in_flight = list(self._in_flight)
        for submission in queued:
            _refuse(submission, SHUTTING_DOWN, CHANGE_SHUTTING_DOWN, KEYED_SHUTTING_DOWN)
        return in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- EventWriter port --------------------------------------------------------------

    async def append(self, aggregate: Aggregate, *, while_open: UUID | None = None) -> Recorded:
        return await self.append_events(aggregate.collect_events(), while_open=while_open)

    async def append_events(
        self,
        domain_events: Sequence[DomainEventProtocol[UUID]],
        *,
        while_open: UUID | None = None,
    ) -> Recorded:
        if self._stopping or self._thread is None or not self._thread.is_alive():
            raise Overloaded("the writer is not running")
        keyed = _keyed(domain_events)
        if self._draining:  # (a request that reached its append after drain())
            raise _door(while_open, keyed, SHUTTING_DOWN, KEYED_SHUTTING_DOWN, CHANGE_SHUTTING_DOWN)
        if not self.health.up:
            raise _door(while_open, keyed, NOT_RECORDED, KEYED_NOT_RECORDED, CHANGE_NOT_MADE)
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"{len(self._queue)} appends are already waiting")
        events = [self.app.mapper.to_stored_event(e) for e in domain_events]
        loop = self._loop
        assert loop is not None
        submission = Append(events, loop.create_future(), while_open, keyed=keyed)
        submission.deadline = loop.time() + self.answer_within
        with self._wakeup:
            self._queue.append(submission)
            self._wakeup.notify()
        self._watch_deadlines(loop)
        try:
            return await submission.future
        except asyncio.CancelledError:
            # The caller is gone: what it did not see recorded must not be recorded later.
            self._withdraw(submission)
            raise

    async def append_each(
        self,
        appends: Sequence[Sequence[DomainEventProtocol[UUID]]],
        *,
        while_open: UUID | None = None,
    ) -> list[Recorded | Exception]:
        """Many independent appends (the bulk path): each is an Append of its own, so each
        is recorded or refused on its own, but they are queued under one lock, share one
        answer deadline, and wake their caller once, when the last is settled."""
        if not appends:
            return []
        if self._stopping or self._thread is None or not self._thread.is_alive():
            raise Overloaded("the writer is not running")
        if self._draining or not self.health.up:
            # Each in its own words: an item with its key may be a retry, one without not.
            said = (
                (SHUTTING_DOWN, KEYED_SHUTTING_DOWN, CHANGE_SHUTTING_DOWN)
                if self._draining
                else (NOT_RECORDED, KEYED_NOT_RECORDED, CHANGE_NOT_MADE)
            )
            return [_door(while_open, _keyed(events), *said) for events in appends]
        if len(self._queue) + len(appends) > self.max_queue:
            raise Overloaded(f"{len(self._queue)} appends are already waiting")
        loop = self._loop
        assert loop is not None
        to_stored = self.app.mapper.to_stored_event
        group = [
            Append(
                [to_stored(e) for e in events],
                loop.create_future(),
                while_open,
                keyed=_keyed(events),
            )
            for events in appends
        ]
        settled = loop.create_future()
        remaining = len(group)

        def one_settled(_: asyncio.Future[Recorded]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0 and not settled.done():
                settled.set_result(None)

        deadline = loop.time() + self.answer_within
        for submission in group:
            submission.deadline = deadline
            submission.future.add_done_callback(one_settled)
        with self._wakeup:
            self._queue.extend(group)
            self._wakeup.notify()
        self._watch_deadlines(loop)
        try:
            await settled
        except asyncio.CancelledError:
            self._withdraw_group(group)
            raise
        return [_outcome(s.future) for s in group]

    def _withdraw_group(self, group: Sequence[Append]) -> None:
        """Take back what the writer thread has not taken yet (one pass over the queue)."""
        mine = {id(s) for s in group}
        with self._wakeup:
            if any(id(s) in mine for s in self._queue):
                self._queue = deque(s for s in self._queue if id(s) not in mine)

    def _watch_deadlines(self, loop: asyncio.AbstractEventLoop) -> None:
        """One timer for every queued append, rather than one each (a timer per ballot
        was a measurable share of the hot path): it runs while anything is queued."""
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """The answer deadline: an append still queued at its deadline is withdrawn and
        refused (one already in a batch is answered by its commit, which the store decides
        quickly or is down). The queue is in arrival order, so the expired are in front."""
        now = loop.time()
        expired = []
        since = self._in_flight_since
        if since is not None:
            waited = time.monotonic() - since
            if waited > STALLED_AFTER:
                self._suspect(loop, since)
            if waited > OUTCOME_WITHIN and self._unconfirmed != since:
                self._unconfirmed = since
                self._unconfirmed_now(since)
        with self._wakeup:
            while self._queue and self._queue[0].deadline <= now:
                expired.append(self._queue.popleft())
            # (on while a commit is under way too: its stall must be seen, queue or not)
            waiting = bool(self._queue) or self._in_flight_since is not None
        for submission in expired:
            _refuse(
                submission,
                TOO_SLOW.format(self.answer_within),
                CHANGE_TOO_SLOW.format(self.answer_within),
                KEYED_TOO_SLOW.format(self.answer_within),
            )
        self._sweeper = loop.call_later(SWEEP_INTERVAL, self._sweep, loop) if waiting else None

    def _unconfirmed_now(self, since: float) -> None:
        """The commit sent at ``since`` has had no answer for OUTCOME_WITHIN: answer its
        callers that its outcome is not known yet, now. The writer thread goes on waiting
        for the store's answer (and asks the store, if the answer is lost), so what was
        recorded is learnt, and nothing is recorded twice; nobody is left to tell."""
        with self._wakeup:
            if self._in_flight_since != since:
                return  # answered meanwhile
            waiting = [s for s in self._in_flight if not s.future.done()]
        if not waiting:
            return
        log.warning(
            "a commit of %d appends has had no answer from the event store for %g s: their "
            "callers are told the outcome is not known yet (retry with the same "
            "Idempotency-Key)",
            len(waiting),
            OUTCOME_WITHIN,
        )
        _unknown(
            waiting,
            UNCONFIRMED.format(OUTCOME_WITHIN),
            CHANGE_UNCONFIRMED.format(OUTCOME_WITHIN),
        )

    def suspect(self) -> None:
        """A read waits on the store too long (RequestGuard): probe it, as a lookup that
        waits too long does; a store that does not answer is marked down, and what waits
        on it is answered 503 then."""
        if self._loop is not None:
            self._suspect(self._loop, None)

    def _suspect(self, loop: asyncio.AbstractEventLoop, since: float | None) -> None:
        """Something waits on the store too long (a commit since ``since``, or a lookup):
        probe it, one probe at a time, again every STALL_REPROBE while it lasts."""
        running = self._probe_task is not None and not self._probe_task.done()
        if running or not self.health.up or time.monotonic() - self._probed_at < STALL_REPROBE:
            return
        self._probed_at = time.monotonic()
        self._probe_task = loop.create_task(self._stalled(since))

    async def _stalled(self, since: float | None) -> None:
        """Does the store answer at all? A lock held by a migration keeps a commit waiting
        while the store is well, and a server with every connection slot taken answers
        with an error; a frozen or cut-off server answers nobody. Only that is 'down'."""
        probe = asyncio.ensure_future(self._answers())
        done, _ = await asyncio.wait({probe}, timeout=STALL_PROBE)
        if probe in done:
            error = probe.exception()
            if error is None or getattr(error, "sqlstate", None):  # the server spoke
                log.warning("the store is slow to answer, but it answers (a lock?)")
                return
        else:
            probe.cancel()  # (its connect times out by itself)
        with self._wakeup:
            if (since is not None and self._in_flight_since != since) or not self.health.up:
                return  # the commit ended meanwhile
            self.health.down(f"the store has not answered for over {STALLED_AFTER:g} s")
            self._wakeup.notify()  # the thread probes while down, even when idle
        self._refuse_queued()

    async def _answers(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=connection_name("writer probe"),
        ) as conn:
            await conn.execute("SELECT 1")

    def _withdraw(self, submission: Append) -> bool:
        """Take an append back if the writer thread has not taken it yet."""
        with self._wakeup:
            try:
                self._queue.remove(submission)
            except ValueError:
                return False  # in a batch: its outcome comes from the store
        return True

    async def load_election(self, election_id: UUID) -> Election | None:
        return await self._lookup(self._load, election_id, Election)

    async def load_ballot(self, ballot_id: UUID) -> Ballot | None:
        return await self._lookup(self._load, ballot_id, Ballot)

    async def load_ballots(self, ballot_ids: Sequence[UUID]) -> dict[UUID, RecordedBallot]:
        if not ballot_ids:
            return {}
        until = time.monotonic() + LOOKUP_WAIT
        return await self._lookup(self._again, until, self._load_ballots, list(ballot_ids))

    async def recorded(self, aggregate_id: UUID, version: int) -> Recorded:
        until = time.monotonic() + LOOKUP_WAIT
        return await self._lookup(self._again, until, self._recorded, aggregate_id, version)

    async def _lookup(self, read: Callable[..., T], *args: Any) -> T:
        """A read on the request's path (a withdrawal, a revision, a retry's receipt),
        within LOOKUP_WAIT: a store that hangs costs the caller a 503, and a probe."""
        if not self.health.up:
            raise LookupUnavailable(UNCHECKED)
        assert self._loop is not None
        reading = self._lookups.run(self._loop, read, *args)
        done, _ = await asyncio.wait({reading}, timeout=LOOKUP_WAIT)
        if reading in done:
            return reading.result()
        reading.add_done_callback(_retrieved)  # (its thread ends when the store answers)
        self._suspect(self._loop, None)
        raise LookupUnavailable(UNCHECKED)

    def _load(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        # (eventsourcing's select_events tries any operational error 10 times, cut or not)
        return self.app.stored(aggregate_id, kind)

    def _again(self, until: float, read: Callable[..., T], *args: Any) -> T:
        """``read`` (a read of our own on eventsourcing's pool: ``_load_ballots``,
        ``_recorded``), tried again at once on a fresh connection, up to LOOKUP_RETRIES
        times, if its connection was found cut while the store is up and ``until`` (the
        lookup's LOOKUP_WAIT) has not passed: it is a read, safe to repeat, as
        eventsourcing repeats its own (``select_events``). The pool lends no connection
        the server has hung up on (``hung_up``), but a goodbye still on its way looks
        alive: an idle backend terminated a few ms before it was lent failed the batch's
        revisions with a 503 on a healthy store (reliability review, item 3)."""
        tries = 0
        while True:
            try:
                return read(*args)
            except CUT as error:
                tries += 1
                if (
                    tries > LOOKUP_RETRIES
                    or not _was_cut(error)
                    or not self.health.up
                    or time.monotonic() >= until
                ):
                    raise
                log.info("a lookup's connection was found cut (%s); reading again", error)

    def _load_ballots(self, ballot_ids: list[UUID]) -> dict[UUID, RecordedBallot]:
        """Each ballot's entries in one statement, folded as the repository folds them,
        with each version's place and receipt (what ``_recorded`` gives one by one)."""
        recorder = cast(PostgresApplicationRecorder, self.app.recorder)
        with recorder.datastore.get_connection() as conn:
            rows = conn.execute(STREAMS, (ballot_ids,)).fetchall()
        streams: dict[UUID, list[StoredEvent]] = {}
        recorded: dict[UUID, dict[int, Recorded]] = {}
        for row in rows:
            aggregate_id = cast(UUID, row["originator_id"])
            version = int(row["originator_version"])
            position = int(row["notification_id"])
            stored = StoredEvent(aggregate_id, version, row["topic"], bytes(row["state"]))
            streams.setdefault(aggregate_id, []).append(stored)
            recorded.setdefault(aggregate_id, {})[version] = Recorded(
                position, _digest(position, stored)
            )
        to_domain = self.app.mapper.to_domain_event
        found: dict[UUID, RecordedBallot] = {}
        for aggregate_id, stream in streams.items():
            events = (to_domain(stored) for stored in stream)
            ballot: object = project_aggregate(cast(Aggregate | None, None), events)
            if isinstance(ballot, Ballot):
                found[aggregate_id] = RecordedBallot(ballot, recorded[aggregate_id])
        return found

    def _recorded(self, aggregate_id: UUID, version: int) -> Recorded:
        recorder = cast(PostgresApplicationRecorder, self.app.recorder)
        with recorder.datastore.get_connection() as conn:
            row = conn.execute(RECORDED, (aggregate_id, version)).fetchone()
        if row is None:
            raise LookupError(f"{aggregate_id} version {version} is not in the log")
        position = int(row["notification_id"])
        stored = StoredEvent(aggregate_id, version, row["topic"], bytes(row["state"]))
        return Recorded(position, _digest(position, stored))

    # -- writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        said_at: float | None = None  # monotonic: the last failure logged with its traceback
        try:
            while True:
                try:
                    self._write()
                    break
                except Exception:
                    # A bug, or bookkeeping that fails (a metric's mmap file on a full disk):
                    # the thread carries on, and nobody waits on the batch for ever. A
                    # traceback a minute at most: one that fails at every batch would
                    # otherwise write one every PROBE_INTERVAL.
                    now = time.monotonic()
                    if said_at is None or now - said_at >= 60:
                        said_at = now
                        log.exception("the writer failed; its batch is answered, it carries on")
                    self._failed()
                    if self._stopping:
                        break
                    time.sleep(PROBE_INTERVAL)  # (no busy loop if it fails again at once)
        finally:
            if self._ended is not None:
                self._call_soon(self._ended.set)

    def _failed(self) -> None:
        """``_write`` raised: answer the batch it held. Answers it had already sent come
        first on the loop (``_settle``, right after its commit), so this tells only those
        whose outcome the thread never learnt: it may have been recorded (OutcomeUnknown)."""
        with self._wakeup:
            in_flight = list(self._in_flight)
            self._in_flight = []
            self._in_flight_since = None
        self._progress.committing = False
        with contextlib.suppress(Exception):
            self._drop_connection()
        if in_flight:
            self._call_soon(_unknown, in_flight, WRITER_FAILED, CHANGE_WRITER_FAILED)

    def _call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """``callback`` on the event loop, from the writer thread; nothing once the loop
        is closed (a writer left behind by stop, whose store answered at last)."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _write(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping:
                    # (up: a look each second all the same, for the store may be marked
                    # down from elsewhere while this waits, and no ballot would wake it)
                    up = self.health.up
                    if not self._wakeup.wait(IDLE_LOOK if up else PROBE_INTERVAL) and not up:
                        break  # down and idle: probe below
                if not self._queue and self._stopping:
                    break
                batch = self._take_batch()
                self._in_flight = batch
                self._in_flight_since = time.monotonic() if batch else None
            if not batch:
                self._probe()
                continue
            started = time.perf_counter()
            outcomes = self._commit_with_retries(batch)
            # Its callers first: nothing after the commit may keep them from their answer.
            self._call_soon(_settle, batch, outcomes)
            announce = any(s.guard is None for s in batch) and any(
                o.error is None for o in outcomes
            )
            with self._wakeup:
                self._in_flight = []
                # The announcement is a round trip too: a store that freezes during it
                # must be seen as one that freezes during a commit (probed, marked down).
                self._in_flight_since = time.monotonic() if announce else None
            if not self.health.up and not any(
                isinstance(o.error, StoreUnavailable) for o in outcomes
            ):
                self._back()  # the hang is over: the store answered
            self._count(batch, time.perf_counter() - started)
            if announce:
                self._announce_elections()
                with self._wakeup:
                    self._in_flight_since = None
            busy = len(batch) >= BUSY_BATCH
            if busy and len(self._queue) < self.max_batch and not self._stopping:
                # Ballots are pouring in: let the next batch gather for a moment. Fewer,
                # larger commits cost the database, this thread and every listener woken
                # by a commit's NOTIFY less per ballot (docs/performance.md, "PostgreSQL's
                # share, by connection").
                time.sleep(BUSY_LINGER)
        if self._conn is not None:
            self._conn.close()

    def _count(self, batch: Sequence[Append], elapsed: float) -> None:
        """The batch's figures. Bookkeeping: one that fails (a metric's mmap file on a full
        disk) is logged once and costs nothing else."""
        self.stats.batches += 1
        self.stats.appends += len(batch)
        self.stats.last_batch_size = len(batch)
        try:
            metrics.WRITE_BATCH_SIZE.observe(len(batch))
            metrics.WRITE_COMMIT_SECONDS.observe(elapsed)
            metrics.WRITER_QUEUE.set(len(self._queue))
        except Exception:
            if not self._count_failed:
                self._count_failed = True
                log.exception("the writer's metrics failed; not logged again")

    def _take_batch(self) -> list[Append]:
        """Up to max_batch appends; one touching a key already in the batch waits its turn.

        Two appends of the same (aggregate, version) in one INSERT could not be told apart
        in RETURNING; deferred, the second one meets the first as an ordinary conflict.
        """
        batch: list[Append] = []
        taken: set[Key] = set()
        deferred: list[Append] = []
        while self._queue and len(batch) < self.max_batch:
            submission = self._queue.popleft()
            if taken.intersection(submission.keys):
                deferred.append(submission)
                continue
            taken.update(submission.keys)
            batch.append(submission)
        self._queue.extendleft(reversed(deferred))
        return batch

    def _commit_with_retries(self, batch: list[Append]) -> list[Outcome]:
        """The batch's outcomes, each certain: recorded, or refused and not recorded.

        A lost connection is retried once at once (an idle connection may have been cut
        while the store is fine). If the store cannot be reached, it is marked down (new
        appends are refused at the door) and what waits in the queue is refused; this
        batch is refused too, unless its COMMIT had been sent: then it waits for the store
        to come back and asks it which of its rows were recorded.
        """
        uncertain = False  # a previous attempt may have committed before failing
        fresh_failures = 0
        while True:
            try:
                conn = self._connection()
                return self._commit(conn, batch, recognise_own=uncertain)
            except psycopg.OperationalError as error:
                self._drop_connection()
                uncertain = uncertain or self._progress.committing
                self._progress.committing = False
                if self._draining and not uncertain:  # cancelled by drain(): not recorded
                    return [
                        Outcome(
                            error=_refusal(
                                a, SHUTTING_DOWN, CHANGE_SHUTTING_DOWN, KEYED_SHUTTING_DOWN
                            )
                        )
                        for a in batch
                    ]
                fresh_failures += 1
                if fresh_failures == 1 and self.health.up:
                    # A connection cut while it idled (idle_session_timeout, an operator's
                    # pg_terminate_backend) fails the next batch before it is sent: the
                    # batch is sent again at once and nothing is lost, so an INFO (at
                    # WARNING, one a batch: 42 lines in 90 s with a 3 s idle timeout). A
                    # cut while the commit was under way leaves its outcome to be asked.
                    if uncertain:
                        log.warning("event store connection lost (%s); reconnecting", error)
                    else:
                        log.info("event store connection found cut (%s); reconnecting", error)
                    continue
                self.health.down(str(error).strip() or type(error).__name__)
                self._refuse_queued()
                if not uncertain:
                    return [
                        Outcome(
                            error=_refusal(a, NOT_RECORDED, CHANGE_NOT_MADE, KEYED_NOT_RECORDED)
                        )
                        for a in batch
                    ]
                log.error("a commit's outcome is unknown; waiting for the store to ask it")
                if not self._until_back():
                    return [
                        Outcome(error=OutcomeUnknown(_said(a, UNKNOWN, CHANGE_UNKNOWN)))
                        for a in batch
                    ]
            except Exception as error:  # a bug or a bad row: fail this batch, keep running
                self._progress.committing = False
                log.exception("group commit failed")
                self._drop_connection()
                return [Outcome(error=error) for _ in batch]

    def _announce_elections(self) -> None:
        """Wake the election caches (infra/store/election_feed.py) after a commit that may
        hold an election's event: ballots are guarded, elections' own events are not. A
        hint after the commit, not part of it: if it is lost, the caches' polling finds
        the event within a second. It is a round trip on the writer's connection, watched
        as a commit is (``_write`` sets ``_in_flight_since`` around it): a store that
        freezes during it is probed and marked down, not left to hold the thread unseen."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        try:
            conn.execute("SELECT pg_notify(%s, '')", (ELECTIONS_CHANNEL,))
        except psycopg.Error as error:
            log.debug("election announcement not sent: %s", error)

    def _refuse_queued(self) -> None:
        with self._wakeup:
            queued = list(self._queue)
            self._queue.clear()
        if queued:
            log.error("event store unreachable: %d queued appends refused", len(queued))
            for submission in queued:
                self._call_soon(
                    _refuse, submission, NOT_RECORDED, CHANGE_NOT_MADE, KEYED_NOT_RECORDED
                )

    def _until_back(self) -> bool:
        """Probe until the store answers (True), or the writer stops (False)."""
        while not self._stopping:
            if self._probe():
                return True
            time.sleep(PROBE_INTERVAL)
        return False

    def _probe(self) -> bool:
        """Whether the store answers now; marks it up or down accordingly."""
        try:
            self._connection().execute("SELECT 1")
        except psycopg.OperationalError as error:
            self._drop_connection()
            self.health.down(str(error).strip() or type(error).__name__)
            return False
        self._back()
        return True

    def _back(self) -> None:
        """Mark the store up. (The lookups' pool needs no sweep then: it passes over the
        connections a restart broke as it lends them, at once: infra/store/reconnect.py.)"""
        self.health.back()

    def _commit(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        batch: Sequence[Append],
        *,
        recognise_own: bool,
    ) -> list[Outcome]:
        return commit_batch(conn, batch, self._progress, recognise_own=recognise_own)

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.database_url,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=connection_name("writer"),
                # Every statement here finds rows by key. The guard's prepared plan is made
                # once, often while the log is a few rows long, when scanning the table is
                # the cheapest plan; without ANALYZE (autovacuum off, or between its runs)
                # that plan stays, and each group commit then reads the whole log: seen in
                # one bench run in three, doubling the database's CPU per ballot.
                options="-c enable_seqscan=off",
                **ALIVE,
            )
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _cancel(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.cancel_safe(timeout=CANCEL_TIMEOUT)


def _unknown(
    in_flight: Sequence[Append], detail: str = UNKNOWN, change: str = CHANGE_UNKNOWN
) -> None:
    """Callers whose batch's outcome they cannot wait for: this process will not learn it
    before it goes (UNKNOWN), or the store has not given it in time (UNCONFIRMED); a
    ballot's caller is told so in ``detail``'s words, an election change's in ``change``'s."""
    for submission in in_flight:
        if not submission.future.done():
            submission.future.set_exception(OutcomeUnknown(_said(submission, detail, change)))


def _said(submission: Append, ballot: str, change: str) -> str:
    """A ballot's words or an election change's: ballots are the appends guarded by their
    election's being open."""
    return ballot if submission.guard is not None else change


def _refusal(submission: Append, ballot: str, change: str, keyed: str) -> StoreUnavailable:
    """A certain refusal of an append: in an election change's words, a ballot's, or, for
    a ballot that carries an Idempotency-Key, the words of an attempt that may be a retry
    of one recorded (``keyed``: KEYED_*, raised as AttemptRefused)."""
    return _door(submission.guard, submission.keyed, ballot, keyed, change)


def _door(
    while_open: UUID | None, keyed: bool, ballot: str, retry: str, change: str
) -> StoreUnavailable:
    """``_refusal`` of an append refused at the door, before it is made one."""
    if while_open is None:
        return StoreUnavailable(change)
    return AttemptRefused(retry) if keyed else StoreUnavailable(ballot)


def _keyed(events: Sequence[DomainEventProtocol[UUID]]) -> bool:
    """Whether an append carries an Idempotency-Key (a ballot's events carry the request's
    key, or None): a request the server could recognise as a retry."""
    return any(getattr(e, "request_key", None) is not None for e in events)


def _outcome(future: asyncio.Future[Recorded]) -> Recorded | Exception:
    error = future.exception()
    if error is None:
        return future.result()
    assert isinstance(error, Exception)
    return error


def _refuse(submission: Append, detail: str, change: str, keyed: str) -> None:
    """Refuse an append (certainly not recorded): a ballot in ``detail``'s words (one with
    an Idempotency-Key in ``keyed``'s), an election change in ``change``'s."""
    if not submission.future.done():
        submission.future.set_exception(_refusal(submission, detail, change, keyed))


def _settle(batch: Sequence[Append], outcomes: Sequence[Outcome]) -> None:
    for submission, outcome in zip(batch, outcomes, strict=True):
        if submission.future.done():  # answered already (drained at shutdown)
            continue
        if outcome.error is not None:
            submission.future.set_exception(outcome.error)
        else:
            assert outcome.position is not None
            digest = _digest(outcome.position, submission.events[-1])
            submission.future.set_result(Recorded(outcome.position, digest))


def _digest(position: int, stored: StoredEvent) -> str:
    """The receipt of a recorded event: its entry hash in the audit chain (hex)."""
    return entry_hash(
        position,
        cast(UUID, stored.originator_id),
        stored.originator_version,
        event_type(stored.topic),
        stored.state,
    ).hex()


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A lookup given up on: its outcome is nobody's, and not an error to log."""
    if not future.cancelled():
        future.exception()


POOL_REFUSALS = (PoolTimeout, PoolClosed, TooManyRequests)


def _was_cut(error: BaseException) -> bool:
    """Whether a lookup failed because its connection was cut (no SQLSTATE: the socket;
    class 08; 57P01-57P03, 57P05: the server ending the session), not for its statement: a
    statement cancelled (57014), or one that met a lock or a deadlock, is not read again
    (merge review: three tries of a cancelled lookup tripled the load on a slow store)."""
    found = error if isinstance(error, psycopg.Error) else error.__cause__
    if not isinstance(found, psycopg.Error) or isinstance(found, POOL_REFUSALS):
        return False  # (the pool's own refusals have no SQLSTATE either: no connection cut)
    state = found.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03", "57P05")
