"""The log, read: its entries in position order, as readers see them.

The one owner of reading ``cardinal_events``: an entry's type from its topic, entries as
decoded JSON with their position (``LogEvent``, what projections and the relay work with),
pages and the head, and the log replayed as domain events (a recount of the store). An
entry that cannot be read is never an error here: it comes marked, for its reader to set
aside.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from psycopg import AsyncConnection

from domain.recount import Recount
from infra.store import EVENTS_TABLE

PAGE = f"""
SELECT notification_id, originator_id, originator_version, topic, state
FROM {EVENTS_TABLE}
WHERE notification_id > %s AND notification_id <= %s
ORDER BY notification_id LIMIT %s
"""
HEAD = f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"
EVERY_PAGE = f"""
SELECT notification_id, originator_id, originator_version, topic, state
FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT %s
"""
REPLAY_PAGE_SIZE = 5000


class LogEvent(NamedTuple):
    """One log entry: ``type`` is e.g. 'BallotCast'; ``data`` is its JSON state.

    An entry whose state is not a JSON object (a bug, an older version, a hand edit) comes
    with empty ``data`` and says why in ``unreadable``: readers set it aside and go on.

    A named tuple rather than a dataclass: rebuilds create a million of these, and tuple
    construction is several times cheaper.
    """

    position: int
    stream_id: UUID
    version: int
    type: str
    data: dict[str, Any]
    unreadable: str | None = None

    @property
    def election_id(self) -> UUID | None:
        """The election this entry belongs to, where it says so legibly."""
        if self.type.startswith("Election"):
            return self.stream_id
        try:
            return UUID(self.data["election_id"])
        except (KeyError, ValueError, TypeError, AttributeError):
            return None

    @property
    def timestamp(self) -> str:
        return str(self.data["timestamp"])

    def to_message(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "stream_id": str(self.stream_id),
            "version": self.version,
            "type": self.type,
            "data": self.data,
        }

    @classmethod
    def from_message(cls, item: dict[str, Any]) -> LogEvent:
        position = int(item["position"])
        stream_id = UUID(item["stream_id"])
        version = int(item["version"])
        kind = str(item["type"])
        data = item["data"]
        if not isinstance(data, dict):
            return cls(position, stream_id, version, kind, {}, _NOT_AN_OBJECT)
        return cls(position, stream_id, version, kind, data)


@functools.lru_cache(maxsize=4096)
def election_uuid(text: str) -> UUID:
    """An election id named in a ballot entry, as a UUID: the same few ids come on every
    ballot entry, so each is parsed once (a bad one raises, as UUID() does)."""
    return UUID(text)


@functools.cache
def event_type(topic: str) -> str:
    """A log entry's type from its topic: 'domain.ballot:Ballot.Cast' -> 'BallotCast'."""
    return topic.rpartition(":")[2].replace(".", "")


_NOT_AN_OBJECT = "its state is not a JSON object"


def decode_row(row: Sequence[Any]) -> LogEvent:
    position, stream_id, version, topic, state = row
    kind = event_type(topic)
    try:
        data = orjson.loads(state)
    except orjson.JSONDecodeError as error:
        return LogEvent(position, stream_id, version, kind, {}, f"unreadable state: {error}")
    if not isinstance(data, dict):
        return LogEvent(position, stream_id, version, kind, {}, _NOT_AN_OBJECT)
    return LogEvent(position, stream_id, version, kind, data)


async def head(conn: AsyncConnection[Any]) -> int:
    """The last committed position (every lower one has committed too: inserts hold the
    table lock until commit, so ids are issued in commit order)."""
    cursor = await conn.execute(HEAD)
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def read_page(
    conn: AsyncConnection[Any], after: int, upto: int, limit: int
) -> list[LogEvent]:
    """Up to ``limit`` entries with after < position <= upto, in position order."""
    # Binary results: uuid and bytea columns decode about a third faster.
    cursor = await conn.execute(PAGE, (after, upto, limit), prepare=True, binary=True)
    return [decode_row(row) for row in await cursor.fetchall()]


async def read_log(
    conn: AsyncConnection[Any],
    mapper: Mapper[UUID],
    after: int = 0,
    page_size: int = REPLAY_PAGE_SIZE,
) -> AsyncIterator[tuple[int, DomainEventProtocol[UUID] | Unreadable]]:
    """Every event after ``after``, as (position, event), in position order; an entry
    that cannot be read comes as Unreadable."""
    while True:
        cursor = await conn.execute(EVERY_PAGE, (after, page_size))
        rows = await cursor.fetchall()
        for position, originator_id, version, topic, state in rows:
            stored = StoredEvent(
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=bytes(state),
            )
            try:
                event: DomainEventProtocol[UUID] | Unreadable = mapper.to_domain_event(stored)
            except Exception as error:
                event = Unreadable(f"unreadable: {type(error).__name__}: {error}")
            yield int(position), event
        if len(rows) < page_size:
            return
        after = int(rows[-1][0])


async def recount_store(conn: AsyncConnection[Any], mapper: Mapper[UUID]) -> Recount:
    """A full recount of every election from the log (an entry that cannot be read is set
    aside, as the projections set it aside)."""
    recount = Recount()
    async for position, event in read_log(conn, mapper):
        if isinstance(event, Unreadable):
            recount.position = position
            recount.put_aside(position, None, str(event))
        else:
            recount.apply(position, event)
    return recount


class Unreadable(Exception):
    """A log entry the mapper cannot turn into a domain event, in its place."""
