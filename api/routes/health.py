"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.again import once_more
from api.contract import Operation, operation
from api.deadline import within
from api.responses import JSONResponse, problem
from infra.runtime.bootstrap import Services
from infra.store.migrations import MigrationError, pending

log = logging.getLogger(__name__)
READY_TIMEOUT = 2.0
# A 503 says when to ask again, as every other 503 does: the reads pool tries the database
# again within 2 s (infra/store/reconnect.py), and the elections load in about as long.
READY_RETRY_AFTER = "2"


@operation(
    Operation(
        "health",
        "The process answers; its dependencies' state in detail (a broker outage makes the "
        "service degraded: ballots and results still work)",
        "health",
        auth=False,
        ok=documents.Health,
    )
)
async def health(request: Request) -> Response:
    services = context.services(request)
    checks = {"store": services.writer.health.describe()}
    if services.broker is not None:
        checks["broker"] = services.broker.describe()
    degraded = any(value != "ok" for value in checks.values())
    return JSONResponse({"status": "degraded" if degraded else "ok", "checks": checks})


@operation(
    Operation(
        "ready",
        "Ready to take ballots: the database answers and every migration is applied",
        "health",
        auth=False,
        ok=documents.Ready,
    )
)
async def ready(request: Request) -> Response:
    """200 when the database is reachable, every migration is applied and the elections
    are loaded; 503 naming what is missing otherwise. The broker's state is reported but
    does not decide: without it ballots are taken and results served (the projections
    catch up from the store)."""
    services = context.services(request)
    checks: dict[str, str] = {}
    try:
        # On the reads pool: a probe that opened a connection of its own failed whenever
        # another client held every connection the server allows, although ours served.
        await within(_answers(services), READY_TIMEOUT)
        checks["database"] = "ok"
        if not getattr(request.app.state, "migrated", False):
            missing = await within(
                asyncio.to_thread(_pending_migrations, services.settings.database_url or ""),
                READY_TIMEOUT,
            )
            checks["migrations"] = "ok" if not missing else "pending: " + ", ".join(missing)
            request.app.state.migrated = not missing  # applied, they stay applied
        else:
            checks["migrations"] = "ok"
    except (psycopg.Error, PoolTimeout, TimeoutError, OSError) as error:
        # Anyone may read this: what the error says (hosts, names, users) goes to the log.
        log.warning("readiness: the database is unreachable: %s", str(error).strip() or error)
        checks["database"] = "unreachable (see the log)"
        checks["migrations"] = "unknown"
    except MigrationError as error:
        checks["database"] = "ok"
        checks["migrations"] = f"mismatch: {error}"
    # Listings and the overview answer 503 until every election in the log is loaded.
    checks["elections"] = "ok" if services.feed.loaded.is_set() else "loading"
    failing = [f"{name} {value}" for name, value in checks.items() if value != "ok"]
    if services.broker is not None:
        checks["broker"] = services.broker.describe()
    if failing:
        return problem(
            503,
            "Not ready",
            "; ".join(failing),
            headers={"Retry-After": READY_RETRY_AFTER},
            checks=checks,
        )
    return JSONResponse({"status": "ready", "checks": checks})


def _pending_migrations(database_url: str) -> list[str]:
    with psycopg.connect(database_url, connect_timeout=2) as conn:
        return pending(conn)


async def _answers(services: Services) -> None:
    async def probe() -> None:
        async with services.reads.connection() as conn:
            await conn.execute("SELECT 1")

    # (a connection whose backend was terminated just before it was lent: asked again)
    await once_more(probe, lambda: services.writer.health.up)
