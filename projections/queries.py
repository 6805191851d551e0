"""Reading the tally read model: one statement, so one consistent snapshot."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

import orjson
from psycopg import AsyncConnection

# What every view of an election's results is keyed and dated by: everything but its
# counters, a few small rows (the counters are most of a large election: a public STV
# election of 60 options and 53,000 distinct rankings holds 6.3 MB of them).
HEAD = """
SELECT
    (SELECT position FROM read_models.tally_position),
    e.rules,
    e.closed_at,
    (SELECT count(*) FROM read_models.tally_late_ballots WHERE election_id = %(id)s),
    (SELECT max(position) FROM read_models.tally_late_ballots WHERE election_id = %(id)s),
    v.version,
    coalesce(e.entries, 0),
    coalesce(e.published_position, 0),
    (SELECT count(*) FROM projection_set_aside s
      WHERE s.name = 'tally' AND s.version = v.version AND s.election_id = %(id)s),
    (SELECT count(*) FROM projection_set_aside s
      WHERE s.name = 'tally' AND s.version = v.version AND s.election_id IS NULL),
    CASE WHEN e.election_id IS NULL THEN
      (SELECT min(notification_id) FROM cardinal_events WHERE originator_id = %(id)s)
    END{counters}
FROM (SELECT active_version AS version FROM projections WHERE name = 'tally') AS v
LEFT JOIN read_models.tally_elections e ON e.election_id = %(id)s
"""
# The counters as JSON objects of up to CHUNK counters each, one a line (jsonb's text has
# no line break), decoded by whoever reads them (``Read.decode``): in a worker thread for a
# large election, never by psycopg on the event loop, and chunk by chunk, for a decoder
# holds the GIL throughout (one orjson.loads of a million characters stalled the loop
# 12 ms). In jsonb's order of keys (by length, then byte by byte), as psycopg's decoding of
# one jsonb had them: a tally's patterns come in that order.
CHUNK = 2048
_CHUNKS = """(SELECT string_agg(chunk, E'\\n' ORDER BY n) FROM (
        SELECT n, jsonb_object_agg(key, value)::text AS chunk FROM (
            SELECT key, value, ({number} - 1) / {chunk} AS n FROM {rows}) AS r
        GROUP BY n) AS c)"""
COUNTERS = ",\n    " + _CHUNKS.format(
    number='row_number() OVER (ORDER BY octet_length(key), key COLLATE "C")',
    chunk=CHUNK,
    rows="read_models.tally_counters WHERE election_id = %(id)s",
)
PUBLISHED = (  # (in the jsonb's own order; NULL: nothing published; '': published, empty)
    ",\n    CASE WHEN e.published_counters IS NOT NULL THEN coalesce("
    + _CHUNKS.format(
        number="i",
        chunk=CHUNK,
        rows="jsonb_each(e.published_counters) WITH ORDINALITY AS j(key, value, i)",
    )
    + ", '') END"
)
NONE = """,
    NULL::text"""
# One statement each, so one consistent snapshot: the head alone, or with the counters a
# view reads (the tally's, the published ones, or both).
QUERIES = {
    (counters, published): HEAD.format(
        counters=(COUNTERS if counters else NONE) + (PUBLISHED if published else NONE)
    )
    for counters in (False, True)
    for published in (False, True)
}
SNAPSHOT = QUERIES[True, True]


@dataclass(frozen=True)
class TallySnapshot:
    """An election's statistics as of ``position`` (rules None: not projected yet), and
    as last published (``domain.publication``)."""

    position: int
    rules: dict[str, Any] | None
    closed_at: int | None
    late_ballots: int
    counters: dict[str, int]
    version: int = 0  # the tally version read: a rebuild can change counts at a position
    entries: int = 0  # ballot entries counted
    published_position: int = 0
    published_counters: dict[str, int] | None = None  # None: nothing published yet
    set_aside: int = 0  # this election's entries the tally could not apply
    set_aside_unattributed: int = 0  # entries set aside that name no election legibly
    last_late: int | None = None  # the position of its last late ballot (None: none)


async def tally_snapshot(conn: AsyncConnection[Any], election_id: UUID) -> TallySnapshot:
    """The election's whole snapshot, its counters and published counters decoded."""
    return (await read_snapshot(conn, election_id, counters=True, published=True)).decode()


@dataclass(frozen=True)
class Read:
    """A snapshot as read: its head (``counters`` empty and ``published_counters`` None
    whatever the tally holds), and the counters asked for as text (``CHUNK`` counters a
    line), not decoded yet (None: not asked for; ``published``: also None where nothing is
    published)."""

    head: TallySnapshot
    counters: str | None = None
    published: str | None = None

    @property
    def size(self) -> int:
        """The characters of the counters read."""
        return len(self.counters or "") + len(self.published or "")

    def decode(self) -> TallySnapshot:
        """The snapshot with the counters read (a large election's take tens of ms: in a
        worker thread, where the event loop takes the GIL back between two chunks)."""
        if self.counters is None and self.published is None:
            return self.head
        return replace(
            self.head,
            counters=_decoded(self.counters or ""),
            published_counters=None if self.published is None else _decoded(self.published),
        )


def _decoded(text: str) -> dict[str, int]:
    counters: dict[str, int] = {}
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        counters.update(orjson.loads(text[start:end]))
        start = end + 1
    return counters


async def tally_head(conn: AsyncConnection[Any], election_id: UUID) -> TallySnapshot:
    """The snapshot without its counters (``counters`` empty, ``published_counters``
    None): what keys and dates a results document, a few small rows."""
    return (await read_snapshot(conn, election_id)).head


async def read_snapshot(
    conn: AsyncConnection[Any],
    election_id: UUID,
    *,
    counters: bool = False,
    published: bool = False,
) -> Read:
    """The snapshot in one statement, with the tally's ``counters`` and the ``published``
    ones if asked for, as text."""
    cursor = await conn.execute(QUERIES[counters, published], {"id": election_id}, prepare=True)
    row = await cursor.fetchone()
    if row is None:  # the tally has no version yet
        return Read(TallySnapshot(0, None, None, 0, {}), "" if counters else None)
    (
        position,
        rules,
        closed_at,
        late,
        last_late,
        version,
        entries,
        published_position,
        set_aside,
        unattributed,
        created,
        counters_text,
        published_text,
    ) = row
    if created is not None:
        # The tally holds no row of the election: nothing is counted yet, which is what
        # the log says as of its creation, so that is where a reader's document is dated
        # (dated at the tally's position, before the creation, no audit could re-derive
        # it); an auditor's, at the tally's position where that is later (a tally that
        # set the creation aside), else at the creation too.
        published_position = int(created)
        position = max(int(position or 0), published_position)
    head = TallySnapshot(
        int(position or 0),
        rules,
        closed_at,
        int(late),
        {},
        version or 0,
        int(entries),
        int(published_position),
        None,
        int(set_aside),
        int(unattributed),
        None if last_late is None else int(last_late),
    )
    if counters and counters_text is None:  # no counter yet
        counters_text = ""
    return Read(head, counters_text, published_text)
