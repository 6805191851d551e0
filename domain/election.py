"""The Election aggregate: rules pinned at creation, lifecycle draft -> open -> closed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from eventsourcing.domain import Aggregate, event

from domain.errors import ElectionNotOpen, InvalidRequest, InvalidTransition, NotEligible
from domain.rules import ElectionRules, Eligibility
from domain.voter import Voter
from domain.votes import Vote, parse_vote

MAX_TOKENS_PER_ISSUE = 10_000


NOT_ISSUED = "this voter token was not issued for this election"


class ElectionStatus(StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    CLOSED = "closed"


class Election(Aggregate):
    """An election: what is voted on, how ballots are counted, and whether it is open."""

    class Created(Aggregate.Created):
        title: str
        rules: dict[str, Any]

    @event(Created)
    def __init__(self, title: str, rules: dict[str, Any]) -> None:
        self.title = title
        self.rules = ElectionRules.from_json(rules)
        self.status = ElectionStatus.DRAFT
        # The electorate of a token election: the credentials of the tokens issued.
        self.voter_keys: set[str] = set()

    @classmethod
    def start(cls, title: str, rules: ElectionRules) -> Election:
        """A new election in draft, with its rules pinned."""
        return cls(title=title, rules=rules.to_json())

    def open(self) -> None:
        if self.status is not ElectionStatus.DRAFT:
            raise InvalidTransition(
                f"the election is {self.status.value}; only a draft election can be opened"
            )
        self._opened()

    @event("Opened")
    def _opened(self) -> None:
        self.status = ElectionStatus.OPEN

    def close(self) -> None:
        if self.status is not ElectionStatus.OPEN:
            raise InvalidTransition(
                f"the election is {self.status.value}; only an open election can be closed"
            )
        self._closed()

    @event("Closed")
    def _closed(self) -> None:
        self.status = ElectionStatus.CLOSED

    def issue_voter_tokens(self, credentials: Sequence[str]) -> None:
        """Add the credentials of freshly issued one-time tokens to the electorate.

        The electorate is fixed before voting starts: tokens are issued while the election
        is a draft, unless it was created with ``late_tokens``. The event lists the
        credentials sorted: in the order the tokens were made, they would tell whoever
        received the tokens which credential is whose.
        """
        if self.rules.eligibility is not Eligibility.TOKENS:
            raise InvalidRequest(
                "this election lets API clients assert voter ids (eligibility 'client'); "
                "voter tokens are only for elections created with eligibility 'tokens'"
            )
        if self.status is ElectionStatus.CLOSED:
            raise InvalidTransition("the election is closed; no more voter tokens can be issued")
        if self.status is ElectionStatus.OPEN and not self.rules.late_tokens:
            raise InvalidTransition(
                "the election is open, and its electorate was fixed when it opened: issue "
                "voter tokens while it is a draft (or create it with late_tokens: true)"
            )
        if not 1 <= len(credentials) <= MAX_TOKENS_PER_ISSUE:
            raise InvalidRequest(
                f"issue between 1 and {MAX_TOKENS_PER_ISSUE} tokens at a time", field="count"
            )
        self._tokens_issued(voter_keys=sorted(credentials))

    # The field keeps its first name, ``voter_keys``: auditors' tools read it.
    @event("TokensIssued")
    def _tokens_issued(self, voter_keys: list[str]) -> None:
        self.voter_keys.update(voter_keys)

    def accept_vote(self, voter: Voter, content: Mapping[str, Any]) -> Vote:
        """Check that this voter may vote now and that the ballot fits the rules. (Who may
        vote first: a token not on the roll learns nothing of the election's state.)"""
        self.check_eligible(voter.credential)
        self.check_open()
        return parse_vote(self.rules, content)

    def check_open(self) -> None:
        if self.status is not ElectionStatus.OPEN:
            when = "has not opened yet" if self.status is ElectionStatus.DRAFT else "is closed"
            raise ElectionNotOpen(f"the election {when}; ballots are accepted only while open")

    def check_eligible(self, credential: str) -> None:
        if self.rules.eligibility is Eligibility.TOKENS and credential not in self.voter_keys:
            raise NotEligible(NOT_ISSUED)

    def check_token_holder(self, credential: str) -> None:
        """A voter token acts only in the token election that issued it: one answer for
        any other, whatever the election, so a made-up token learns nothing of it."""
        if self.rules.eligibility is not Eligibility.TOKENS or credential not in self.voter_keys:
            raise NotEligible(NOT_ISSUED)
