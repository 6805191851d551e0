"""Access tokens: short-lived JWTs (HS256 under JWT_SECRET_KEY) that act as a role.

Every claim that matters is required and checked: the issuer and audience (a token minted
for another service is not ours), expiry and issue time, and a token id. The algorithm is
pinned, so a token that names another one (``none``, or RS256 with our key as its public
key) is refused.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

ISSUER = "cardinal-vote"
AUDIENCE = "cardinal-vote-api"
ALGORITHM = "HS256"
LIFETIME = 900
# Clocks of several API hosts differ a little; a few seconds of grace, not minutes. A
# token is accepted until LEEWAY seconds after its exp, and what it opened (a stream) runs
# as long: see accepted_until.
LEEWAY = 10
REQUIRED = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "role"]


class AccessTokens:
    """Issues and verifies access tokens."""

    def __init__(self, key: str, lifetime: int = LIFETIME) -> None:
        self._key = key
        self.lifetime = lifetime

    def issue(self, subject: str, role: str) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "role": role,
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> dict[str, Any] | None:
        """The token's claims if it is ours, intact and current; None otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY,
                options={"require": REQUIRED},
            )
        except jwt.PyJWTError:
            return None
        return claims


def accepted_until(expires: float) -> float:
    """The last moment (epoch seconds) a token that expires at ``expires`` is accepted:
    ``verify`` allows LEEWAY after exp, and whatever ends with the token ends then too,
    not at exp (a stream accepted in the grace would end at once, and be reconnected in a
    loop until the grace was over)."""
    return expires + LEEWAY


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and token.count(".") == 2
