"""A recount: every election's tally, replayed from the log in position order.

This is the law of counting in code: a ballot counts iff it precedes its election's
Closed event in the log; a revision replaces the voter's earlier ballot; a withdrawal
removes it. Ballot events after the close are kept apart as late. An entry that cannot be
applied (unreadable, or naming an election the log does not hold) is set aside and
reported, and the counting goes on. While an election is open, its results are published
in steps (``domain.publication``). The audit replay, time travel and the tests' ground
truth all come from here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from domain.election import ElectionStatus
from domain.errors import CardinalError
from domain.publication import Steps, Trail
from domain.rules import ElectionRules
from domain.tabulation.statistics import Tally
from domain.votes import Vote, parse_vote, stored_vote


@dataclass(frozen=True, slots=True)
class SetAside:
    """An entry the recount could not apply, and why."""

    position: int
    election_id: UUID | None
    reason: str


@dataclass
class ElectionCount:
    """One election's state in the recount: every voter's current ballot.

    The tally is worked out when asked for, from identical votes counted together (an
    election has many ballots but few distinct ones), so a replay pays one dictionary
    update per ballot entry, however often voters revise.
    """

    election_id: UUID
    rules: ElectionRules
    status: ElectionStatus = ElectionStatus.DRAFT
    closed_at: int | None = None
    late: int = 0
    ballots: dict[Hashable, Vote] = field(default_factory=dict)
    steps: Steps = field(default_factory=lambda: Steps(1))
    trail: Trail[Hashable, Vote] = field(default_factory=Trail)
    _tally: Tally | None = field(default=None, repr=False)

    @classmethod
    def created(cls, election_id: UUID, rules: ElectionRules, position: int) -> ElectionCount:
        return cls(election_id, rules, steps=Steps(rules.live_results_step, created_at=position))

    def count(self, position: int, ballot_id: Hashable, vote: Vote | None) -> None:
        """Count one ballot entry: the voter's vote is now ``vote`` (None: withdrawn)."""
        replaced = self.ballots.pop(ballot_id, None) if vote is None else None
        if vote is not None:
            replaced = self.ballots.get(ballot_id)
            self.ballots[ballot_id] = vote
        self.trail.follow(self.steps.count(position), ballot_id, replaced)
        self._tally = None

    @property
    def tally(self) -> Tally:
        if self._tally is None:
            tally = Tally(self.rules)
            for vote, weight in Counter(self.ballots.values()).items():
                tally.add(vote, weight)
            self._tally = tally
        return self._tally

    def results(self, position: int) -> dict[str, Any]:
        """The results document (ARCHITECTURE.md's shape) as of ``position``."""
        return {
            "election_id": str(self.election_id),
            "status": self.status.value,
            "position": position,
            **self.tally.result().to_json(),
            "late_ballots": self.late,
        }

    def published_tally(self) -> Tally:
        """The tally as last published (see ``domain.publication``)."""
        copy = Tally.from_counters(self.rules, self.tally.counters())
        return self.trail.undo(copy, self.ballots.get, _same)


class Recount:
    """Applies log entries in position order; ``position`` is the last one applied.

    Entries come either as domain events (``apply``) or as their plain JSON form as the
    log stores it (``record``, what an auditor's export holds): both go through the same law.
    With ``validate``, every ballot is checked against its election's rules again (an
    auditor's strict mode); otherwise stored votes are trusted to be normalised.
    """

    def __init__(self, *, validate: bool = True) -> None:
        self.elections: dict[UUID, ElectionCount] = {}
        self.position = 0
        self.validate = validate
        self.set_aside: list[SetAside] = []
        self._ids: dict[str, UUID] = {}

    def apply_all(self, entries: Iterable[tuple[int, DomainEventProtocol[UUID]]]) -> None:
        for position, event in entries:
            self.apply(position, event)

    def apply(self, position: int, event: DomainEventProtocol[UUID]) -> None:
        kind = type(event).__qualname__.replace(".", "")
        self.record(position, event.originator_id, kind, vars(event))

    def record(
        self, position: int, stream_id: Hashable, kind: str, data: Mapping[str, Any]
    ) -> None:
        """Apply one entry: its position, stream, type (e.g. 'BallotCast') and data.

        An election's stream must be its UUID; a ballot's needs only to be unique.
        """
        if position <= self.position:
            raise ValueError(f"log entries out of order: {position} after {self.position}")
        self.position = position
        try:
            if kind.startswith("Ballot"):
                self._ballot(position, stream_id, data)
            elif kind == "ElectionCreated":
                assert isinstance(stream_id, UUID)
                rules = ElectionRules.from_json(data["rules"])
                self.elections[stream_id] = ElectionCount.created(stream_id, rules, position)
            elif kind == "ElectionOpened":
                count = self.elections[cast(UUID, stream_id)]
                count.status = ElectionStatus.OPEN
                count.steps.open(position)
            elif kind == "ElectionClosed":
                count = self.elections[cast(UUID, stream_id)]
                count.status = ElectionStatus.CLOSED
                count.closed_at = position
        except (KeyError, ValueError, TypeError, AttributeError, CardinalError) as error:
            self.put_aside(position, _election_of(stream_id, kind, data), _reason(error))

    def put_aside(self, position: int, election_id: UUID | None, reason: str) -> None:
        """Leave one entry out of the count, and say so."""
        self.set_aside.append(SetAside(position, election_id, reason))

    def _ballot(self, position: int, stream_id: Hashable, data: Mapping[str, Any]) -> None:
        election = data["election_id"]
        election_id = self._ids.get(election)
        if election_id is None:
            election_id = self._ids[election] = UUID(election)
        count = self.elections.get(election_id)
        if count is None:
            raise KeyError(f"the log holds no election {election_id} before this ballot")
        if count.closed_at is not None:
            count.late += 1
            return
        content = data.get("vote")
        if content is None:
            vote = None
        elif self.validate:
            vote = parse_vote(count.rules, content)
        else:
            vote = stored_vote(count.rules, content)
        count.count(position, stream_id, vote)


def _election_of(stream_id: Hashable, kind: str, data: Mapping[str, Any]) -> UUID | None:
    """The election an entry belongs to, where the entry says so legibly."""
    if kind.startswith("Election") and isinstance(stream_id, UUID):
        return stream_id
    try:
        return UUID(str(data["election_id"]))
    except (KeyError, ValueError, TypeError):
        return None


def _reason(error: BaseException) -> str:
    detail = error.args[0] if isinstance(error, KeyError) and error.args else error
    return f"{type(error).__name__}: {detail}"


def _same(vote: Vote) -> Vote:
    return vote
