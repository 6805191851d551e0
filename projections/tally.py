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

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from uuid import UUID

import orjson
from psycopg import AsyncConnection, AsyncCursor, sql

from domain.publication import Steps, Trail
from domain.rules import ElectionRules
from domain.tabulation import Tally
from domain.votes import stored_vote
from projections.base import BulkBuilder, Projection
from projections.log import LogEvent

BALLOT_TYPES = frozenset({"BallotCast", "BallotRevised", "BallotWithdrawn"})


@dataclass
class _Election:
    rules: ElectionRules
    closed_at: int | None
    steps: Steps
    # Live: this batch's change to the statistics up to its last publication, if any.
    published: dict[str, int] | None = None


@dataclass(slots=True)
class _Ballot:
    election_id: UUID
    vote: dict[str, Any] | None
    version: int
    position: int
    recorded_at: str


@dataclass
class TallyChanges:
    """What a run of entries does to the tally, worked out in memory.

    ``elections`` and ``ballots`` must hold what the entries refer to (live: loaded for the
    batch; rebuild: everything so far). ``tallies`` are deltas live, totals in a rebuild.
    """

    elections: dict[UUID, _Election] = field(default_factory=dict)
    ballots: dict[UUID, _Ballot] = field(default_factory=dict)
    created: list[tuple[UUID, str]] = field(default_factory=list)
    closed: list[tuple[UUID, int]] = field(default_factory=list)
    changed: set[UUID] = field(default_factory=set)
    late: list[tuple[int, UUID, UUID, int, str | None, str]] = field(default_factory=list)
    tallies: dict[UUID, Tally] = field(default_factory=dict)
    ids: dict[str, UUID] = field(default_factory=dict)
    boundaries: dict[UUID, int] = field(default_factory=dict)

    def add(self, events: Sequence[LogEvent]) -> None:
        self._find_boundaries(events)
        for event in events:
            kind = event.type
            if kind in BALLOT_TYPES:
                self._ballot(event)
            elif kind == "ElectionCreated":
                rules = ElectionRules.from_json(event.data["rules"])
                steps = Steps(rules.live_results_step, created_at=event.position)
                self.elections[event.stream_id] = _Election(rules, None, steps)
                self.created.append((event.stream_id, _json(event.data["rules"])))
            elif kind == "ElectionClosed":
                self._election(event.stream_id).closed_at = event.position
                self.closed.append((event.stream_id, event.position))

    def _find_boundaries(self, events: Sequence[LogEvent]) -> None:
        """Where each stepped election's last publication in this run of entries falls
        (its entry number): the statistics are copied there, once, not at every step."""
        counted: Counter[UUID] = Counter()
        closed: set[UUID] = set()
        steps = {i: (e.steps.entries, e.steps.step) for i, e in self.elections.items()}
        for event in events:
            if event.type in BALLOT_TYPES:
                election_id = self.uuid(event.data["election_id"])
                if election_id not in closed:
                    counted[election_id] += 1
            elif event.type == "ElectionClosed":
                closed.add(event.stream_id)
            elif event.type == "ElectionCreated":
                step = event.data["rules"].get("live_results_step", 1)
                steps[event.stream_id] = (0, step) if isinstance(step, int) and step > 0 else (0, 1)
        self.boundaries = {}
        for election_id, entries in counted.items():
            election = self.elections.get(election_id)
            if election_id not in steps or (
                election is not None and election.closed_at is not None
            ):
                continue
            before, step = steps[election_id]
            last = (before + entries) // step * step
            if step > 1 and last > before:
                self.boundaries[election_id] = last

    def _election(self, election_id: UUID) -> _Election:
        election = self.elections.get(election_id)
        if election is None:
            raise KeyError(f"no election {election_id} in the tally (its creation is not counted)")
        return election

    def _ballot(self, event: LogEvent) -> None:
        election_id = self.uuid(event.data["election_id"])
        election = self._election(election_id)
        vote = event.data.get("vote")
        if election.closed_at is not None:
            self.late.append(
                (
                    event.position,
                    election_id,
                    event.stream_id,
                    event.version,
                    None if vote is None else _json(vote),
                    event.timestamp,
                )
            )
            return
        tally = self.tallies.get(election_id)
        if tally is None:
            tally = self.tallies[election_id] = Tally(election.rules)
        earlier = self.ballots.get(event.stream_id)
        if earlier is not None and earlier.vote is not None:
            tally.add(stored_vote(election.rules, earlier.vote), -1)
        if vote is not None:
            tally.add(stored_vote(election.rules, vote))
        self.ballots[event.stream_id] = _Ballot(
            election_id, vote, event.version, event.position, event.timestamp
        )
        self.changed.add(event.stream_id)
        election.steps.count(event.position)
        if election.steps.entries == self.boundaries.get(election_id):
            election.published = tally.counters()

    def uuid(self, text: str) -> UUID:
        """Election ids repeat on every ballot entry; parse each once."""
        found = self.ids.get(text)
        if found is None:
            found = self.ids[text] = UUID(text)
        return found

    def ballot_rows(self) -> list[tuple[UUID, UUID, str | None, int, int, str]]:
        rows = []
        for ballot_id in self.changed:
            b = self.ballots[ballot_id]
            vote = None if b.vote is None else _json(b.vote)
            rows.append((ballot_id, b.election_id, vote, b.version, b.position, b.recorded_at))
        return rows

    def counter_rows(self) -> list[tuple[UUID, str, int]]:
        return [
            (election_id, key, value)
            for election_id, tally in self.tallies.items()
            for key, value in tally.counters().items()
        ]

    def step_rows(
        self, stored: dict[UUID, dict[str, int]]
    ) -> list[tuple[UUID, int, int, str | None]]:
        """(election, entries, published position, published statistics) of every
        election that counted entries; ``stored``: the statistics before this batch of
        the elections that published in it."""
        rows: list[tuple[UUID, int, int, str | None]] = []
        for election_id in self.tallies:
            election = self.elections[election_id]
            steps = election.steps
            if election.published is None:
                rows.append((election_id, steps.entries, steps.position, None))
                continue
            published = Counter(stored.get(election_id, {}))
            published.update(election.published)
            counters = {key: value for key, value in published.items() if value}
            rows.append((election_id, steps.entries, steps.position, _json(counters)))
        return rows


