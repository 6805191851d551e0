"""One group commit: a batch of appends recorded in one transaction, or refused.

First as one statement that is its own transaction (migrations 0007 and 0008, ``cardinal_append``):

    LOCK TABLE cardinal_events IN EXCLUSIVE MODE; NOTIFY cardinal_events;
    INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING ...; checks; COMMIT

one round trip, the table lock never held across one. Where the batch cannot stand as
recorded (an append partly recorded, a ballot behind its election's close) that statement
records nothing, and the batch is worked out here statement by statement, in a
transaction that refuses exactly the appends that cannot stand and records the others.

The writer (infra/store/writer.py) decides when a batch goes and what its callers are told;
this module is the transaction itself, and what it can tell: the rows recorded, the
appends refused (a conflict, a ballot behind its election's close), and whether the
commit's answer was lost with the connection (the one case whose outcome only the store
knows).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast
from uuid import UUID

import psycopg
from eventsourcing.persistence import StoredEvent

from domain.application import CLOSED_BEFORE_RECORDED
from domain.election import Election
from domain.errors import ElectionNotOpen
from domain.ports import Recorded, VersionConflict
from infra.store import EVENTS_TABLE

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
APPEND = """
SELECT originator_id, originator_version, notification_id
FROM cardinal_append(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[], %b::integer[],
                     %b::uuid[], %b)
"""
# admin_shutdown, idle_session_timeout: delivered before a commit or on the next statement.
CERTAIN_FATAL = frozenset({"57P01", "57P05"})
MUST_SORT_OUT = "CV001"  # raised by cardinal_append: nothing recorded, see _insert
EXISTING = f"""
SELECT e.originator_id, e.originator_version, e.notification_id, e.state
FROM {EVENTS_TABLE} e
JOIN unnest(%b::uuid[], %b::bigint[]) AS k(id, version)
  ON e.originator_id = k.id AND e.originator_version = k.version
"""
CLOSED_TOPIC = f"{Election.__module__}:{Election.__qualname__}.Closed"


@dataclass
class Append:
    events: list[StoredEvent]
    future: asyncio.Future[Recorded]
    guard: UUID | None = None  # record only while this election is open in the log
    keys: list[Key] = field(init=False)
    deadline: float = 0.0  # loop time by which it must be answered (see the writer)
    # It carries an Idempotency-Key: it may be the retry of an attempt that was recorded,
    # so a certain refusal says that this attempt recorded nothing, not that the ballot
    # was not recorded (the writer's KEYED_* words).
    keyed: bool = False

    def __post_init__(self) -> None:
        self.keys = [(cast(UUID, e.originator_id), e.originator_version) for e in self.events]


@dataclass
class Outcome:
    position: int | None = None
    error: BaseException | None = None


@dataclass
class Progress:
    """What a commit tells the writer besides its outcomes."""

    committing: bool = False  # the commit sent, its answer not yet read
    # A statement that commits as it ends: a cancel either stops it before it commits
    # (the server answers with an error) or comes too late to change anything.
    cancellable: bool = True
    conflicts: int = 0


def commit_batch(
    conn: psycopg.Connection[tuple[object, ...]],
    batch: Sequence[Append],
    progress: Progress,
    *,
    recognise_own: bool,
) -> list[Outcome]:
    if not recognise_own:
        fast = _append_at_once(conn, batch, progress)
        if fast is not None:
            return fast
    outcomes: dict[int, Outcome] = {}
    live = list(batch)
    while live:
        refused = _insert(conn, live, outcomes, progress, recognise_own=recognise_own)
        # The batch was rolled back for these: refuse them, record the others again.
        outcomes.update(refused)
        live = [s for s in live if id(s) not in refused] if refused else []
    return [outcomes[id(s)] for s in batch]


def _columns(events: Sequence[StoredEvent]) -> tuple[list[object], ...]:
    """The events as the four arrays both statements insert from."""
    return (
        [e.originator_id for e in events],
        [e.originator_version for e in events],
        [e.topic for e in events],
        [e.state for e in events],
    )


_CURSORS: weakref.WeakKeyDictionary[
    psycopg.Connection[tuple[object, ...]], psycopg.Cursor[tuple[object, ...]]
] = weakref.WeakKeyDictionary()


def _cursor(conn: psycopg.Connection[tuple[object, ...]]) -> psycopg.Cursor[tuple[object, ...]]:
    """The connection's one cursor for the group commit. A cursor keeps the dumpers it
    chose for the statement's arrays; a new one per batch chose them again (60 us of the
    writer's CPU per batch of 16, a third of its client side)."""
    cursor = _CURSORS.get(conn)
    if cursor is None or cursor.closed:
        cursor = _CURSORS[conn] = conn.cursor()
    return cursor


