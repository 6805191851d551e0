"""Prometheus metrics of every API process together, behind METRICS_TOKEN where it is set."""

from __future__ import annotations

import hmac

import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from api import context
from api.contract import Operation, operation
from api.problems import Unauthorized
from infra import batched_metrics
from infra.metrics import DATABASE_CONNECTED, exposition, refresh_positions


@operation(
    Operation(
        "metrics",
        "Prometheus metrics of all API processes (bearer METRICS_TOKEN where it is set)",
        "health",
        auth=False,
        media="text/plain",
        errors=(401,),
    )
)
async def metrics(request: Request) -> Response:
    """Every API process's series merged (under `cardinal serve`, prometheus-client's
    multiprocess mode), with log and projection positions fresh from the database."""
    services = context.services(request)
    expected = services.settings.metrics_token
    if expected is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), expected.encode()
        ):
            raise Unauthorized("send Authorization: Bearer <METRICS_TOKEN>")
    try:
        async with services.reads.connection(timeout=2) as conn:
            await refresh_positions(conn, "api")
    except (psycopg.Error, PoolTimeout):
        # No connection within 2 s is the database away too (it said 1 through an outage).
        DATABASE_CONNECTED.labels("api").set(0)
    batched_metrics.flush()  # this process's figures to the second
    body, media_type = exposition()
    return Response(body, media_type=media_type)
