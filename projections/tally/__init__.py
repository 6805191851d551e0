"""The tally read model: cast vote records and each election's sufficient statistics.

Entries are counted into in-memory state first (``TallyChanges``): every election's change
goes into one Tally (a revision subtracts the voter's previous ballot and adds the new one),
and ballots that follow their election's Closed entry are kept apart as late. Live, a batch's
changes are then written as counter increments and upserts; in a rebuild, the whole log is
counted in memory and written once with COPY.

Each election also keeps what stepped live results need (``domain.publication``): how many
ballot entries were counted, and its statistics as last published, with that position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, AsyncCursor, sql

from domain.publication import Steps
from domain.rules import ElectionRules
from infra.store.log import LogEvent
from projections.base import BulkBuilder, Projection
from projections.tally.bulk import TallyBulk
from projections.tally.changes import BALLOT_TYPES, CountedBallot, CountedElection, TallyChanges

UPSERT_BALLOTS = sql.SQL(
    "INSERT INTO {}.ballots "
    "(ballot_id, election_id, vote, version, position, recorded_at) "
    "SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::jsonb[], "
    "%b::integer[], %b::bigint[], %b::timestamptz[]) "
    "ON CONFLICT (ballot_id) DO UPDATE SET vote = excluded.vote, "
    "version = excluded.version, position = excluded.position, "
    "recorded_at = excluded.recorded_at"
)
UPDATE_STEPS = sql.SQL(
    "UPDATE {0}.elections e SET entries = a.entries, "
    "published_position = coalesce(a.position, e.published_position), "
    "published_counters = coalesce(a.counters, e.published_counters) "
    "FROM unnest(%s::uuid[], %s::bigint[], %s::bigint[], %s::jsonb[]) "
    "AS a(election_id, entries, position, counters) "
    "WHERE e.election_id = a.election_id"
)
ADD_COUNTERS = sql.SQL(
    "INSERT INTO {0}.counters AS c (election_id, key, value) "
    "SELECT * FROM unnest(%b::uuid[], %b::text[], %b::bigint[]) "
    "ON CONFLICT (election_id, key) DO UPDATE "
    "SET value = c.value + excluded.value"
)


def _one_statement(parts: list[sql.Composed]) -> sql.Composed:
    """Statements on different tables as one: all but the last as WITH queries."""
    if len(parts) == 1:
        return parts[0]
    queries = [
        sql.SQL("{} AS ({})").format(sql.Identifier(f"w{n}"), part)
        for n, part in enumerate(parts[:-1])
    ]
    return sql.SQL("WITH {} {}").format(sql.SQL(", ").join(queries), parts[-1])


class TallyProjection(Projection):
    name = "tally"
    tables = ("elections", "ballots", "counters", "late_ballots")

    def __init__(self) -> None:
        # Rules are immutable once created, so they are safe to keep across transactions.
        self._rules: dict[UUID, ElectionRules] = {}
        # Each election's row (closed_at, entries, published_position) and statistics as
        # this version holds them after the last page applied, kept between pages while the
        # runner says nobody else writes them (it calls forget otherwise): a page then reads
        # nothing back of the elections it counts.
        self._elections: dict[UUID, tuple[int | None, int, int]] = {}
        self._counters: dict[UUID, dict[str, int]] = {}
        self._schema = ""

    def forget(self) -> None:
        self._rules.clear()
        self._elections.clear()
        self._counters.clear()

    def bulk(self) -> BulkBuilder:
        return TallyBulk()

    async def apply(
        self, conn: AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        s = sql.Identifier(schema)
        if schema != self._schema:
            self.forget()
            self._schema = schema
        changes = TallyChanges()
        await self._load_elections(conn, s, events, changes)
        await self._load_ballots(conn, s, events, changes)
        changes.add(events)
        for election_id, election in changes.elections.items():
            self._rules[election_id] = election.rules
        async with conn.cursor() as cur:
            if changes.created:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {}.elections (election_id, rules, published_position) "
                        "VALUES (%s, %s::jsonb, %s)"
                    ).format(s),
                    [
                        (election_id, rules, changes.elections[election_id].steps.created_at)
                        for election_id, rules in changes.created
                    ],
                )
            if changes.opened:
                # Dated at the Opened entry until a publication (domain.publication).
                await cur.executemany(
                    sql.SQL(
                        "UPDATE {}.elections SET published_position = %s WHERE election_id = %s"
                    ).format(s),
                    [
                        (changes.elections[election_id].steps.position, election_id)
                        for election_id in changes.opened
                    ],
                )
            if changes.closed:
                await cur.executemany(
                    sql.SQL("UPDATE {}.elections SET closed_at = %s WHERE election_id = %s").format(
                        s
                    ),
                    [(position, election_id) for election_id, position in changes.closed],
                )
            # The page's ballots, step counts and statistics: one statement (each part a
            # data-modifying WITH query: they touch three different tables).
            parts: list[sql.Composed] = []
            params: list[Any] = []
            if changes.changed:
                parts.append(UPSERT_BALLOTS.format(s))
                params += [list(column) for column in zip(*changes.ballot_rows(), strict=True)]
            if changes.tallies:
                # Before the counters move: the statistics a publication in this batch
                # builds on.
                stored = await self._stored_counters(
                    cur, s, [i for i, e in changes.elections.items() if e.published is not None]
                )
                self._counters.update(stored)
                parts.append(UPDATE_STEPS.format(s))
                params += [list(column) for column in zip(*changes.step_rows(stored), strict=True)]
            counters = changes.counter_rows()
            if counters:
                parts.append(ADD_COUNTERS.format(s))
                params += [list(column) for column in zip(*counters, strict=True)]
            if parts:
                await cur.execute(_one_statement(parts), params)
            if changes.late:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {}.late_ballots "
                        "(position, election_id, ballot_id, version, vote, recorded_at) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb, %s)"
                    ).format(s),
                    changes.late,
                )
        self._remember(changes)

    def _remember(self, changes: TallyChanges) -> None:
        """Keep what this page leaves in the rows (it is undone by forget if the page's
        transaction does not commit)."""
        for election_id, election in changes.elections.items():
            steps = election.steps
            self._elections[election_id] = (election.closed_at, steps.entries, steps.position)
        for election_id, tally in changes.tallies.items():
            known = self._counters.get(election_id)
            if known is not None:
                for key, value in tally.counters().items():
                    known[key] = known.get(key, 0) + value

    async def _load_elections(
        self,
        conn: AsyncConnection[Any],
        s: sql.Identifier,
        events: Sequence[LogEvent],
        changes: TallyChanges,
    ) -> None:
        wanted = {
            changes.uuid(e.data["election_id"]) if e.type in BALLOT_TYPES else e.stream_id
            for e in events
            if e.type in BALLOT_TYPES or e.type in ("ElectionOpened", "ElectionClosed")
        }
        for election_id in list(wanted):
            known = self._elections.get(election_id)
            rules = self._rules.get(election_id)
            if known is not None and rules is not None:
                closed_at, entries, published = known
                steps = Steps(rules.live_results_step, entries=entries, published_at=published)
                changes.elections[election_id] = CountedElection(rules, closed_at, steps)
                wanted.discard(election_id)
        if not wanted:
            return
        cursor = await conn.execute(
            sql.SQL(
                "SELECT election_id, rules, closed_at, entries, published_position "
                "FROM {}.elections WHERE election_id = ANY(%s)"
            ).format(s),
            (list(wanted),),
        )
        for election_id, rules_json, closed_at, entries, published in await cursor.fetchall():
            rules = self._rules.get(election_id) or ElectionRules.from_json(rules_json)
            steps = Steps(rules.live_results_step, entries=entries, published_at=published)
            changes.elections[election_id] = CountedElection(rules, closed_at, steps)

    async def _stored_counters(
        self, cur: AsyncCursor[Any], s: sql.Identifier, elections: list[UUID]
    ) -> dict[UUID, dict[str, int]]:
        stored = {i: self._counters[i] for i in elections if i in self._counters}
        elections = [i for i in elections if i not in stored]
        if not elections:
            return stored
        await cur.execute(
            sql.SQL(
                "SELECT election_id, key, value FROM {}.counters WHERE election_id = ANY(%s)"
            ).format(s),
            (elections,),
        )
        for election_id in elections:
            stored[election_id] = {}
        for election_id, key, value in await cur.fetchall():
            stored[election_id][key] = value
        return stored

    @staticmethod
    async def _load_ballots(
        conn: AsyncConnection[Any],
        s: sql.Identifier,
        events: Sequence[LogEvent],
        changes: TallyChanges,
    ) -> None:
        # A first cast (version 1) has no earlier ballot to subtract: skip the lookup.
        wanted = [e.stream_id for e in events if e.type in BALLOT_TYPES and e.version > 1]
        if not wanted:
            return
        cursor = await conn.execute(
            sql.SQL(
                "SELECT ballot_id, election_id, vote, version, position, recorded_at "
                "FROM {}.ballots WHERE ballot_id = ANY(%s)"
            ).format(s),
            (wanted,),
        )
        for row in await cursor.fetchall():
            changes.ballots[row[0]] = CountedBallot(row[1], row[2], row[3], row[4], str(row[5]))
