"""CPU work taken off the event loop in turns: identical requests share one run, and a
process runs one at a time per kind (a recount, a live results document), so that the
loop keeps the GIL often enough to answer ballots and other reads meanwhile.

A request whose turn does not come within its kind's wait is a 503 with Retry-After; one
identical to a run already under way (or waiting its turn) joins that run instead. A
caller that goes away leaves the run going for the others (and for the results cache).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from starlette.exceptions import HTTPException

T = TypeVar("T")

RETRY_AFTER = "2"


async def run_shared(
    running: dict[Hashable, asyncio.Future[Any]],
    key: Hashable,
    work: Callable[[], Awaitable[T]],
    *,
    turn: asyncio.Lock,
    wait: float,
    busy: str,
) -> T:
    """``work``, run as one task shared by every request for the same ``key`` while it
    runs (or waits), under ``turn``: one that waits ``wait`` seconds for it is a 503 with
    Retry-After and ``busy`` as its detail."""
    task: asyncio.Future[Any] | None = running.get(key)
    if task is None:
        task = asyncio.ensure_future(_in_turn(turn, wait, busy, work))
        running[key] = task
        task.add_done_callback(_forgetter(running, key))
    result: T = await asyncio.shield(task)
    return result


def _forgetter(
    running: dict[Hashable, asyncio.Future[Any]], key: Hashable
) -> Callable[[asyncio.Future[Any]], None]:
    def forget(done: asyncio.Future[Any]) -> None:
        if running.get(key) is done:
            del running[key]
        if not done.cancelled():
            done.exception()  # retrieved: every caller may have gone away

    return forget


async def _in_turn(
    turn: asyncio.Lock, wait: float, busy: str, work: Callable[[], Awaitable[T]]
) -> T:
    try:
        await asyncio.wait_for(turn.acquire(), wait)
    except TimeoutError:
        raise HTTPException(503, busy, headers={"Retry-After": RETRY_AFTER}) from None
    try:
        return await work()
    finally:
        turn.release()
