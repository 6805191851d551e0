"""Operators: where every projection stands, and blue/green rebuilds."""

from __future__ import annotations

import asyncio
import os
import sys

from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, Param, operation
from api.responses import JSONResponse
from domain.errors import Conflict, NotFound
from projections import PROJECTIONS
from projections.rebuild import rebuild_running
from projections.status import projection_status


@operation(
    Operation(
        "projectionStatus",
        "Where every projection stands (operator)",
        "operations",
        ok=documents.Projections,
        errors=(403,),
    )
)
async def projections(request: Request) -> Response:
    context.auth(request).require(request, "operator")
    async with context.services(request).reads.connection() as conn:
        found = await projection_status(conn)
    return JSONResponse({"projections": found})


@operation(
    Operation(
        "rebuildProjection",
        "Start a blue/green rebuild in a child process (operator)",
        "operations",
        ok=documents.RebuildStarted,
        status=202,
        errors=(403, 404, 409),
        params=(Param("name", "path", {"type": "string", "enum": list(PROJECTIONS)}),),
        ok_headers={"Location": {"schema": {"type": "string"}}},
    )
)
async def rebuild(request: Request) -> Response:
    """Start a blue/green rebuild; progress shows in the status.

    It runs as a child process (``cardinal rebuild NAME``), not on this process's event
    loop: a rebuild is seconds of CPU-bound work per million events, and ballots and
    results must not wait behind it. A rebuild already running anywhere is a 409.
    """
    context.auth(request).require(request, "operator")
    name = request.path_params["name"]
    if name not in PROJECTIONS:
        raise NotFound(
            f"there is no projection named {name!r}; the projections are {', '.join(PROJECTIONS)}"
        )
    running: dict[str, asyncio.subprocess.Process | None] = request.app.state.rebuilds
    services = context.services(request)
    child = running.get(name)
    if name in running and (child is None or child.returncode is None):
        raise Conflict(f"a rebuild of {name} is already running; follow it in the status")
    running[name] = None  # starting: a second request meanwhile is refused, not started too
    try:
        async with services.reads.connection() as conn:
            if await rebuild_running(conn, name):  # in another process
                raise Conflict(f"a rebuild of {name} is already running; follow it in the status")
        running[name] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra.cli",
            "rebuild",
            name,
            env={**os.environ, **services.settings.environment()},
            stdout=asyncio.subprocess.DEVNULL,  # its progress is in the status; logs: stderr
        )
    finally:
        if name in running and running[name] is None:
            del running[name]  # refused, or the start failed
    return JSONResponse(
        {"projection": name, "state": "rebuilding", "status": "/api/admin/projections"},
        status_code=202,
        headers={"Location": "/api/admin/projections"},
    )
