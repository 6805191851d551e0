"""One hierarchy for everything the domain can refuse.

    CardinalError
    ├── InvalidRequest            the request itself is wrong (422)
    │   ├── InvalidElection       rules that cannot make an election
    │   ├── InvalidBallot         a ballot that does not fit the election's method
    │   └── IdempotencyKeyReused  the same Idempotency-Key with a different ballot
    ├── NotFound                  (404)
    │   ├── ElectionNotFound
    │   └── BallotNotFound
    ├── Conflict                  the request is valid but the state forbids it (409)
    │   ├── ElectionNotOpen       ballots before opening or after closing
    │   ├── InvalidTransition     e.g. opening a closed election
    │   ├── AlreadyVoted          a second ballot where revoting is off
    │   ├── AlreadyWithdrawn      withdrawing a ballot already withdrawn
    │   └── ConcurrentRevision    another revision of the same ballot won the race
    └── NotEligible               the voter may not vote in this election (403)

Every error carries a ``detail`` a person can act on, and where it concerns one field of
the request, that field's name (``field``), e.g. ``scores.a`` or ``ranking``.
"""

from __future__ import annotations


class CardinalError(Exception):
    """Base of every refusal the domain can make."""

    title = "Request refused"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidRequest(CardinalError):
    title = "Invalid request"


class InvalidElection(InvalidRequest):
    title = "Invalid election"


class InvalidBallot(InvalidRequest):
    title = "Invalid ballot"


class NotFound(CardinalError):
    title = "Not found"


class ElectionNotFound(NotFound):
    title = "Election not found"

    def __init__(self, election_id: object) -> None:
        super().__init__(f"there is no election with id {election_id}")
        self.election_id = election_id


class BallotNotFound(NotFound):
    title = "Ballot not found"


class Conflict(CardinalError):
    title = "Conflict"


class ElectionNotOpen(Conflict):
    title = "Election not open"


class InvalidTransition(Conflict):
    title = "Invalid lifecycle transition"


class AlreadyVoted(Conflict):
    title = "Already voted"


class AlreadyWithdrawn(Conflict):
    """The voter's ballot is in the log but withdrawn: there is nothing left to withdraw
    (a retry with the withdrawal's own Idempotency-Key is answered with its receipt)."""

    title = "Already withdrawn"


class ConcurrentRevision(Conflict):
    title = "Concurrent revision"


class IdempotencyKeyReused(InvalidRequest):
    title = "Idempotency-Key reused"


class NotEligible(CardinalError):
    title = "Not eligible"
