"""An API process of `serve` stops before its supervisor's SIGKILL, whatever the store does.

On SIGTERM the supervisor gives each child STOP_TIMEOUT seconds, then kills it (a ballot
being answered is cut, the log says nothing of why). An API child's stop is a sequence of
bounded parts, each reached in full when the store hangs and a slow client holds the
grace: their sum was about 19.7 s (uvicorn's 10 s grace, the rate limiter's 1.5 s, the
services' 6 s, EXIT_WAIT's 2 s), with the streams hub and the rebuild children unbounded
besides, against 20 s. It must leave a margin for a loaded machine."""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
import time

import uvicorn

from api import app, streams
from api.protocol import GRACE, server_config
from infra.runtime import bootstrap, loop
from infra.runtime.supervisor import STOP_TIMEOUT
from infra.store import ratelimit
from tests.servers import settings_for

MARGIN = 3.0  # seconds: a loaded machine, a slow start of each step
# uvicorn sees the signal at its main loop's next tick (every 0.1 s), and sleeps 0.1 s
# before the grace begins.
UVICORN_SETTLES = 0.2


def api_child_stop() -> dict[str, float]:
    """The most each part of an API child's stop can take (seconds), in order."""
    grace = server_config(settings_for("postgresql://-")).timeout_graceful_shutdown
    assert grace == GRACE
    return {
        "uvicorn sees the signal": UVICORN_SETTLES,
        "requests' grace (the drain at its end)": float(grace),
        "streams hub, beside the rebuild children": max(streams.HUB_STOP, app.REBUILDS_STOP),
        "rate limiter: its task, its give-back": ratelimit.STOP_WITHIN + ratelimit.GIVE_BACK_WITHIN,
        "services (no worker)": bootstrap.API_SHUTDOWN_AT_MOST,
        "tasks left at the loop's end": loop.EXIT_WAIT,
    }


def test_an_api_childs_stop_adds_up_under_stop_timeout() -> None:
    parts = api_child_stop()
    assert sum(parts.values()) <= STOP_TIMEOUT - MARGIN, parts


def test_the_services_bound_is_its_steps() -> None:
    b = bootstrap
    assert b.SHUTDOWN_AT_MOST == b.WORKERS_STOP + b.STEP + b.WRITER_STOP + 2 * b.STEP
    assert b.API_SHUTDOWN_AT_MOST == b.SHUTDOWN_AT_MOST - b.WORKERS_STOP


def test_the_workers_childs_stop_adds_up_under_stop_timeout() -> None:
    # (infra/cli/serve.py: run_bounded(stop_within=WORKERS_STOP + STEP + 1), then EXIT_WAIT)
    stop = bootstrap.WORKERS_STOP + bootstrap.STEP + 1 + loop.EXIT_WAIT
    assert stop <= STOP_TIMEOUT - MARGIN


def test_uvicorn_settles_as_the_budget_counts() -> None:
    """A uvicorn upgrade that waits longer before the grace fails here, not in production."""
    assert "await asyncio.sleep(0.1)" in inspect.getsource(uvicorn.Server.main_loop)
    shutdown = inspect.getsource(uvicorn.Server.shutdown)
    assert shutdown.count("await asyncio.sleep(0.1)") == 1
    assert "asyncio.timeout(self.config.timeout_graceful_shutdown)" in shutdown


async def test_a_rebuild_child_that_ignores_sigterm_is_killed_within_its_bound() -> None:
    """The API's shutdown terminated its rebuild children and awaited each with no bound."""
    ignores = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print(1, flush=True); time.sleep(60)"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ignores, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        await asyncio.wait_for(child.stdout.readline(), 10)  # (SIGTERM ignored from now)
        started = time.monotonic()
        await asyncio.wait_for(app._rebuilds_stopped([child, None]), app.REBUILDS_STOP + 2)
        assert time.monotonic() - started < app.REBUILDS_STOP + 0.3
        assert child.returncode == -signal.SIGKILL
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
