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

The server says why it ended the session (``IdleSessionTimeout``), but a leader waiting for
notifications, or reading at any point where psycopg does not parse that last word, gets a
bare ``OperationalError`` ("server closed the connection unexpectedly", no sqlstate): said
as the store's outage ("cannot reach PostgreSQL ...", then "reachable again"), when the store
had answered at once and this process was the silent one. So ``leader_session`` notes when
its session last spoke (set up, or a keepalive answered: the leader's own statements are not
counted, so a live session's silence is overstated by a keepalive's interval and its wait
behind the leader's, 3 s at most against the 30 s limit) and when it was found lost (by the
keepalive, or by the leader's error); a loss without a sqlstate after a silence of the idle
limit or more (less TOLERANCE), or one the keepalive met as the server's own
``IdleSessionTimeout``, is raised as ``SilenceEnded``, one of SESSION_ENDED. A loss sooner
(the server down or restarting, the backend terminated) is raised as it came: an outage.
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


class SilenceEnded(psycopg.OperationalError):
    """A leader's connection lost, without the server's reason, after the session had been
    silent for its idle limit (or the keepalive met the server's reason and the leader then
    a closed connection): the server ended it for that silence (see above)."""


# A leader's session ended by the server for its silence: the process stopped (or its loop
# stalled) past LEADER_IDLE_TIMEOUT. Not the store's outage: the store answered at once.
SESSION_ENDED = (
    psycopg.errors.IdleSessionTimeout,
    psycopg.errors.IdleInTransactionSessionTimeout,
    SilenceEnded,
)

# How much shorter than the idle limit a silence may be and still be taken for the session's
# end: the session's last word is noted when its answer arrives, a round trip after the
# server began counting.
TOLERANCE = 0.1  # of the idle limit
MAX_TOLERANCE = 1.0  # seconds


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
    loop = asyncio.get_running_loop()
    silence = _Silence(spoke=loop.time())
    task = asyncio.ensure_future(_keep_alive(conn, times.keepalive, silence))
    try:
        yield
    except psycopg.OperationalError as error:
        if error.sqlstate is not None or isinstance(error, SESSION_ENDED):
            raise  # the server's own word (a shutdown, a termination, the idle limit)
        silent = silence.lost_at(loop.time()) - silence.spoke
        allowance = min(MAX_TOLERANCE, TOLERANCE * times.idle_timeout)
        if silent < times.idle_timeout - allowance and not silence.ended:
            raise  # lost while it spoke: the store's outage
        raise SilenceEnded(
            f"the session was lost after {silent:.1f}s of silence (idle limit "
            f"{times.idle_timeout:g}s): {error}"
        ) from error
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # The stop's own cancel, come meanwhile, was suppressed with the keep-alive's: raised,
        # or the leader would carry on.
        if (current := asyncio.current_task()) is not None and current.cancelling():
            raise asyncio.CancelledError


@dataclass
class _Silence:
    """When a leader's session last spoke (loop time: a stalled loop or a stopped process
    is silent), and when its loss was first found, if the keepalive found it."""

    spoke: float
    lost: float | None = None
    ended: bool = False  # the keepalive met the server's word that it ended the session

    def lost_at(self, now: float) -> float:
        """When the session was found lost: by the keepalive, or ``now`` (the leader's own
        error; a leader busy elsewhere, say on the broker's confirm, may learn of it long
        after the keepalive did, and that wait was no silence of the session's)."""
        return now if self.lost is None else min(self.lost, now)


async def _keep_alive(conn: psycopg.AsyncConnection[Any], every: float, silence: _Silence) -> None:
    """``SELECT 1`` every ``every`` seconds (queued behind the leader's own statements:
    the connection serialises them) until the connection is lost; notes in ``silence``
    when the session last answered, and when it was found lost."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(every)
        if conn.closed or conn.broken:
            silence.lost = loop.time()
            return  # the leader learns of it at its own next statement
        try:
            await conn.execute("SELECT 1")
        except psycopg.OperationalError as error:
            silence.lost = loop.time()
            silence.ended = isinstance(error, SESSION_ENDED)
            return
        except psycopg.Error:
            silence.spoke = loop.time()  # (it answered: the statement reached the server)
            continue  # (inside a transaction that failed: the leader rolls it back)
        silence.spoke = loop.time()
