"""The group-commit writer: every append in the service goes through here.

The event store serialises inserts with an EXCLUSIVE table lock (that keeps notification ids
in commit order, so readers tailing the log never skip a row that commits later). One
transaction per ballot would therefore cap the store at one commit latency per ballot. This
writer gathers whatever appends are waiting (up to ``max_batch``) and records them in one
transaction, on one dedicated connection and thread:

    LOCK TABLE cardinal_events IN EXCLUSIVE MODE; NOTIFY cardinal_events;
    INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING ...

``ON CONFLICT DO NOTHING`` isolates a conflicting append (a voter's second first-cast, a
concurrent revision) without failing its neighbours and without retry rounds: the rows that
come back are the ones recorded; an append whose rows did not come back gets
VersionConflict. A ballot is appended with its election as a guard: one that lands after
the election's Closed event (a close recorded by another process whose cache had not seen
it yet, or earlier in the same batch) is rolled back and refused with ElectionNotOpen, so a
2xx always means "recorded, and counted". Each caller awaits its own future, resolved only
after COMMIT returned, so no 2xx is ever sent for a ballot that is not durable.
``max_batch=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast
from uuid import UUID

import psycopg
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder

from domain.application import CLOSED_BEFORE_RECORDED, VotingApplication
from domain.ballot import Ballot
from domain.election import Election
from domain.errors import ElectionNotOpen
from domain.ports import Overloaded, Recorded, StoreUnavailable, VersionConflict
from infra import metrics
from infra.audit.chain import entry_hash
from infra.store import EVENTS_TABLE
from infra.store.log import event_type

log = logging.getLogger(__name__)
A = TypeVar("A", bound=Aggregate)

Key = tuple[UUID, int]

# One statement, one round trip under the table lock: the rows recorded (version set),
# and the Closed positions already in the log of the elections that the batch's ballots
# are guarded by (version NULL). A Closed event in this very batch is among the former:
# a statement's reads do not see its own inserts.
INSERT = f"""
WITH recorded AS (
    INSERT INTO {EVENTS_TABLE} (originator_id, originator_version, topic, state)
    SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])
    ON CONFLICT DO NOTHING
    RETURNING originator_id, originator_version, notification_id
)
SELECT originator_id, originator_version, notification_id FROM recorded
UNION ALL
SELECT originator_id, NULL, notification_id FROM {EVENTS_TABLE}
WHERE originator_id = ANY(%b::uuid[]) AND topic = %b
"""
EXISTING = f"""
SELECT e.originator_id, e.originator_version, e.notification_id, e.state
FROM {EVENTS_TABLE} e
JOIN unnest(%b::uuid[], %b::bigint[]) AS k(id, version)
  ON e.originator_id = k.id AND e.originator_version = k.version
