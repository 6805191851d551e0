"""Liveness and readiness."""

from __future__ import annotations

import asyncio

import aio_pika
import psycopg
from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, operation
from api.responses import JSONResponse, problem
from infra.metrics import BROKER_CONNECTED
from infra.store.migrations import MigrationError, pending

READY_TIMEOUT = 2.0


@operation(Operation("health", "The process answers", "health", auth=False, ok=documents.Health))
async def health(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


@operation(
    Operation(
        "ready",
        "Ready to serve: database, migrations, broker",
        "health",
        auth=False,
        ok=documents.Ready,
    )
)
async def ready(request: Request) -> Response:
    """200 when the database is reachable and every migration is applied (and the broker,
    where one is configured, is connected); 503 naming what is missing otherwise."""
    services = context.services(request)
    checks: dict[str, str] = {}
    try:
        missing = await asyncio.wait_for(
            asyncio.to_thread(_pending_migrations, services.settings.database_url or ""),
            READY_TIMEOUT,
        )
        checks["database"] = "ok"
        checks["migrations"] = "ok" if not missing else "pending: " + ", ".join(missing)
    except (psycopg.Error, TimeoutError, OSError) as error:
        checks["database"] = f"unreachable: {error}".strip()
        checks["migrations"] = "unknown"
    except MigrationError as error:
        checks["database"] = "ok"
        checks["migrations"] = f"mismatch: {error}"
    if services.settings.amqp_url is not None:
        checks["broker"] = await _broker(services.settings.amqp_url)
    failing = [f"{name} {value}" for name, value in checks.items() if value != "ok"]
    if failing:
        return problem(503, "Not ready", "; ".join(failing), checks=checks)
    return JSONResponse({"status": "ready", "checks": checks})


async def _broker(amqp_url: str) -> str:
    try:
        connection = await asyncio.wait_for(aio_pika.connect(amqp_url), READY_TIMEOUT)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as error:
        BROKER_CONNECTED.labels("api").set(0)
        return f"unreachable: {error or type(error).__name__}"
    await connection.close()
    BROKER_CONNECTED.labels("api").set(1)
    return "ok"


def _pending_migrations(database_url: str) -> list[str]:
    with psycopg.connect(database_url, connect_timeout=2) as conn:
        return pending(conn)
