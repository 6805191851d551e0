"""What the HTTP edge runs beside the services: the shared rate limiter and the
administrator's sign-in (account, access tokens, refresh tokens)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from api.login import AdminAccount
from api.ratelimit import RateLimits
from infra.runtime.bootstrap import Services
from infra.runtime.settings import Settings
from infra.store.ratelimit import SharedRateLimiter
from infra.store.sessions import RefreshTokens

REFRESH_LIFETIME = timedelta(hours=12)


@dataclass
class Edge:
    limits: RateLimits
    admin: AdminAccount
    refresh_tokens: RefreshTokens


@asynccontextmanager
async def running_edge(services: Services) -> AsyncIterator[Edge]:
    """Start the limiter's connection; stop it when the app stops."""
    settings = services.settings
    assert settings.database_url is not None
    limiter = SharedRateLimiter(settings.database_url)
    await limiter.start()
    try:
        yield Edge(
            RateLimits(settings, limiter, services.voter_keys.secret),
            AdminAccount(settings.super_admin_email, settings.super_admin_password),
            RefreshTokens(services.reads, REFRESH_LIFETIME, account_generation(settings)),
        )
    finally:
        await limiter.stop()


def account_generation(settings: Settings) -> str:
    """What a refresh token is bound to: the administrator's address and password and the
    key that signs access tokens. Changing any of them ends every sign-in. (Whoever holds
    JWT_SECRET_KEY could test passwords against it, but could sign access tokens anyway.)"""
    account = f"{settings.super_admin_email or ''}\x00{settings.super_admin_password or ''}"
    key = (settings.jwt_secret_key or "").encode()
    return hmac.new(key, b"account\x00" + account.encode(), hashlib.sha256).hexdigest()[:32]
