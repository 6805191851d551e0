"""vote_statistics: ballot entries per election and hour, for operators' dashboards."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, sql

from infra.store.log import LogEvent, election_uuid
from projections.base import Projection

COLUMN = {"BallotCast": 0, "BallotRevised": 1, "BallotWithdrawn": 2}


class StatisticsProjection(Projection):
    name = "statistics"
    tables = ("vote_statistics",)

    def __init__(self) -> None:
        # Each election's close position (None: open) as this version's rows say, kept
        # between pages while the runner says nobody else writes them (see forget).
        self._known_closes: dict[UUID, int | None] = {}
        self._schema = ""

    def forget(self) -> None:
        self._known_closes.clear()

    async def apply(
        self, conn: AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        s = sql.Identifier(schema)
        if schema != self._schema:
            self.forget()
            self._schema = schema
        closes = self._known_closes
        await self._closes(conn, s, events, closes)
        # (election, hour) -> [ballots, revisions, withdrawals, late, last vote time]
        buckets: dict[tuple[UUID, datetime], list[Any]] = {}
        for event in events:
            if event.type == "ElectionClosed":
                closes[event.stream_id] = event.position
                await conn.execute(
                    sql.SQL("INSERT INTO {}.closes (election_id, position) VALUES (%s, %s)").format(
                        s
                    ),
                    (event.stream_id, event.position),
                )
                continue
            column = COLUMN.get(event.type)
            if column is None:
                continue
            election_id = election_uuid(event.data["election_id"])
            closed_at = closes.get(election_id)
            if closed_at is not None and event.position > closed_at:
                column = 3
            moment = datetime.fromisoformat(event.timestamp)
            hour = moment.replace(minute=0, second=0, microsecond=0)
            bucket = buckets.setdefault((election_id, hour), [0, 0, 0, 0, moment])
            bucket[column] += 1
            bucket[4] = max(bucket[4], moment)
        if not buckets:
            return
        rows = [(key[0], key[1], *values) for key, values in buckets.items()]
        await conn.execute(
            sql.SQL(
                "INSERT INTO {}.vote_statistics AS v "
                "(election_id, hour, ballots, revisions, withdrawals, late, last_vote_at) "
                "SELECT * FROM unnest(%s::uuid[], %s::timestamptz[], %s::int[], %s::int[], "
                "%s::int[], %s::int[], %s::timestamptz[]) "
                "ON CONFLICT (election_id, hour) DO UPDATE SET "
                "ballots = v.ballots + excluded.ballots, "
                "revisions = v.revisions + excluded.revisions, "
                "withdrawals = v.withdrawals + excluded.withdrawals, "
                "late = v.late + excluded.late, "
                "last_vote_at = greatest(v.last_vote_at, excluded.last_vote_at)"
            ).format(s),
            tuple(list(column) for column in zip(*rows, strict=True)),
        )

    @staticmethod
    async def _closes(
        conn: AsyncConnection[Any],
        s: sql.Identifier,
        events: Sequence[LogEvent],
        closes: dict[UUID, int | None],
    ) -> None:
        """Read into ``closes`` the close positions of the elections it does not know yet."""
        wanted = {election_uuid(e.data["election_id"]) for e in events if e.type in COLUMN}
        wanted.difference_update(closes)
        if not wanted:
            return
        cursor = await conn.execute(
            sql.SQL(
                "SELECT election_id, position FROM {}.closes WHERE election_id = ANY(%s)"
            ).format(s),
            (list(wanted),),
        )
        found = {row[0]: row[1] for row in await cursor.fetchall()}
        for election_id in wanted:
            closes[election_id] = found.get(election_id)
