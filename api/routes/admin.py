"""Operators: where every projection stands, and blue/green rebuilds."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, Param, operation
from api.problems import shown
from api.responses import JSONResponse, problem
from domain.errors import Conflict, NotFound
from infra.runtime.shared_metrics import child_exited
from projections import PROJECTIONS
from projections.rebuild import rebuild_running, running_detail
from projections.status import projection_status

log = logging.getLogger(__name__)


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

    The answer waits for the child to say whether it holds the rebuild lock (a pipe it
    inherits, ``--started-fd``): 202 once it does, so that the rebuild answered "started"
    is the one running; 409 if another process's rebuild holds it (two API processes, or
    a `cardinal rebuild` starting meanwhile); 503 if it says nothing within START_WITHIN
    seconds (it is stopped) or stops first.
    """
    context.auth(request).require(request, "operator")
    name = request.path_params["name"]
    if name not in PROJECTIONS:
        raise NotFound(
            f"there is no projection named '{shown(name)}'; the projections are "
            f"{', '.join(PROJECTIONS)}"
        )
    running: dict[str, asyncio.subprocess.Process | None] = request.app.state.rebuilds
    services = context.services(request)
    previous = running.get(name)
    if name in running and previous is None:  # this process is starting one
        raise Conflict(f"a rebuild of {name} is already starting; follow it in the status")
    running[name] = None  # starting: a second request meanwhile is refused, not started too
    try:
        async with services.reads.connection() as conn:
            # A quick look: a rebuild running anywhere (ours too) holds the lock.
            if await rebuild_running(conn, name):
                raise Conflict(await running_detail(conn, name))
        if previous is not None and previous.returncode is None:
            # Ours, done (or failed): it released the lock and is exiting. Waited
            # for, so that this process still stops every child of its own at shutdown;
            # one still not gone after STOP_WITHIN is killed (its work is over), not left
            # untracked when the new child takes its place (the merge review).
            try:
                await asyncio.wait_for(previous.wait(), STOP_WITHIN)
            except TimeoutError:
                previous.kill()
                await previous.wait()
        child, said = await _start(name, services.settings.environment())
        running[name] = child
    finally:
        if name in running and running[name] is None:  # refused, or the start failed
            if previous is not None:
                running[name] = previous  # (still ours to stop at shutdown if it runs)
            else:
                del running[name]
    if "started" not in said:
        del running[name]  # (it has stopped; so has any before it, waited for above)
    return await _answer(name, child, said, services.reads)


async def _answer(
    name: str, child: asyncio.subprocess.Process, said: dict[str, Any], reads: AsyncConnectionPool
) -> Response:
    """The answer to a rebuild request, from what its child said (see ``_start``)."""
    if "started" in said:
        return JSONResponse(
            {"projection": name, "state": "rebuilding", "status": "/api/admin/projections"},
            status_code=202,
            headers={"Location": "/api/admin/projections"},
        )
    if said.get("running"):  # another process's rebuild holds the lock
        async with reads.connection() as conn:
            raise Conflict(await running_detail(conn, name))
    if "refused" in said:
        raise Conflict(f"the rebuild of {name} was refused: {said['refused']}")
    if said.get("silent"):
        why = f"did not take its lock within {START_WITHIN:g} s and was stopped"
    else:
        why = f"stopped (exit status {child.returncode}) before it took its lock"
    return problem(
        503,
        "Rebuild not started",
        f"the rebuild of {name} {why}; nothing changed: try again (its process's error, "
        "if any, is in this API process's log)",
        headers={"Retry-After": "10"},
    )


START_WITHIN = 20.0  # seconds for a rebuild's child to hold its lock (usually about 1)
STOP_WITHIN = 5.0  # seconds for one that did not to stop on SIGTERM (then SIGKILL)


async def _start(
    name: str, environment: dict[str, str]
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Start ``cardinal rebuild NAME`` and wait, without blocking the event loop, for what
    it says on its pipe: {"started": version} (it runs on), or {"refused": why, "running":
    bool}; {} if it stopped unsaid, {"silent": True} if it said nothing in time (it is then
    stopped). Unless it started, its process has exited on return."""
    loop = asyncio.get_running_loop()
    readable, writable = os.pipe()
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra.cli",
            "rebuild",
            name,
            "--started-fd",
            str(writable),
            env={**os.environ, **environment},
            stdout=asyncio.subprocess.DEVNULL,  # its progress is in the status; logs: stderr
            pass_fds=(writable,),
        )
    except BaseException:
        os.close(readable)
        raise
    finally:
        os.close(writable)  # the child's copy alone: its exit is our end of file
    # Its live gauges (prometheus-client's multiprocess files) stop counting at its exit:
    # only the supervisor's own children were marked dead (the soak review).
    watcher = asyncio.create_task(_metrics_dropped_at_exit(child))
    _WATCHERS.add(watcher)
    watcher.add_done_callback(_WATCHERS.discard)
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(readable, "rb", buffering=0)
    )
    try:
        async with asyncio.timeout(START_WITHIN):
            line = await reader.readline()
            said: dict[str, Any] = json.loads(line) if line else {}
            if "started" not in said:
                await child.wait()  # refused, or stopped unsaid: it is exiting
            return child, said
    except TimeoutError:
        log.error(
            "rebuild of %s: no word from its process in %g s; stopping it", name, START_WITHIN
        )
        await _stop(child)
        return child, {"silent": True}
    except BaseException:
        await asyncio.shield(_stop(child))  # (this request was cancelled: so is its rebuild)
        raise
    finally:
        transport.close()


_WATCHERS: set[asyncio.Task[None]] = set()


async def _metrics_dropped_at_exit(child: asyncio.subprocess.Process) -> None:
    await child.wait()
    try:
        child_exited(child.pid)
    except OSError as error:  # (the folder going with the supervisor meanwhile)
        log.warning("rebuild process %d: its metrics could not be dropped: %s", child.pid, error)


async def _stop(child: asyncio.subprocess.Process) -> None:
    if child.returncode is None:
        child.terminate()
    try:
        await asyncio.wait_for(child.wait(), STOP_WITHIN)
    except TimeoutError:
        child.kill()
        await child.wait()
