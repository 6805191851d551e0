"""Voters' keys: HMACs of their identity under the server secret.

No raw voter id or token ever reaches the log, and what does reach it cannot be linked:
a token election lists its electorate's *credentials* (an HMAC of each token), while a
ballot is named by a *ballot key*, an HMAC of the credential under a different label.
Going from one to the other takes ``CARDINAL_SECRET``; see docs/threat-model.md.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from uuid import UUID

from domain.rules import VoterIds
from domain.voter import Voter

VOTER_TOKEN_PREFIX = "cvt_"  # noqa: S105 - a marker, not a secret


class VoterKeys:
    """Derives voters' keys under the server secret.

    The election id is part of the message, so one person's keys in two elections cannot
    be linked; the kind prefix keeps a voter id and a token that happen to be equal apart.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._secret = secret.encode()
        # Keyed once; each key below copies it (cheaper than keying HMAC twice a ballot).
        self._keyed = hmac.new(self._secret, digestmod=hashlib.sha256)

    def for_voter_id(self, election_id: UUID, voter_id: str, rule: VoterIds) -> Voter:
        """The voter a client election's voter id names, under the election's pinned rule
        for voter ids (``ElectionRules.voter_ids``): InvalidBallot if the rule refuses it."""
        identity = rule.identity(voter_id)
        return self._voter(self.credential(election_id, identity, kind=b"voter-id"))

    def for_token(self, election_id: UUID, token: str) -> Voter:
        return self._voter(self.credential(election_id, token))

    def credential(self, election_id: UUID, identity: str, *, kind: bytes = b"voter-token") -> str:
        """What an electorate lists for this identity (a token, by default)."""
        return self._mac(kind + b"\x00" + election_id.bytes + identity.encode())

    def _voter(self, credential: str) -> Voter:
        return Voter(credential, self._mac(b"ballot\x00" + credential.encode()))

    def _mac(self, message: bytes) -> str:
        mac = self._keyed.copy()
        mac.update(message)
        return mac.hexdigest()


def new_voter_token() -> str:
    """A fresh one-time voter token (192 random bits)."""
    return VOTER_TOKEN_PREFIX + secrets.token_urlsafe(24)


def is_voter_token(token: str) -> bool:
    return token.startswith(VOTER_TOKEN_PREFIX)


def request_key(idempotency_key: str, voter: Voter) -> str:
    """What a ballot event stores of a client's Idempotency-Key: a digest, scoped to the voter.

    Hashing keeps arbitrary client text out of the log; scoping to the voter's (secret)
    ballot key keeps one voter's key from ever matching another's, and keeps anyone who
    knows the Idempotency-Key but not the secret from finding the ballot by it.
    """
    return hashlib.sha256(f"{voter.ballot_key}\x00{idempotency_key}".encode()).hexdigest()[:32]
