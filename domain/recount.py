"""A recount: every election's tally, replayed from the log in position order.

This is the law of counting in code: a ballot counts iff it precedes its election's
Closed event in the log; a revision replaces the voter's earlier ballot; a withdrawal
removes it. Ballot events after the close are kept apart as late. The audit replay, the
tests' ground truth and (until read models serve them) results all come from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from domain.ballot import Ballot
from domain.election import Election, ElectionStatus
from domain.rules import ElectionRules
from domain.tabulation.statistics import Tally
from domain.votes import Vote, parse_vote


@dataclass
class ElectionCount:
    """One election's state in the recount."""

    election_id: UUID
    rules: ElectionRules
    status: ElectionStatus = ElectionStatus.DRAFT
    closed_at: int | None = None
    late: int = 0
    ballots: dict[UUID, Vote] = field(default_factory=dict)
    tally: Tally = field(init=False)

    def __post_init__(self) -> None:
        self.tally = Tally(self.rules)

    def count(self, ballot_id: UUID, vote: Vote | None) -> None:
        earlier = self.ballots.pop(ballot_id, None)
        if earlier is not None:
            self.tally.add(earlier, -1)
        if vote is not None:
            self.ballots[ballot_id] = vote
            self.tally.add(vote)

    def results(self, position: int) -> dict[str, Any]:
        """The results document (ARCHITECTURE.md's shape) as of ``position``."""
        return {
            "election_id": str(self.election_id),
            "status": self.status.value,
            "position": position,
            **self.tally.result().to_json(),
            "late_ballots": self.late,
        }


class Recount:
    """Applies log entries in position order; ``position`` is the last one applied."""

    def __init__(self) -> None:
        self.elections: dict[UUID, ElectionCount] = {}
        self.position = 0

    def apply_all(self, entries: Iterable[tuple[int, DomainEventProtocol[UUID]]]) -> None:
        for position, event in entries:
            self.apply(position, event)

    def apply(self, position: int, event: DomainEventProtocol[UUID]) -> None:
        if position <= self.position:
            raise ValueError(f"log entries out of order: {position} after {self.position}")
        self.position = position
        if isinstance(event, Election.Created):
            rules = ElectionRules.from_json(event.rules)
            self.elections[event.originator_id] = ElectionCount(event.originator_id, rules)
        elif isinstance(event, Election.Event):
            self._lifecycle(position, event)
        elif isinstance(event, Ballot.Event):
            self._ballot(event)

    def _lifecycle(self, position: int, event: Election.Event) -> None:
        count = self.elections[event.originator_id]
        name = type(event).__name__
        if name == "Opened":
            count.status = ElectionStatus.OPEN
        elif name == "Closed":
            count.status = ElectionStatus.CLOSED
            count.closed_at = position

    def _ballot(self, event: Ballot.Event) -> None:
        count = self.elections[UUID(event.election_id)]  # type: ignore[attr-defined]
        if count.closed_at is not None:
            count.late += 1
            return
        content = getattr(event, "vote", None)
        vote = None if content is None else parse_vote(count.rules, content)
        count.count(event.originator_id, vote)