class TallyProjection(Projection):
    name = "tally"
    tables = ("elections", "ballots", "counters", "late_ballots")

    def __init__(self) -> None:
        # Rules are immutable once created, so they are safe to keep across transactions.
        self._rules: dict[UUID, ElectionRules] = {}

    def forget(self) -> None:
        self._rules.clear()

    def bulk(self) -> BulkBuilder:
        return TallyBulk()

    async def apply(
        self, conn: AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        s = sql.Identifier(schema)
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
            if changes.closed:
                await cur.executemany(
                    sql.SQL("UPDATE {}.elections SET closed_at = %s WHERE election_id = %s").format(
                        s
                    ),
                    [(position, election_id) for election_id, position in changes.closed],
                )
            if changes.changed:
                rows = changes.ballot_rows()
                await cur.execute(
                    sql.SQL(
                        "INSERT INTO {}.ballots "
                        "(ballot_id, election_id, vote, version, position, recorded_at) "
                        "SELECT * FROM unnest(%b::uuid[], %b::uuid[], %b::jsonb[], "
                        "%b::integer[], %b::bigint[], %b::timestamptz[]) "
                        "ON CONFLICT (ballot_id) DO UPDATE SET vote = excluded.vote, "
                        "version = excluded.version, position = excluded.position, "
                        "recorded_at = excluded.recorded_at"
                    ).format(s),
                    tuple(list(column) for column in zip(*rows, strict=True)),
                )
            if changes.tallies:
                # Before the counters move: the statistics a publication in this batch
                # builds on.
                stored = await self._stored_counters(
                    cur, s, [i for i, e in changes.elections.items() if e.published is not None]
                )
                await cur.execute(
                    sql.SQL(
                        "UPDATE {0}.elections e SET entries = a.entries, "
                        "published_position = coalesce(a.position, e.published_position), "
                        "published_counters = coalesce(a.counters, e.published_counters) "
                        "FROM unnest(%s::uuid[], %s::bigint[], %s::bigint[], %s::jsonb[]) "
                        "AS a(election_id, entries, position, counters) "
                        "WHERE e.election_id = a.election_id"
                    ).format(s),
                    tuple(list(column) for column in zip(*changes.step_rows(stored), strict=True)),
                )
            counters = changes.counter_rows()
            if counters:
                await cur.execute(
                    sql.SQL(
                        "INSERT INTO {0}.counters AS c (election_id, key, value) "
                        "SELECT * FROM unnest(%b::uuid[], %b::text[], %b::bigint[]) "
                        "ON CONFLICT (election_id, key) DO UPDATE "
                        "SET value = c.value + excluded.value"
                    ).format(s),
                    tuple(list(column) for column in zip(*counters, strict=True)),
                )
            if changes.late:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {}.late_ballots "
                        "(position, election_id, ballot_id, version, vote, recorded_at) "
                        "VALUES (%s, %s, %s, %s, %s::jsonb, %s)"
                    ).format(s),
                    changes.late,
                )

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
            if e.type in BALLOT_TYPES or e.type == "ElectionClosed"
        }
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
            changes.elections[election_id] = _Election(rules, closed_at, steps)

    @staticmethod
    async def _stored_counters(
        cur: AsyncCursor[Any], s: sql.Identifier, elections: list[UUID]
    ) -> dict[UUID, dict[str, int]]:
        if not elections:
            return {}
        await cur.execute(
            sql.SQL(
                "SELECT election_id, key, value FROM {}.counters WHERE election_id = ANY(%s)"
            ).format(s),
            (elections,),
        )
        stored: dict[UUID, dict[str, int]] = {}
        for election_id, key, value in await cur.fetchall():
            stored.setdefault(election_id, {})[key] = value
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
            changes.ballots[row[0]] = _Ballot(row[1], row[2], row[3], row[4], str(row[5]))


