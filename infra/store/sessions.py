"""The administrator's refresh tokens: stored as digests, used once, revocable by family.

A sign-in starts a *family*. Each refresh uses its token up and issues the next one in the
same family; presenting a used token again means a copy is in someone else's hands, so
the whole family is revoked (both holders must sign in again). A logout revokes the family.
A row is deleted once expired (by the next sign-in or refresh), not before: until then a
used token presented again still revokes its family.
Each token carries the account's *generation* (api/edge.py): a token of another generation
(the administrator's password or the signing key changed since) is used up and refused.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta

from psycopg_pool import AsyncConnectionPool

PREFIX = "cvr_"
USE = """
UPDATE refresh_tokens SET used_at = now()
WHERE digest = %s AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
  AND generation = %s
RETURNING family, subject
"""
REVOKE_FAMILY = """
UPDATE refresh_tokens SET revoked_at = now()
WHERE family = (SELECT family FROM refresh_tokens WHERE digest = %s) AND revoked_at IS NULL
"""
# Each sign-in and refresh also deletes the rows past their expiry, which nothing can use
# again: a used (or revoked) row stays until then, so a used token presented again within
# its lifetime still finds its family and revokes it; after, it is refused like any unknown
# token (it had expired anyway). Rows another transaction holds are left for the next time.
INSERT = """
WITH expired AS (
    DELETE FROM refresh_tokens WHERE digest IN (
        SELECT digest FROM refresh_tokens WHERE expires_at <= now() FOR UPDATE SKIP LOCKED
    )
)
INSERT INTO refresh_tokens (digest, family, subject, expires_at, generation)
VALUES (%s, %s, %s, now() + %s, %s)
"""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class RefreshTokens:
    """Issue, rotate and revoke refresh tokens in PostgreSQL."""

    def __init__(self, pool: AsyncConnectionPool, lifetime: timedelta, generation: str) -> None:
        self.pool = pool
        self.lifetime = lifetime
        self.generation = generation

    async def issue(self, subject: str) -> str:
        """A new token in a new family (a sign-in)."""
        token = PREFIX + secrets.token_urlsafe(32)
        async with self.pool.connection() as conn:
            await conn.execute(
                INSERT, (_digest(token), uuid.uuid4(), subject, self.lifetime, self.generation)
            )
        return token

    async def rotate(self, token: str) -> tuple[str, str] | None:
        """(subject, the next token) for a live token; None otherwise, revoking the family
        of a token presented a second time."""
        digest = _digest(token)
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(USE, (digest, self.generation))
            row = await cursor.fetchone()
            if row is None:
                await conn.execute(REVOKE_FAMILY, (digest,))
                return None
            family, subject = row
            following = PREFIX + secrets.token_urlsafe(32)
            await conn.execute(
                INSERT, (_digest(following), family, subject, self.lifetime, self.generation)
            )
        return str(subject), following

    async def revoke(self, token: str) -> None:
        """Revoke the token's whole family (a logout); an unknown token changes nothing."""
        async with self.pool.connection() as conn:
            await conn.execute(REVOKE_FAMILY, (_digest(token),))
