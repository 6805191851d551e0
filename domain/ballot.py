"""The Ballot aggregate: one per voter and election, cast once, then revised or withdrawn.

Its id is ``uuid5(election_id, ballot_key)``, so a voter's second first-cast collides in the
event store on ``(originator_id, originator_version)``: the store itself enforces one ballot
per voter, across every API process. The ballot key is a secret-keyed digest of its own
(see ``domain.voter``), and no ballot event names the voter: the log shows what was voted,
never by whom.

Every ballot event also holds a random ``nonce`` (128 bits), which the caster never sees:
a receipt is the entry hash of the ballot's event, and without the nonce a voter knew
every other input of that hash but the microsecond it was recorded at, so anyone the
voter gave a receipt could find that microsecond and so confirm the vote (the secrecy
review). Events recorded before it (``BallotCast`` up to class version 2, the others
version 1) read with ``nonce`` None.
"""

from __future__ import annotations

import dataclasses
import threading
from hashlib import sha1
from os import register_at_fork, urandom
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import get_topic

from domain.errors import AlreadyWithdrawn, IdempotencyKeyReused


def ballot_id(election_id: UUID, ballot_key: str) -> UUID:
    """The id of a voter's ballot in an election: ``uuid5(election_id, ballot_key)``,
    computed as RFC 9562 defines it without ``uuid5``'s detours (on every ballot)."""
    digest = sha1(election_id.bytes + ballot_key.encode(), usedforsecurity=False).digest()
    return UUID(bytes=digest[:16], version=5)


class _NoncePool:
    """128-bit nonces cut from one read of the OS's CSPRNG per 256 of them.

    ``os.urandom`` lets go of the GIL around its system call: read per ballot, that handed
    the interpreter to the writer's thread once a ballot, and the event loop then waited
    for it back (the bytes are the same CSPRNG's either way). A forked child starts with
    none, so that no two processes ever hand out the same nonce."""

    COUNT = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._at = 0

    def take(self) -> str:
        with self._lock:
            if self._at >= len(self._hex):
                self._hex = urandom(16 * self.COUNT).hex()
                self._at = 0
            start = self._at
            self._at = start + 32
            return self._hex[start : start + 32]

    def forget(self) -> None:
        """In a forked child, where another thread may have held the lock at the fork."""
        self._lock = threading.Lock()
        self._hex = ""
        self._at = 0


_NONCES = _NoncePool()
register_at_fork(after_in_child=_NONCES.forget)


def new_nonce() -> str:
    """A ballot event's nonce: 128 random bits from the OS's CSPRNG, hex (what
    ``secrets.token_hex(16)`` gives; this is on every ballot, so from a pool)."""
    return _NONCES.take()


def _nonce() -> Any:
    """The ``nonce`` field of a ballot event: a fresh one for every event made."""
    return dataclasses.field(default_factory=new_nonce)


class Ballot(Aggregate):
    """A voter's current ballot in one election."""

    class Cast(Aggregate.Created):
        election_id: str
        vote: dict[str, Any]
        request_key: str | None
        nonce: str | None = _nonce()

        # Version 1 also stored the voter's key: the very digest that a token election's
        # TokensIssued listed, which linked each ballot to the token that cast it.
        # Version 2 had no nonce: its receipt gives its content away to whoever is told it.
        class_version = 3

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.pop("voter_key", None)

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> None:
            state["nonce"] = None

    # Every ballot event names its election, so that a reader of the log (a projection, an
    # auditor) can attribute it without looking anything up.
    class Revised(Aggregate.Event):
        election_id: str
        vote: dict[str, Any]
        request_key: str | None
        nonce: str | None = _nonce()

        class_version = 2  # version 1 had no nonce

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["nonce"] = None

    class Withdrawn(Aggregate.Event):
        election_id: str
        request_key: str | None
        nonce: str | None = _nonce()

        class_version = 2  # version 1 had no nonce

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["nonce"] = None

    @classmethod
    def first_cast(
        cls, election_id: UUID, ballot_key: str, vote: dict[str, Any], request_key: str | None
    ) -> Ballot.Cast:
        """The event a voter's first ballot records: what ``Ballot(...)`` would collect,
        made without building the aggregate, which a first cast never needs. This is the
        ballot hot path, and the library's constructor machinery costs more than the rest
        of the cast together."""
        # The library makes event classes dataclasses at run time, beyond mypy's sight.
        return cls.Cast(  # type: ignore[call-arg]
            originator_id=ballot_id(election_id, ballot_key),
            originator_version=cls.INITIAL_VERSION,
            timestamp=cls.Cast.create_timestamp(),
            originator_topic=_BALLOT_TOPIC,
            election_id=str(election_id),
            vote=vote,
            request_key=request_key,
            nonce=new_nonce(),
        )

    @event(Cast)
    def __init__(self, election_id: str, vote: dict[str, Any], request_key: str | None) -> None:
        self.election_id = election_id
        self.vote: dict[str, Any] | None = vote
        # request_key -> (version, vote) of every change, to answer a client's retry with
        # the first response instead of a conflict.
        self.requests: dict[str, tuple[int, dict[str, Any] | None]] = {}
        if request_key is not None:
            self.requests[request_key] = (1, vote)

    def revise(self, vote: dict[str, Any], request_key: str | None) -> None:
        self._revised(election_id=self.election_id, vote=vote, request_key=request_key)

    @event(Revised)
    def _revised(self, election_id: str, vote: dict[str, Any], request_key: str | None) -> None:
        self.vote = vote
        if request_key is not None:
            self.requests[request_key] = (self.version + 1, vote)

    def withdraw(self, request_key: str | None) -> None:
        if self.vote is None:
            raise AlreadyWithdrawn(
                "this voter's ballot is already withdrawn; cast a ballot to vote again"
            )
        self._withdrawn(election_id=self.election_id, request_key=request_key)

    @event(Withdrawn)
    def _withdrawn(self, election_id: str, request_key: str | None) -> None:
        self.vote = None
        if request_key is not None:
            self.requests[request_key] = (self.version + 1, None)

    def earlier_request(self, request_key: str | None, vote: dict[str, Any] | None) -> int | None:
        """The version an earlier request with this key produced, if this is its retry.

        A key reused for a different ballot is refused: answering it with the first
        response would silently drop the voter's new choice.
        """
        if request_key is None or request_key not in self.requests:
            return None
        version, earlier_vote = self.requests[request_key]
        if earlier_vote != vote:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different ballot; "
                "use a new key for a new ballot",
                field="Idempotency-Key",
            )
        return version


_BALLOT_TOPIC = get_topic(Ballot)
