"""Running a process's event loop with an end that is bounded, whatever its tasks do.

asyncio.run (and uvloop.run, an asyncio.Runner on Python 3.11) cancels the tasks left once
its coroutine is done or interrupted and waits for them with no limit: a task that runs
on after its cancel (on 3.11 a cancel that comes as an ``asyncio.wait_for`` completes is
lost, CPython gh-86296) holds the process for ever, past its supervisor's STOP_TIMEOUT.
Here the main coroutine, interrupted (SIGTERM's SystemExit, Ctrl-C), is cancelled and given
``stop_within`` seconds to stop what it runs; then whatever is left is cancelled and given
EXIT_WAIT seconds, and left. ``cancel_within`` is the same bound for a part's own tasks
(running_workers' and the stream hub's), cancelling again what a lost cancel left running.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

log = logging.getLogger(__name__)
# What still runs once the main coroutine ended (a read abandoned on a store that hangs,
# whose cancellation psycopg spends up to 10 s asking the server about) is given this,
# then left. On a store that answers, a cancelled task ends within milliseconds; on one
# that hangs, within no bound worth waiting for (it was 2 s: see the API's shutdown budget).
EXIT_WAIT = 1.0
# A task still running this long after its cancel is cancelled again (see cancel_within).
CANCEL_AGAIN_AFTER = 0.25


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


async def cancel_within(what: str, tasks: Sequence[asyncio.Task[None]], within: float) -> None:
    """Cancel ``tasks`` and wait for them to end, ``within`` seconds at most; one still
    running after CANCEL_AGAIN_AFTER is cancelled again, and what is left by then is left
    (logged). A cancel can be lost: on Python 3.11 ``asyncio.wait_for`` returns its result
    instead of raising when the cancel comes as what it waits for is done (CPython
    gh-86296), and psycopg_pool waits for a connection with it. A projection worker whose
    pool handed it a connection as the shutdown cancelled it (right after the store came
    back, as the pool replaced the connections the restart broke) carried on as if never
    cancelled, and the shutdown that awaited it waited for ever (a test's teardown hung
    until pytest-timeout killed it); the stream hub, reading the store through the reads
    pool, could do the same."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = {task for task in tasks if not task.done()}
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(CANCEL_AGAIN_AFTER, left))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("stopping %s failed: %s", what, task.exception())
    if pending:
        log.warning(
            "stopping %s took over %g s: left behind (%s)",
            what,
            within,
            ", ".join(sorted(task.get_name() for task in pending)),
        )
        for task in pending:
            task.add_done_callback(_retrieved)


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
