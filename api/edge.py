"""What the HTTP edge runs beside the services: the shared rate limiter and the
administrator's sign-in (account, access tokens, refresh tokens)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from api.login import AdminAccount
from api.ratelimit import RateLimits
from infra.runtime.bootstrap import Services
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
            RateLimits(settings, limiter),
            AdminAccount(settings.super_admin_email, settings.super_admin_password),
            RefreshTokens(services.reads, REFRESH_LIFETIME),
        )
    finally:
        await limiter.stop()
