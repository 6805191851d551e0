"""The tally's live path: what a run of log entries does to each election's statistics,
worked out in memory before it is written.

Every election's change goes into one Tally (a revision subtracts the voter's previous
ballot and adds the new one); ballots that follow their election's Closed entry are kept
apart as late; each stepped election's statistics are copied at its last publication in
the run (``domain.publication``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson

from domain.publication import Steps
from domain.rules import ElectionRules
from domain.tabulation import Tally
from domain.votes import stored_vote
from infra.store.log import LogEvent

BALLOT_TYPES = frozenset({"BallotCast", "BallotRevised", "BallotWithdrawn"})


@dataclass
class CountedElection:
    rules: ElectionRules
    closed_at: int | None
    steps: Steps
    # Live: this batch's change to the statistics up to its last publication, if any.
    published: dict[str, int] | None = None


@dataclass(slots=True)
class CountedBallot:
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

    elections: dict[UUID, CountedElection] = field(default_factory=dict)
    ballots: dict[UUID, CountedBallot] = field(default_factory=dict)
    created: list[tuple[UUID, str]] = field(default_factory=list)
    opened: list[UUID] = field(default_factory=list)
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
                self.elections[event.stream_id] = CountedElection(rules, None, steps)
                self.created.append((event.stream_id, json_text(event.data["rules"])))
            elif kind == "ElectionOpened":
                self._election(event.stream_id).steps.open(event.position)
                self.opened.append(event.stream_id)
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

    def _election(self, election_id: UUID) -> CountedElection:
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
                    None if vote is None else json_text(vote),
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
        self.ballots[event.stream_id] = CountedBallot(
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
            vote = None if b.vote is None else json_text(b.vote)
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
            rows.append((election_id, steps.entries, steps.position, json_text(counters)))
        return rows


def json_text(value: Any) -> str:
    """Compact JSON text, as the tables store it."""
    return orjson.dumps(value).decode()
