"""What the service layer needs from persistence, as ports that infra/ implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol
from uuid import UUID

from eventsourcing.domain import Aggregate, DomainEventProtocol

from domain.ballot import Ballot
from domain.election import Election


class VersionConflict(Exception):
    """Another writer already recorded this aggregate version."""


class Overloaded(Exception):
    """The writer cannot take more appends now (its queue is full, or it is stopping); the
    caller should retry later. Nothing was recorded."""


class HeldBack(Exception):
    """Not recorded: an earlier ballot of the same voter in the batch was refused for a
    passing reason, and this one waits to be sent again after it (else the older ballot,
    sent again, would revise this newer one)."""


class StoreUnavailable(Exception):
    """The event store cannot be reached: the append was not recorded (the writer raises
    this only when it is certain of that, but for OutcomeUnknown)."""


class OutcomeUnknown(StoreUnavailable):
    """The append's commit was sent and the store has not said how it went: it may have
    been recorded. Raised when its caller cannot wait any longer (the store hangs past the
    writer's bound, or the process is shutting down); the writer still learns the outcome
    when the store answers. A retry with the same Idempotency-Key finds out: the receipt if
    it was recorded, else it is recorded then, once."""


class Recorded(NamedTuple):
    """Where an event landed in the log, and its receipt (the audit chain's entry hash,
    hex) where the writer computes one."""

    position: int
    digest: str | None = None


class RecordedBallot(NamedTuple):
    """A ballot as the store has it, with where each of its versions landed in the log
    (version -> Recorded): what a retry's receipt needs, read once."""

    ballot: Ballot
    recorded: Mapping[int, Recorded]


class EventWriter(Protocol):
    """Appends events atomically and reads aggregates back.

    Besides VersionConflict and ElectionNotOpen (see ``append_events``), an append may
    raise Overloaded or StoreUnavailable: the API answers those with 503.
    """

    async def append(self, aggregate: Aggregate, *, while_open: UUID | None = None) -> Recorded:
        """Record an aggregate's pending events (see ``append_events``)."""
        ...

    async def append_events(
        self, events: Sequence[DomainEventProtocol[UUID]], *, while_open: UUID | None = None
    ) -> Recorded:
        """Record events in one transaction; return where the last one landed.

        Raises VersionConflict, and records nothing, when any of the versions is taken.
        With ``while_open`` (an election id), records them only if that election's Closed
        event is not before them in the log, and raises ElectionNotOpen otherwise: the
        check is made where the log's order is decided, so no process's stale view of an
        election can get a ballot accepted that the count will then leave out.
        """
        ...

    async def append_each(
        self,
        appends: Sequence[Sequence[DomainEventProtocol[UUID]]],
        *,
        while_open: UUID | None = None,
    ) -> list[Recorded | Exception]:
        """Record many independent appends, each atomic on its own exactly as with
        ``append_events``, sharing transactions where the writer can; in each one's place,
        where it landed or the error it met (VersionConflict, ElectionNotOpen, Overloaded,
        StoreUnavailable). One append's error does not touch the others."""
        ...

    async def load_election(self, election_id: UUID) -> Election | None: ...

    async def load_ballot(self, ballot_id: UUID) -> Ballot | None: ...

    async def load_ballots(self, ballot_ids: Sequence[UUID]) -> dict[UUID, RecordedBallot]:
        """Many ballots at once, each with where every version of it landed (a batch's
        retries): one read where the writer can, bounded as ``load_ballot`` is; an id that
        names no ballot in the store is left out."""
        ...

    async def recorded(self, aggregate_id: UUID, version: int) -> Recorded:
        """Where an aggregate's recorded version is in the log (for a repeated request)."""
        ...
