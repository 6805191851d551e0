"""The session a leader holds its advisory lock on (the relay's, the sealer's).

A session-level advisory lock lasts as long as its session. A leader that is frozen
(SIGSTOP, a stalled host, a VM paused) keeps its TCP connection: the kernel answers for it,
keepalives and all, so the server never ended the session, and the hot standby stood by
for good while the log went unpublished and unsealed (HA review). So the leader's session
asks the server to end it after LEADER_IDLE_TIMEOUT of silence (``idle_session_timeout``,
and ``idle_in_transaction_session_timeout`` for a freeze inside a transaction), and, while
the process runs, a keepalive task sends ``SELECT 1`` every KEEPALIVE seconds whatever the
leader is waiting on (a LISTEN wait, the broker's confirm, a halted sealer's pause). A
frozen process sends nothing: within LEADER_IDLE_TIMEOUT its session ends, the lock with
it, and the standby (which polls for the lock every second) takes over. The frozen leader,
when it wakes, finds its connection gone and stands by in its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg

# Seconds of silence after which the server ends the session. The keepalive runs on the
# process's event loop, beside the projections' work in `cardinal serve`: a page of 20,000
# STAR ballots over 100 options held that loop 8.8 s, and a limit of 10 s ended live
# leaders' sessions (merge review mr2). A frozen leader gives way within this.
LEADER_IDLE_TIMEOUT = 30.0
KEEPALIVE = 2.0  # seconds between keepalive statements (well inside the timeout)


@dataclass(frozen=True)
class LeaderTimes:
    """A leader's idle limit and keepalive, when not the module's (tests: a leader of their
    own with a short limit, the process's other leaders untouched)."""

    idle_timeout: float
    keepalive: float


def _times(given: LeaderTimes | None) -> LeaderTimes:
    return given if given is not None else LeaderTimes(LEADER_IDLE_TIMEOUT, KEEPALIVE)


SET_TIMEOUTS = (
    "SELECT set_config('idle_session_timeout', %(limit)s, false), "
    "set_config('idle_in_transaction_session_timeout', %(limit)s, false)"
)


# A leader's session ended by the server for its silence: the process stopped (or its loop
# stalled) past LEADER_IDLE_TIMEOUT. Not the store's outage: the store answered at once.
SESSION_ENDED = (
    psycopg.errors.IdleSessionTimeout,
    psycopg.errors.IdleInTransactionSessionTimeout,
)


def said_ended(log: logging.Logger, role: str, times: LeaderTimes | None = None) -> None:
    """Say that ``role``'s session was ended for its silence (a standby may lead now)."""
    log.warning(
        "the %s's database session was ended after %.0fs without a word (was this process "
        "stopped?); a standby may lead now; reconnecting",
        role,
        _times(times).idle_timeout,
    )


@contextlib.asynccontextmanager
async def leader_session(
    conn: psycopg.AsyncConnection[Any], times: LeaderTimes | None = None
) -> AsyncIterator[None]:
    """Bound the silence of ``conn`` (an autocommit connection) and keep it talking while
    the block runs (``times``: LEADER_IDLE_TIMEOUT and KEEPALIVE unless given)."""
    times = _times(times)
    limit = f"{max(1, round(times.idle_timeout * 1000))}ms"
    await conn.execute(SET_TIMEOUTS, {"limit": limit})
    task = asyncio.ensure_future(_keep_alive(conn, times.keepalive))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # The stop's own cancel, come meanwhile, was suppressed with the keep-alive's: raised,
        # or the leader would carry on.
        if (current := asyncio.current_task()) is not None and current.cancelling():
            raise asyncio.CancelledError


async def _keep_alive(conn: psycopg.AsyncConnection[Any], every: float) -> None:
    """``SELECT 1`` every ``every`` seconds (queued behind the leader's own statements:
    the connection serialises them) until the connection is lost."""
    while True:
        await asyncio.sleep(every)
        if conn.closed or conn.broken:
            return  # the leader learns of it at its own next statement
        try:
            await conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return
        except psycopg.Error:
            continue  # (inside a transaction that failed: the leader rolls it back)
