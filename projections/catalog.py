"""The elections catalog: one row per election with its status and ballot activity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
from psycopg import AsyncConnection, AsyncCursor, sql

from infra.store.log import LogEvent, election_uuid
from projections.base import Projection

BALLOT_COLUMNS = {
    "BallotCast": "ballots_cast",
    "BallotRevised": "revisions",
    "BallotWithdrawn": "withdrawals",
}


@dataclass
class _Activity:
    """One election's ballot entries in a batch, written as one UPDATE."""

    ballots_cast: int = 0
    revisions: int = 0
    withdrawals: int = 0
    late_ballots: int = 0
    last_ballot_at: datetime | None = None
    position: int = 0


def _moment(timestamp: str) -> datetime:
    """An entry's time as a time, not text: RFC 3339 texts order as text only while every
    one is in UTC with the same spelling (``Z`` or ``+00:00``, ``T`` or a space, with or
    without a fraction). A time without an offset is read as UTC."""
    moment = datetime.fromisoformat(timestamp)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class CatalogProjection(Projection):
    name = "catalog"
    tables = ("elections",)

    def __init__(self) -> None:
        # Each election's close position (None: open) as this version's rows say, kept
        # between pages while the runner says nobody else writes them (see forget).
        self._closes: dict[UUID, int | None] = {}
        self._schema = ""

    def forget(self) -> None:
        self._closes.clear()

    async def apply(
        self, conn: AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        s = sql.Identifier(schema)
        if schema != self._schema:
            self.forget()
            self._schema = schema
        closes = self._closes
        await self._close_positions(conn, s, events, closes)
        activity: dict[UUID, _Activity] = {}
        async with conn.cursor() as cur:
            for event in events:
                if event.type in BALLOT_COLUMNS:
                    election_id = election_uuid(event.data["election_id"])
                    figures = activity.setdefault(election_id, _Activity())
                    closed_at = closes.get(election_id)
                    column = (
                        "late_ballots"
                        if closed_at is not None and event.position > closed_at
                        else BALLOT_COLUMNS[event.type]
                    )
                    setattr(figures, column, getattr(figures, column) + 1)
                    moment = _moment(event.timestamp)
                    if figures.last_ballot_at is None or moment > figures.last_ballot_at:
                        figures.last_ballot_at = moment
                    figures.position = event.position
                else:
                    await self._election(cur, s, event, closes)
            if activity:
                # One statement for every election the batch touched.
                rows = [
                    (
                        election_id,
                        f.ballots_cast,
                        f.revisions,
                        f.withdrawals,
                        f.late_ballots,
                        f.last_ballot_at,
                        f.position,
                    )
                    for election_id, f in activity.items()
                ]
                await cur.execute(
                    sql.SQL(
                        "UPDATE {0}.elections e SET ballots_cast = e.ballots_cast + a.cast_, "
                        "revisions = e.revisions + a.revised, "
                        "withdrawals = e.withdrawals + a.withdrawn, "
                        "late_ballots = e.late_ballots + a.late, "
                        "last_ballot_at = greatest(e.last_ballot_at, a.last_at), "
                        "position = greatest(e.position, a.position) "
                        "FROM unnest(%s::uuid[], %s::int[], %s::int[], %s::int[], %s::int[], "
                        "%s::timestamptz[], %s::bigint[]) "
                        "AS a(election_id, cast_, revised, withdrawn, late, last_at, position) "
                        "WHERE e.election_id = a.election_id"
                    ).format(s),
                    tuple(list(column) for column in zip(*rows, strict=True)),
                )

    @staticmethod
    async def _close_positions(
        conn: AsyncConnection[Any],
        s: sql.Identifier,
        events: Sequence[LogEvent],
        closes: dict[UUID, int | None],
    ) -> None:
        """Read into ``closes`` the close positions of the elections it does not know yet."""
        wanted = {
            election_uuid(e.data["election_id"]) for e in events if e.type in BALLOT_COLUMNS
        }.difference(closes)
        if not wanted:
            return
        cursor = await conn.execute(
            sql.SQL(
                "SELECT election_id, close_position FROM {}.elections WHERE election_id = ANY(%s)"
            ).format(s),
            (list(wanted),),
        )
        found = {row[0]: row[1] for row in await cursor.fetchall()}
        for election_id in wanted:
            closes[election_id] = found.get(election_id)

    @staticmethod
    async def _election(
        cur: AsyncCursor[Any], s: sql.Identifier, event: LogEvent, closes: dict[UUID, int | None]
    ) -> None:
        if event.type == "ElectionCreated":
            closes[event.stream_id] = None
            rules = event.data["rules"]
            await cur.execute(
                sql.SQL(
                    "INSERT INTO {}.elections "
                    "(election_id, title, method, rules, status, created_at, position) "
                    "VALUES (%s, %s, %s, %s::jsonb, 'draft', %s, %s)"
                ).format(s),
                (
                    event.stream_id,
                    event.data["title"],
                    rules["method"],
                    orjson.dumps(rules).decode(),
                    event.timestamp,
                    event.position,
                ),
            )
        elif event.type == "ElectionOpened":
            await cur.execute(
                sql.SQL(
                    "UPDATE {}.elections SET status = 'open', opened_at = %s, position = %s "
                    "WHERE election_id = %s"
                ).format(s),
                (event.timestamp, event.position, event.stream_id),
            )
        elif event.type == "ElectionClosed":
            closes[event.stream_id] = event.position
            await cur.execute(
                sql.SQL(
                    "UPDATE {}.elections SET status = 'closed', closed_at = %s, "
                    "close_position = %s, position = %s WHERE election_id = %s"
                ).format(s),
                (event.timestamp, event.position, event.position, event.stream_id),
            )
        elif event.type == "ElectionTokensIssued":
            await cur.execute(
                sql.SQL(
                    "UPDATE {}.elections SET tokens_issued = tokens_issued + %s, "
                    "position = %s WHERE election_id = %s"
                ).format(s),
                (len(event.data["voter_keys"]), event.position, event.stream_id),
            )