class TallyBulk:
    """Counts the whole log in memory and writes each table once, with COPY.

    Only each voter's last ballot is kept while reading; the statistics are worked out at
    the end from identical ballots counted together (few distinct ballots, many voters),
    so a revision costs a dictionary update, not a subtraction and an addition.
    """

    def __init__(self) -> None:
        self.rules: dict[UUID, ElectionRules] = {}
        self.created: list[tuple[UUID, str]] = []
        self.closed: dict[UUID, int] = {}
        # ballot id -> (election, vote, version, position, recorded at)
        self.ballots: dict[UUID, tuple[UUID, dict[str, Any] | None, int, int, str]] = {}
        self.late: list[tuple[int, UUID, UUID, int, str | None, str]] = []
        self.ids: dict[str, UUID] = {}
        self.steps: dict[UUID, Steps] = {}
        # Stepped elections: the entries since their last publication, with the vote each
        # replaced (raw, as stored).
        self.trails: dict[UUID, Trail[UUID, dict[str, Any]]] = {}
        self.set_aside: list[tuple[LogEvent, str]] = []

    def add(self, events: Sequence[LogEvent]) -> None:
        ballots, closed, ids, steps, trails = (
            self.ballots,
            self.closed,
            self.ids,
            self.steps,
            self.trails,
        )
        for event in events:
            position, stream_id, version, kind, data, unreadable = event
            if unreadable is not None:
                self.set_aside.append((event, unreadable))
                continue
            try:
                if kind in BALLOT_TYPES:
                    text = data["election_id"]
                    election_id = ids.get(text)
                    if election_id is None:
                        election_id = ids[text] = UUID(text)
                    counting = steps[election_id]  # KeyError: an election the log lacks
                    vote = data.get("vote")
                    timestamp = data["timestamp"]
                    if election_id in closed:
                        late_vote = None if vote is None else _json(vote)
                        self.late.append(
                            (position, election_id, stream_id, version, late_vote, timestamp)
                        )
                        continue
                    earlier = ballots.get(stream_id)
                    ballots[stream_id] = (election_id, vote, version, position, timestamp)
                    published = counting.count(position)
                    if counting.step > 1:
                        replaced = None if earlier is None else earlier[1]
                        trails[election_id].follow(published, stream_id, replaced)
                elif kind == "ElectionCreated":
                    rules = ElectionRules.from_json(data["rules"])
                    self.rules[stream_id] = rules
                    steps[stream_id] = Steps(rules.live_results_step, created_at=position)
                    trails[stream_id] = Trail()
                    self.created.append((stream_id, _json(data["rules"])))
                elif kind == "ElectionClosed":
                    if stream_id not in steps:
                        raise KeyError(f"no election {stream_id} before its close")
                    closed[stream_id] = position
            except (KeyError, ValueError, TypeError, AttributeError) as error:
                self.set_aside.append((event, f"{type(error).__name__}: {error}"))

    def tallies(self) -> dict[UUID, Tally]:
        """Every election's statistics from its voters' last ballots."""
        patterns: dict[UUID, Counter[Any]] = {election_id: Counter() for election_id in self.rules}
        for election_id, vote, *_ in self.ballots.values():
            if vote is not None:
                patterns[election_id][_pattern(vote)] += 1
        tallies = {}
        for election_id, counted in patterns.items():
            rules = self.rules[election_id]
            tally = tallies[election_id] = Tally(rules)
            for pattern, weight in counted.items():
                tally.add(stored_vote(rules, _unpattern(pattern)), weight)
        return tallies

    def published(self, election_id: UUID, tally: Tally) -> str | None:
        """A stepped election's statistics as last published (JSON), from its final ones."""
        rules = self.rules[election_id]
        if rules.live_results_step == 1 or not self.steps[election_id].published_at:
            return None
        copy = Tally.from_counters(rules, tally.counters())
        undone = self.trails[election_id].undo(
            copy, lambda ballot: self.ballots[ballot][1], partial(stored_vote, rules)
        )
        return _json(undone.counters())

    async def write(self, conn: AsyncConnection[Any], schema: str) -> None:
        s = sql.Identifier(schema)
        tallies = self.tallies()
        async with conn.cursor() as cur:
            async with cur.copy(
                sql.SQL(
                    "COPY {}.elections (election_id, rules, closed_at, entries, "
                    "published_position, published_counters) FROM STDIN"
                ).format(s)
            ) as copy:
                for election_id, rules in self.created:
                    steps = self.steps[election_id]
                    await copy.write_row(
                        (
                            election_id,
                            rules,
                            self.closed.get(election_id),
                            steps.entries,
                            steps.position,
                            self.published(election_id, tallies[election_id]),
                        )
                    )
            async with cur.copy(
                sql.SQL(
                    "COPY {}.ballots (ballot_id, election_id, vote, version, position, "
                    "recorded_at) FROM STDIN"
                ).format(s)
            ) as copy:
                for chunk in _chunks(self.ballots.items()):
                    await copy.write(chunk)
            async with cur.copy(
                sql.SQL("COPY {}.counters (election_id, key, value) FROM STDIN").format(s)
            ) as copy:
                for election_id, tally in tallies.items():
                    for key, value in tally.counters().items():
                        await copy.write_row((election_id, key, value))
            async with cur.copy(
                sql.SQL(
                    "COPY {}.late_ballots (position, election_id, ballot_id, version, vote, "
                    "recorded_at) FROM STDIN"
                ).format(s)
            ) as copy:
                for late in self.late:
                    await copy.write_row(late)


