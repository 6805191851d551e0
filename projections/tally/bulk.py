"""The tally's rebuild path: the whole log counted in memory, each table written once.

Only each voter's last ballot is kept while reading; the statistics are worked out at the
end from identical ballots counted together. A stepped election's published statistics
are worked back from its final ones with the trail of entries since its last publication.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any
from uuid import UUID

import orjson
from psycopg import AsyncConnection, sql

from domain.publication import Steps, Trail
from domain.rules import ElectionRules
from domain.tabulation import Tally
from domain.votes import Vote, stored_vote
from infra.store.log import LogEvent
from projections.tally.changes import BALLOT_TYPES, json_text


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
        # ballot id -> (election, vote as stored JSON text, version, position, recorded at).
        # The text, not the decoded vote, and one text for identical votes: a decoded vote
        # of 100 scores took 13 KB, and a rebuild held every voter's (review helper-59).
        self.ballots: dict[UUID, tuple[UUID, str | None, int, int, str]] = {}
        self.texts: dict[str, str] = {}
        self.late: list[tuple[int, UUID, UUID, int, str | None, str]] = []
        self.ids: dict[str, UUID] = {}
        self.steps: dict[UUID, Steps] = {}
        # Stepped elections: the entries since their last publication, with the vote each
        # replaced (its stored text).
        self.trails: dict[UUID, Trail[UUID, str]] = {}
        self.set_aside: list[tuple[LogEvent, str]] = []

    def add(self, events: Sequence[LogEvent]) -> None:
        ballots, closed, ids, steps, trails, texts = (
            self.ballots,
            self.closed,
            self.ids,
            self.steps,
            self.trails,
            self.texts,
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
                        late_vote = None if vote is None else json_text(vote)
                        self.late.append(
                            (position, election_id, stream_id, version, late_vote, timestamp)
                        )
                        continue
                    earlier = ballots.get(stream_id)
                    if vote is not None:
                        vote = json_text(vote)
                        vote = texts.setdefault(vote, vote)
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
                    self.created.append((stream_id, json_text(data["rules"])))
                elif kind == "ElectionOpened":
                    steps[stream_id].open(position)  # KeyError: an election the log lacks
                elif kind == "ElectionClosed":
                    if stream_id not in steps:
                        raise KeyError(f"no election {stream_id} before its close")
                    closed[stream_id] = position
            except (KeyError, ValueError, TypeError, AttributeError) as error:
                self.set_aside.append((event, f"{type(error).__name__}: {error}"))

    def tallies(self) -> dict[UUID, Tally]:
        """Every election's statistics from its voters' last ballots."""
        patterns: dict[UUID, Counter[str]] = {election_id: Counter() for election_id in self.rules}
        for election_id, vote, *_ in self.ballots.values():
            if vote is not None:
                patterns[election_id][vote] += 1
        tallies = {}
        for election_id, counted in patterns.items():
            rules = self.rules[election_id]
            tally = tallies[election_id] = Tally(rules)
            for text, weight in counted.items():
                tally.add(stored_vote(rules, orjson.loads(text)), weight)
        return tallies

    def published(self, election_id: UUID, tally: Tally) -> str | None:
        """A stepped election's statistics as last published (JSON), from its final ones."""
        rules = self.rules[election_id]
        if rules.live_results_step == 1 or not self.steps[election_id].published_at:
            return None
        copy = Tally.from_counters(rules, tally.counters())
        undone = self.trails[election_id].undo(
            copy, lambda ballot: self.ballots[ballot][1], partial(_decoded, rules)
        )
        return json_text(undone.counters())

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


def _decoded(rules: ElectionRules, text: str) -> Vote:
    return stored_vote(rules, orjson.loads(text))


def _chunks(
    ballots: Iterable[tuple[UUID, tuple[UUID, str | None, int, int, str]]],
    size: int = 20_000,
) -> Iterator[bytes]:
    """Ballot rows in COPY's text format, many per write: a million write_row calls cost
    more than the rest of a rebuild. (Stored JSON holds no raw tab or newline; its
    backslashes are doubled, as COPY's text format requires.)"""
    lines: list[str] = []
    for ballot_id, (election_id, vote, version, position, recorded_at) in ballots:
        text = "\\N" if vote is None else vote.replace("\\", "\\\\")
        lines.append(f"{ballot_id}\t{election_id}\t{text}\t{version}\t{position}\t{recorded_at}\n")
        if len(lines) == size:
            yield "".join(lines).encode()
            lines = []
    if lines:
        yield "".join(lines).encode()
