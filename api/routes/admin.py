"""Operators: where every projection stands, and blue/green rebuilds."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response

from api import context
from api.responses import JSONResponse
from domain.errors import Conflict, NotFound
from projections import PROJECTIONS, projection
from projections.rebuild import Rebuild, RebuildRefused
from projections.status import projection_status

log = logging.getLogger(__name__)


async def projections(request: Request) -> Response:
    context.auth(request).require(request, "operator")
    async with context.services(request).reads.connection() as conn:
        found = await projection_status(conn)
    return JSONResponse({"projections": found})


async def rebuild(request: Request) -> Response:
    """Start a blue/green rebuild in this process; progress shows in the status."""
    context.auth(request).require(request, "operator")
    name = request.path_params["name"]
    if name not in PROJECTIONS:
        raise NotFound(
            f"there is no projection named {name!r}; the projections are {', '.join(PROJECTIONS)}"
        )
    running: dict[str, asyncio.Task[int]] = request.app.state.rebuilds
    task = running.get(name)
    if task is not None and not task.done():
        raise Conflict(f"a rebuild of {name} is already running; follow it in the status")
    services = context.services(request)
    job = Rebuild(projection(name), services.reads)
    task = running[name] = asyncio.create_task(_run(job), name=f"rebuild {name}")
    # Answer once the rebuild holds its lock: one running in another process (an API
    # replica, or `cardinal rebuild`) is a 409 here, not a 202 that quietly does nothing.
    started = asyncio.create_task(job.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done() and isinstance(task.exception(), RebuildRefused):
        raise Conflict(f"a rebuild of {name} is already running; follow it in the status")
    return JSONResponse(
        {"projection": name, "state": "rebuilding", "status": "/api/admin/projections"},
        status_code=202,
        headers={"Location": "/api/admin/projections"},
    )


async def _run(job: Rebuild) -> int:
    try:
        return await job.run()
    except RebuildRefused:
        raise
    except Exception:
        log.exception("rebuild of %s failed", job.name)
        raise