def _append_at_once(
    conn: psycopg.Connection[tuple[object, ...]],
    batch: Sequence[Append],
    progress: Progress,
) -> list[Outcome] | None:
    """The batch as one statement, which is its whole transaction (migrations 0007 and 0008):
    one round trip, the table lock held only while the server works. None where the
    batch cannot stand as recorded (nothing was): the caller works it out."""
    events = [e for submission in batch for e in submission.events]
    multi = any(len(s.events) > 1 for s in batch)
    guards = list({s.guard for s in batch if s.guard is not None})
    progress.committing = True  # the statement commits: a lost connection leaves it open
    progress.cancellable = True
    try:
        rows = (
            _cursor(conn)
            .execute(
                APPEND,
                (
                    *_columns(events),
                    [i for i, s in enumerate(batch, 1) for _ in s.events] if multi else None,
                    guards,
                    CLOSED_TOPIC,
                ),
                prepare=True,
            )
            .fetchall()
        )
    except psycopg.Error as error:
        # An ERROR the server sent for the statement means it did not commit: the commit
        # is the statement's last step, and what fails once a commit record is written
        # fails as a PANIC. A shutdown's FATAL is certain too: it is held off from the
        # commit until the answer is sent, so it lands on a statement that did not commit.
        # Anything else (a PANIC, another FATAL, a connection lost without an answer)
        # leaves the outcome open: the writer asks the store when it is back.
        severity = error.diag.severity_nonlocalized
        if severity == "ERROR" or error.sqlstate in CERTAIN_FATAL:
            progress.committing = False
        elif not isinstance(error, psycopg.OperationalError):
            raise psycopg.OperationalError(str(error)) from error
        if error.sqlstate != MUST_SORT_OUT:
            raise
        return None
    progress.committing = False
    recorded = {(cast(UUID, i), cast(int, v)): cast(int, p) for i, v, p in rows}
    outcomes = []
    for submission in batch:
        if submission.keys[0] in recorded:
            outcomes.append(Outcome(position=recorded[submission.keys[-1]]))
        else:
            progress.conflicts += 1
            outcomes.append(Outcome(error=VersionConflict()))
    return outcomes


def _insert(
    conn: psycopg.Connection[tuple[object, ...]],
    live: Sequence[Append],
    outcomes: dict[int, Outcome],
    progress: Progress,
    *,
    recognise_own: bool,
) -> dict[int, Outcome]:
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
                *_columns(events),
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
            recorded.update(_own_rows(conn, live, recorded))
        refused = {
            id(s): Outcome(error=VersionConflict())
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
        progress.committing = True  # from here, a lost connection leaves the outcome open
        progress.cancellable = False
    progress.committing = False
    if refused:
        return refused
    for submission in live:
        if all(k in recorded for k in submission.keys):
            outcomes[id(submission)] = Outcome(position=recorded[submission.keys[-1]])
        else:
            progress.conflicts += 1
            outcomes[id(submission)] = Outcome(error=VersionConflict())
    return {}


def _own_rows(
    conn: psycopg.Connection[tuple[object, ...]],
    live: Sequence[Append],
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


def _after_close(
    live: Sequence[Append], recorded: dict[Key, int], closes: Sequence[tuple[UUID, int]]
) -> dict[int, Outcome]:
    """Guarded appends that landed after their election's Closed event (``closes``: the
    guarded elections' Closed positions, read under the table lock, so no close can
    commit between this check and COMMIT)."""
    closed_at = dict(closes)
    return {
        id(s): Outcome(error=ElectionNotOpen(CLOSED_BEFORE_RECORDED))
        for s in live
        if s.guard in closed_at and recorded.get(s.keys[0], 0) > closed_at[s.guard]
    }
