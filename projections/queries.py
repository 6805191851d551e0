"""Reading the tally read model: one statement, so one consistent snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

SNAPSHOT = """
SELECT
    (SELECT position FROM read_models.tally_position),
    e.rules,
    e.closed_at,
    (SELECT count(*) FROM read_models.tally_late_ballots WHERE election_id = %(id)s),
    (SELECT max(position) FROM read_models.tally_late_ballots WHERE election_id = %(id)s),
    (SELECT coalesce(jsonb_object_agg(key, value), '{}'::jsonb)
       FROM read_models.tally_counters WHERE election_id = %(id)s),
    v.version,
    coalesce(e.entries, 0),
    coalesce(e.published_position, 0),
    e.published_counters,
    (SELECT count(*) FROM projection_set_aside s
      WHERE s.name = 'tally' AND s.version = v.version AND s.election_id = %(id)s),
    (SELECT count(*) FROM projection_set_aside s
      WHERE s.name = 'tally' AND s.version = v.version AND s.election_id IS NULL),
    CASE WHEN e.election_id IS NULL THEN
      (SELECT min(notification_id) FROM cardinal_events WHERE originator_id = %(id)s)
    END
FROM (SELECT active_version AS version FROM projections WHERE name = 'tally') AS v
LEFT JOIN read_models.tally_elections e ON e.election_id = %(id)s
"""


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
    cursor = await conn.execute(SNAPSHOT, {"id": election_id}, prepare=True)
    row = await cursor.fetchone()
    if row is None:  # the tally has no version yet
        return TallySnapshot(0, None, None, 0, {})
    (
        position,
        rules,
        closed_at,
        late,
        last_late,
        counters,
        version,
        entries,
        published_position,
        published_counters,
        set_aside,
        unattributed,
        created,
    ) = row
    if created is not None:
        # The tally holds no row of the election: nothing is counted yet, which is what
        # the log says as of its creation, so that is where a reader's document is dated
        # (dated at the tally's position, before the creation, no audit could re-derive
        # it); an auditor's, at the tally's position where that is later (a tally that
        # set the creation aside), else at the creation too.
        published_position = int(created)
        position = max(int(position or 0), published_position)
    return TallySnapshot(
        int(position or 0),
        rules,
        closed_at,
        int(late),
        counters,
        version or 0,
        int(entries),
        int(published_position),
        published_counters,
        int(set_aside),
        int(unattributed),
        None if last_late is None else int(last_late),
    )
