"""Answers within a time, whatever the store does: a database that hangs (frozen, or cut
off without a reset) must cost a client a 503, not a wait as long as the hang.

Cancelling a query in psycopg first asks the server to cancel it, for up to 10 s; a
frozen server never answers. So the work that overran is cancelled and left to finish its
own clean-up in the background, while its caller is answered at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_abandoned: set[asyncio.Task[Any]] = set()  # held until their clean-up is done


async def within(work: Coroutine[Any, Any, T], seconds: float) -> T:
    """``work``'s result, or TimeoutError after ``seconds`` (the work cancelled, not
    awaited)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    abandon(task)
    raise TimeoutError(f"no answer within {seconds:g} s")


def abandon(task: asyncio.Task[Any]) -> None:
    """Cancel a task and let it finish in the background (its exception is not an error)."""
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: not "never retrieved" in the log