"""
CLOSED_TOPIC = f"{Election.__module__}:{Election.__qualname__}.Closed"
RECORDED = (
    f"SELECT notification_id, topic, state FROM {EVENTS_TABLE} "
    "WHERE originator_id = %s AND originator_version = %s"
)


@dataclass
class _Append:
    events: list[StoredEvent]
    future: asyncio.Future[Recorded]
    guard: UUID | None = None  # record only while this election is open in the log
    keys: list[Key] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = [(cast(UUID, e.originator_id), e.originator_version) for e in self.events]


@dataclass
class _Outcome:
    position: int | None = None
    error: BaseException | None = None


@dataclass
class WriterStats:
    """Running figures (the same go to Prometheus)."""

    batches: int = 0
    appends: int = 0
    conflicts: int = 0
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
        commit_timeout: float = 15.0,
    ) -> None:
        self.app = app
        self.database_url = database_url
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.commit_timeout = commit_timeout
        self.stats = WriterStats()
        self._queue: deque[_Append] = deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

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
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"{len(self._queue)} appends are already waiting")
        events = [self.app.mapper.to_stored_event(e) for e in domain_events]
        assert self._loop is not None
        submission = _Append(events, self._loop.create_future(), while_open)
        with self._wakeup:
            self._queue.append(submission)
            self._wakeup.notify()
        return await submission.future

    async def load_election(self, election_id: UUID) -> Election | None:
        return await asyncio.to_thread(self._load, election_id, Election)

    async def load_ballot(self, ballot_id: UUID) -> Ballot | None:
        return await asyncio.to_thread(self._load, ballot_id, Ballot)

    async def recorded(self, aggregate_id: UUID, version: int) -> Recorded:
        return await asyncio.to_thread(self._recorded, aggregate_id, version)

    def _load(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        return self.app.stored(aggregate_id, kind)

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
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if not self._queue and self._stopping:
                    break
                batch = self._take_batch()
            started = time.perf_counter()
            outcomes = self._commit_with_retries(batch)
            elapsed = time.perf_counter() - started
            self.stats.batches += 1
            self.stats.appends += len(batch)
            self.stats.last_batch_size = len(batch)
            metrics.WRITE_BATCH_SIZE.observe(len(batch))
            metrics.WRITE_COMMIT_SECONDS.observe(elapsed)
            metrics.WRITER_QUEUE.set(len(self._queue))
            assert self._loop is not None
            self._loop.call_soon_threadsafe(_settle, batch, outcomes)
        if self._conn is not None:
            self._conn.close()

    def _take_batch(self) -> list[_Append]:
        """Up to max_batch appends; one touching a key already in the batch waits its turn.

        Two appends of the same (aggregate, version) in one INSERT could not be told apart
        in RETURNING; deferred, the second one meets the first as an ordinary conflict.
        """
        batch: list[_Append] = []
        taken: set[Key] = set()
        deferred: list[_Append] = []
        while self._queue and len(batch) < self.max_batch:
            submission = self._queue.popleft()
            if taken.intersection(submission.keys):
                deferred.append(submission)
                continue
            taken.update(submission.keys)
            batch.append(submission)
        self._queue.extendleft(reversed(deferred))
        return batch

    def _commit_with_retries(self, batch: list[_Append]) -> list[_Outcome]:
        deadline = time.monotonic() + self.commit_timeout
        delay = 0.05
        uncertain = False  # a previous attempt may have committed before failing
        while True:
            try:
                conn = self._connection()
                return self._commit(conn, batch, recognise_own=uncertain)
            except psycopg.OperationalError as error:
                self._drop_connection()
                uncertain = True
                if time.monotonic() + delay > deadline:
                    log.error("event store unreachable, %d appends refused: %s", len(batch), error)
                    refusal = StoreUnavailable(
                        "the event store is unreachable; the ballot may or may not be "
                        "recorded: retry with the same Idempotency-Key to find out"
                    )
                    return [_Outcome(error=refusal) for _ in batch]
                log.warning("event store connection lost (%s); retrying in %.2fs", error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception as error:  # a bug or a bad row: fail this batch, keep running
                log.exception("group commit failed")
                self._drop_connection()
                return [_Outcome(error=error) for _ in batch]

    def _commit(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        batch: Sequence[_Append],
        *,
        recognise_own: bool,
    ) -> list[_Outcome]:
        outcomes: dict[int, _Outcome] = {}
        live = list(batch)
        while live:
            refused = self._insert(conn, live, outcomes, recognise_own=recognise_own)
            # The batch was rolled back for these: refuse them, record the others again.
            outcomes.update(refused)
            live = [s for s in live if id(s) not in refused] if refused else []
        return [outcomes[id(s)] for s in batch]

    def _insert(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        live: Sequence[_Append],
        outcomes: dict[int, _Outcome],
        *,
        recognise_own: bool,
    ) -> dict[int, _Outcome]:
        """One transaction for the batch. If some appends may not stand, it is rolled back
        and those are returned with their refusals, for the others to be recorded again:

        - an append with only some of its rows recorded (an append is atomic);
        - a ballot that landed after its election's Closed event, recorded meanwhile by
          another process (or earlier in this very batch): a 2xx would promise a ballot
          that the count leaves out.
        """
        events = [e for submission in live for e in submission.events]
        guards = list({s.guard for s in live if s.guard is not None})
        with conn.transaction():
            # Every round trip here holds the table lock, and may wait for this thread to
            # get the GIL back from the event loop: as few as can be.
            conn.execute(f"LOCK TABLE {EVENTS_TABLE} IN EXCLUSIVE MODE; NOTIFY {EVENTS_TABLE}")
            rows = conn.execute(
                INSERT,
                (
                    [e.originator_id for e in events],
                    [e.originator_version for e in events],
                    [e.topic for e in events],
                    [e.state for e in events],
                    guards,
                    CLOSED_TOPIC,
                ),
                prepare=True,
            ).fetchall()
            recorded = {
                (cast(UUID, uuid), cast(int, version)): cast(int, position)
                for uuid, version, position in rows
                if version is not None
            }
            if recognise_own and len(recorded) < len(events):
                recorded.update(self._own_rows(conn, live, recorded))
            refused = {
                id(s): _Outcome(error=VersionConflict())
                for s in live
                if 0 < sum(k in recorded for k in s.keys) < len(s.keys)
            }
            if guards:
                closes = [(cast(UUID, r[0]), cast(int, r[2])) for r in rows if r[1] is None]
                closes += [  # a Closed event in this very batch
                    (cast(UUID, e.originator_id), recorded[key])
                    for e in events
                    if e.topic == CLOSED_TOPIC
                    and (key := (cast(UUID, e.originator_id), e.originator_version)) in recorded
                ]
                refused.update(_after_close(live, recorded, closes))
            if refused:
                raise psycopg.Rollback  # leaves the block, rolled back, without an error
        if refused:
            return refused
        for submission in live:
            if all(k in recorded for k in submission.keys):
                outcomes[id(submission)] = _Outcome(position=recorded[submission.keys[-1]])
            else:
                self.stats.conflicts += 1
                outcomes[id(submission)] = _Outcome(error=VersionConflict())
        return {}

    def _own_rows(
        self,
        conn: psycopg.Connection[tuple[object, ...]],
        live: Sequence[_Append],
        recorded: dict[Key, int],
    ) -> dict[Key, int]:
        """Rows that an earlier, failed attempt of this very batch did commit.

        An event's state includes its timestamp to the microsecond and the request it came
        from, so an identical (id, version, state) row can only be ours.
        """
        ours = {k: e.state for s in live for k, e in zip(s.keys, s.events, strict=True)}
        missing = [k for k in ours if k not in recorded]
        rows = conn.execute(EXISTING, ([k[0] for k in missing], [k[1] for k in missing])).fetchall()
        found: dict[Key, int] = {}
        for originator_id, version, position, state in rows:
            key = (cast(UUID, originator_id), cast(int, version))
            if bytes(cast(bytes, state)) == ours.get(key):
                found[key] = cast(int, position)
        return found

    def _connection(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, autocommit=True)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _after_close(
    live: Sequence[_Append], recorded: dict[Key, int], closes: Sequence[tuple[UUID, int]]
) -> dict[int, _Outcome]:
    """Guarded appends that landed after their election's Closed event (``closes``: the
    guarded elections' Closed positions, read under the table lock, so no close can
    commit between this check and COMMIT)."""
    closed_at = dict(closes)
    return {
        id(s): _Outcome(error=ElectionNotOpen(CLOSED_BEFORE_RECORDED))
        for s in live
        if s.guard in closed_at and recorded.get(s.keys[0], 0) > closed_at[s.guard]
    }


def _settle(batch: Sequence[_Append], outcomes: Sequence[_Outcome]) -> None:
    for submission, outcome in zip(batch, outcomes, strict=True):
        if submission.future.done():  # the caller went away; the append stands regardless
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
