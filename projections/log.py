"""Log entries as projections see them: decoded JSON, with their position."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple
from uuid import UUID

import orjson
from psycopg import AsyncConnection

from infra.store import EVENTS_TABLE

PAGE = f"""
SELECT notification_id, originator_id, originator_version, topic, state
FROM {EVENTS_TABLE}
WHERE notification_id > %s AND notification_id <= %s
ORDER BY notification_id LIMIT %s
"""
HEAD = f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"


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
