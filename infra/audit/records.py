"""Reading the log with its chain links: pages of the whole log, or of one election."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
from psycopg import AsyncConnection

from infra.store import EVENTS_TABLE
from infra.store.log import election_uuid, event_type

LOG_PAGE = f"""
SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state, c.hash
FROM {EVENTS_TABLE} e LEFT JOIN audit_chain c ON c.position = e.notification_id
WHERE e.notification_id > %s AND e.notification_id <= %s
ORDER BY e.notification_id LIMIT %s
"""
PREVIOUS_LINK = "SELECT hash FROM audit_chain WHERE position < %s ORDER BY position DESC LIMIT 1"
SEALED_HEAD = "SELECT coalesce(max(position), 0) FROM audit_chain"
# The log past the chain is read this many entries at a time, for as long as it takes:
# a sealer behind (or down) may leave more than a page unsealed.
TAIL_PAGE = 100_000
# Each link names its entry's election (migration 0009): an index range, in position order.
ELECTION_SEALED = f"""
SELECT e.notification_id, e.originator_id, e.originator_version, e.topic, e.state, c.hash,
       (SELECT p.hash FROM audit_chain p WHERE p.position < c.position
        ORDER BY p.position DESC LIMIT 1)
FROM audit_chain c
JOIN {EVENTS_TABLE} e ON e.notification_id = c.position
WHERE c.election_id = %s AND c.position > %s AND c.position <= %s
ORDER BY c.position LIMIT %s
"""


@dataclass(frozen=True)
class Entry:
    """A log entry as auditors see it, with its chain link once sealed."""

    position: int
    stream_id: UUID
    version: int
    topic: str
    state: bytes
    hash: bytes | None
    prev_hash: bytes | None

    @property
    def type(self) -> str:
        return event_type(self.topic)

    @property
    def data(self) -> dict[str, Any] | None:
        """The entry's state; None if it is not a JSON object (unreadable)."""
        try:
            decoded = orjson.loads(self.state)
        except orjson.JSONDecodeError:
            return None
        return decoded if isinstance(decoded, dict) else None

    def to_json(self) -> dict[str, Any]:
        data = self.data
        document = {
            "position": self.position,
            "stream_id": str(self.stream_id),
            "version": self.version,
            "type": self.type,
            "timestamp": None if data is None else data.pop("timestamp", None),
            "data": data,
            "hash": self.hash.hex() if self.hash else None,
            "prev_hash": self.prev_hash.hex() if self.prev_hash else None,
        }
        if data is None:  # shown as stored, so that its chain link can be checked
            document["state_hex"] = self.state.hex()
        return document


async def log_page(
    conn: AsyncConnection[Any], after: int, limit: int, upto: int = 2**62
) -> list[Entry]:
    """Entries after ``after`` (at most ``upto``), with their links, in position order."""
    cursor = await conn.execute(LOG_PAGE, (after, upto, limit), prepare=True, binary=True)
    rows = await cursor.fetchall()
    previous = await _previous(conn, rows[0][0]) if rows else None
    entries = []
    for position, stream_id, version, topic, state, link in rows:
        entries.append(Entry(position, stream_id, version, topic, bytes(state), link, previous))
        previous = link
    return entries


async def election_page(
    conn: AsyncConnection[Any], election_id: UUID, after: int, limit: int, upto: int = 2**62
) -> list[Entry]:
    """One election's entries after ``after``: the sealed ones through the election's
    streams, then any not sealed yet (found by reading the log's unsealed tail)."""
    cursor = await conn.execute(SEALED_HEAD)
    row = await cursor.fetchone()
    sealed_head = int(row[0]) if row else 0
    entries: list[Entry] = []
    if after < sealed_head:
        cursor = await conn.execute(
            ELECTION_SEALED,
            (election_id, after, min(upto, sealed_head), limit),
            prepare=True,
            binary=True,
        )
        for position, stream_id, version, topic, state, link, previous in await cursor.fetchall():
            entries.append(Entry(position, stream_id, version, topic, bytes(state), link, previous))
    start = max(after, sealed_head)
    while len(entries) < limit and start < upto:  # the unsealed tail, page by page
        tail = await log_page(conn, start, TAIL_PAGE, upto)
        if not tail:
            break
        for entry in tail:
            if _belongs(entry, election_id):
                entries.append(entry)
                if len(entries) == limit:
                    return entries
        start = tail[-1].position
    return entries


async def election_entries(
    conn: AsyncConnection[Any], election_id: UUID, upto: int
) -> AsyncIterator[Entry]:
    """Every entry of one election up to ``upto``, in position order."""
    after = 0
    while True:
        page = await election_page(conn, election_id, after, 10_000, upto)
        for entry in page:
            yield entry
        if len(page) < 10_000:
            return
        after = page[-1].position


def _belongs(entry: Entry, election_id: UUID) -> bool:
    """Whether an unsealed entry is the election's: read as the sealer will file it once
    sealed (the election id parsed, not compared as text), so that sealing does not move
    an entry into or out of an election's events."""
    if entry.stream_id == election_id:
        return True
    data = entry.data if entry.type.startswith("Ballot") else None
    named = data.get("election_id") if data is not None else None
    if not isinstance(named, str):
        return False
    try:
        return election_uuid(named) == election_id
    except ValueError:
        return False


async def _previous(conn: AsyncConnection[Any], position: int) -> bytes | None:
    cursor = await conn.execute(PREVIOUS_LINK, (position,), prepare=True)
    row = await cursor.fetchone()
    return bytes(row[0]) if row else None
