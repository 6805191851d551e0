"""What the service layer needs from persistence, as ports that infra/ implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEventProtocol

from domain.ballot import Ballot
from domain.election import Election


class VersionConflict(Exception):
    """Another writer already recorded this aggregate version."""


class EventWriter(Protocol):
    """Appends events atomically and reads aggregates back."""

    async def append(self, aggregate: Aggregate) -> int:
        """Record an aggregate's pending events (see ``append_events``)."""
        ...

    async def append_events(self, events: Sequence[DomainEventProtocol[UUID]]) -> int:
        """Record events in one transaction; return the last one's position.

        Raises VersionConflict, and records nothing, when any of the versions is taken.
        """
        ...

    async def load_election(self, election_id: UUID) -> Election | None: ...

    async def load_ballot(self, ballot_id: UUID) -> Ballot | None: ...

    async def position_of(self, aggregate_id: UUID, version: int) -> int:
        """The log position of an aggregate's recorded version."""
        ...