def _pattern(vote: dict[str, Any]) -> Any:
    """A hashable stand-in for a stored vote, cheaper to build than the Vote itself."""
    if "ranking" in vote:
        return ("ranking", tuple(vote["ranking"]))
    if "choice" in vote:
        return ("choice", vote["choice"])
    if "approve" in vote:
        return ("approve", tuple(vote["approve"]))
    return ("scores", tuple(vote["scores"].items()))


def _unpattern(pattern: Any) -> dict[str, Any]:
    field, value = pattern
    if field == "scores":
        return {field: dict(value)}
    if field == "choice":
        return {field: value}
    return {field: list(value)}


def _chunks(
    ballots: Iterable[tuple[UUID, tuple[UUID, dict[str, Any] | None, int, int, str]]],
    size: int = 20_000,
) -> Iterator[bytes]:
    """Ballot rows in COPY's text format, many per write: a million write_row calls cost
    more than the rest of a rebuild. (Stored JSON holds no raw tab or newline; its
    backslashes are doubled, as COPY's text format requires.)"""
    lines: list[str] = []
    for ballot_id, (election_id, vote, version, position, recorded_at) in ballots:
        text = "\\N" if vote is None else _json(vote).replace("\\", "\\\\")
        lines.append(f"{ballot_id}\t{election_id}\t{text}\t{version}\t{position}\t{recorded_at}\n")
        if len(lines) == size:
            yield "".join(lines).encode()
            lines = []
    if lines:
        yield "".join(lines).encode()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
