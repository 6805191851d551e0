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
    (SELECT coalesce(jsonb_object_agg(key, value), '{}'::jsonb)
       FROM read_models.tally_counters WHERE election_id = %(id)s),
    (SELECT active_version FROM projections WHERE name = 'tally')
FROM (SELECT 1) AS one
LEFT JOIN read_models.tally_elections e ON e.election_id = %(id)s
"""


@dataclass(frozen=True)
class TallySnapshot:
    """An election's statistics as of ``position`` (rules None: not projected yet)."""

    position: int
    rules: dict[str, Any] | None
    closed_at: int | None
    late_ballots: int
    counters: dict[str, int]
    version: int = 0  # the tally version read: a rebuild can change counts at a position


async def tally_snapshot(conn: AsyncConnection[Any], election_id: UUID) -> TallySnapshot:
    cursor = await conn.execute(SNAPSHOT, {"id": election_id}, prepare=True)
    row = await cursor.fetchone()
    assert row is not None
    position, rules, closed_at, late, counters, version = row
    return TallySnapshot(int(position or 0), rules, closed_at, int(late), counters, version or 0)
