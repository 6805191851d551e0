"""Bearer tokens: role tokens from the configuration, one-time voter tokens, and the
administrator's access tokens (JWTs from POST /api/auth/login, acting as the admin role)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from starlette.requests import Request

from api.problems import Forbidden, Unauthorized
from api.tokens import AccessTokens, looks_like_jwt
from domain.application import VotingApplication
from domain.election import Election
from infra.runtime.settings import Settings
from infra.runtime.voters import is_voter_token

# An admin may also do what operators do. Not what auditors do: auditors read every
# ballot as recorded, and keeping that apart from running elections and handing out voter
# tokens is separation of duties (one person may still hold both tokens). Casting ballots
# stays with clients.
IMPLIED = {"admin": {"admin", "operator"}}
KNOWN_HEADERS = 1024


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role, or a voter holding a voter token."""

    role: str | None = None
    voter_token: str | None = None
    expires: float | None = None  # an access token's exp (epoch seconds): it acts until then

    def can_act_as(self, role: str) -> bool:
        return self.role is not None and role in IMPLIED.get(self.role, {self.role})


class Authenticator:
    """Maps presented bearer tokens to principals, comparing digests rather than secrets."""

    def __init__(self, settings: Settings) -> None:
        # Authorization header -> principal, for the configured role tokens only (they do
        # not expire): the ballot hot path sends the same header with every request.
        self._known: dict[str, Principal] = {}
        self._roles: dict[bytes, str] = {}
        for role, tokens in settings.role_tokens.items():
            for token in tokens:
                self._roles[_digest(token)] = role
        self.access_tokens = (
            AccessTokens(settings.jwt_secret_key) if settings.jwt_secret_key else None
        )

    def identify(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        known = self._known.get(header) if header else None
        if known is not None:
            return known
        if not header:
            raise Unauthorized("send an Authorization: Bearer <token> header")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        role = self._roles.get(_digest(token))
        if role is not None:
            if len(self._known) < KNOWN_HEADERS:  # bounded: spellings of the header vary
                self._known[header] = Principal(role=role)
            return Principal(role=role)
        if is_voter_token(token):
            return Principal(voter_token=token)
        if self.access_tokens is not None and looks_like_jwt(token):
            claims = self.access_tokens.verify(token)
            if (
                claims is not None
                and isinstance(claims.get("role"), str)
                and claims["role"] in IMPLIED
            ):
                return Principal(role=str(claims["role"]), expires=float(claims["exp"]))
            raise Unauthorized(
                "this access token is not valid (expired, or not issued here); sign in again"
            )
        raise Unauthorized("this token is not recognised")

    def require(self, request: Request, *roles: str) -> Principal:
        """The caller, if it may act as one of the roles; 401 or 403 otherwise."""
        principal = self.identify(request)
        if any(principal.can_act_as(role) for role in roles):
            return principal
        who = f"the {principal.role} role" if principal.role else "a voter token"
        raise Forbidden(f"{who} may not do this; it needs the {' or '.join(roles)} role")


async def readable_election(
    principal: Principal,
    app: VotingApplication,
    election_id: UUID,
    credential: Callable[[str], str],
) -> Election:
    """The election, if this caller may read it: anyone with a role may read an election;
    a voter token, only the token election it was issued for (it is not checked anywhere
    else, so this is where an unknown one is turned away, once the store was asked: it
    may have been issued through another process a moment ago)."""
    if principal.voter_token is not None:
        return await app.token_holder_election(election_id, credential(principal.voter_token))
    return await app.election(election_id)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
