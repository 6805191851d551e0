"""Voter keys: an HMAC of the voter's identity, so no raw voter id ever reaches the log."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from uuid import UUID

VOTER_TOKEN_PREFIX = "cvt_"  # noqa: S105 - a marker, not a secret


class VoterKeys:
    """Derives voter keys under the server secret.

    The election id is part of the message, so one person's keys in two elections cannot
    be linked; the kind prefix keeps a voter id and a token that happen to be equal apart.
    """

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    def for_voter_id(self, election_id: UUID, voter_id: str) -> str:
        return self._mac(b"voter-id", election_id, voter_id)

    def for_token(self, election_id: UUID, token: str) -> str:
        return self._mac(b"voter-token", election_id, token)

    def _mac(self, kind: bytes, election_id: UUID, identity: str) -> str:
        message = kind + b"\x00" + election_id.bytes + identity.encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def new_voter_token() -> str:
    """A fresh one-time voter token (192 random bits)."""
    return VOTER_TOKEN_PREFIX + secrets.token_urlsafe(24)


def is_voter_token(token: str) -> bool:
    return token.startswith(VOTER_TOKEN_PREFIX)


def request_key(idempotency_key: str, voter_key: str) -> str:
    """What a ballot event stores of a client's Idempotency-Key: a digest, scoped to the voter.

    Hashing keeps arbitrary client text out of the log; scoping to the voter keeps one
    voter's key from ever matching another's.
    """
    return hashlib.sha256(f"{voter_key}\x00{idempotency_key}".encode()).hexdigest()[:32]
