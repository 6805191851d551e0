"""Running a process's event loop with an end that is bounded, whatever its tasks do.

asyncio.run (and uvloop.run, an asyncio.Runner on Python 3.11) cancels the tasks left once
its coroutine is done or interrupted and waits for them with no limit: a task that runs
on after its cancel (on 3.11 a cancel that comes as an ``asyncio.wait_for`` completes is
lost, CPython gh-86296) holds the process for ever, past its supervisor's STOP_TIMEOUT.
Here the main coroutine, interrupted (SIGTERM's SystemExit, Ctrl-C), is cancelled and given
``stop_within`` seconds to stop what it runs; then whatever is left is cancelled and given
EXIT_WAIT seconds, and left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)
EXIT_WAIT = 2.0


def run_bounded(
    main: Coroutine[Any, Any, None],
    *,
    stop_within: float,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    left: str = "still running",
) -> None:
    """Run ``main`` to its end; interrupted, stop it in ``stop_within`` + EXIT_WAIT s at most
    (``left``: what the tasks still running at the end are said to be doing)."""
    loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
    task = loop.create_task(main)
    try:
        loop.run_until_complete(task)
    finally:
        try:
            if not task.done():  # interrupted: main stops its parts, its own way, bounded
                task.cancel()
                loop.run_until_complete(asyncio.wait({task}, timeout=stop_within))
            if task.done() and not task.cancelled():
                task.exception()  # (raised above, or cancelled into one: logged there)
            cancel_remaining(loop, left)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def cancel_remaining(loop: asyncio.AbstractEventLoop, doing: str) -> None:
    """Cancel the loop's tasks still running and give them EXIT_WAIT seconds; what is still
    running then is left (logged, as "exiting with N task(s) ``doing``")."""
    remaining = asyncio.all_tasks(loop)
    if not remaining:
        return
    for task in remaining:
        task.cancel()
    _, stuck = loop.run_until_complete(asyncio.wait(remaining, timeout=EXIT_WAIT))
    for task in remaining - stuck:
        if not task.cancelled() and task.exception() is not None:
            log.debug("at exit: %r ended with %r", task, task.exception())
    if stuck:
        log.warning("exiting with %d task(s) %s", len(stuck), doing)
