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
its session last spoke, as the server counts it (the server's limit runs only while the
session is idle): set up, a keepalive answered, or a statement in flight on it (the leader's
own or a keepalive, sampled every SAMPLE seconds: a statement the server is running, or one
a hung server never answered, is no silence); and when it was found lost (by the keepalive,
or by the leader's error). Against the server's count, a session's silence is overstated
by a sample or two (0.4 s at most: the last sample that saw the leader's statement in flight
may come that long before its answer) against the 30 s limit. A loss without a sqlstate, the
session's connection broken or closed, after a silence of the idle limit or more (less
TOLERANCE), or one the keepalive met as the server's own ``IdleSessionTimeout``, is raised as
``SilenceEnded``, one of SESSION_ENDED. A loss sooner (the server down, restarting or hung,
the backend terminated) is raised as it came: an outage.

The samples run on the loop, so a stalled loop or a stopped process is silent (its samples
cannot run), and a sample come late (the loop stalled meanwhile) counts the session as
speaking up to the sample before the stall only: a statement in flight across the stall may
have been answered, and the session idle, long before the loop read the answer. What stays
ambiguous: a loss met during or right after a stall near the limit, the session idle for a
while before it, is said as the session's end even when the server went down meanwhile; and
a host suspended (CLOCK_MONOTONIC, the loop's clock, does not count a suspend) looks short
of the limit, so its session's end is said as an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq

# Seconds of silence after which the server ends the session. The keepalive runs on the
# process's event loop, beside the projections' work in `cardinal serve`: a page of 20,000
# STAR ballots over 100 options held that loop 8.8 s, and a limit of 10 s ended live
# leaders' sessions (merge review mr2). A frozen leader gives way within this.
LEADER_IDLE_TIMEOUT = 30.0
KEEPALIVE = 2.0  # seconds between keepalive statements (well inside the timeout)
SAMPLE = 0.2  # seconds between looks for a statement in flight on a leader's session


@dataclass(frozen=True)
class LeaderTimes:
    """A leader's idle limit and keepalive, when not the module's (tests: a leader of their
    own with a short limit, the process's other leaders untouched). ``keepalive`` None:
    no keepalive (the leader's own statements alone keep its session)."""

    idle_timeout: float
    keepalive: float | None

    def __post_init__(self) -> None:
        # A keepalive at or above the idle limit (less its allowance) left every session
        # silent for the limit between keepalives: every loss was said as the session's end.
        if not self.idle_timeout > 0:
            raise ValueError(f"a leader's idle limit must be positive, not {self.idle_timeout}")
        if self.keepalive is not None and not 0 < self.keepalive < self.idle_timeout / 2:
            raise ValueError(
                f"a leader's keepalive ({self.keepalive}s) must be positive and under half its "
                f"idle limit ({self.idle_timeout}s), or None"
            )


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
        if not (conn.broken or conn.closed):
            raise  # not this session's loss (another connection's, in the block)
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


async def _keep_alive(
    conn: psycopg.AsyncConnection[Any], every: float | None, silence: _Silence
) -> None:
    """Keep ``conn`` talking (``SELECT 1`` every ``every`` seconds, unless None) and note in
    ``silence`` when it spoke and when it was found lost, until the connection is lost."""
    async with asyncio.TaskGroup() as parts:  # (one failing: the other cancelled, awaited)
        parts.create_task(_sample(conn, silence))
        if every is not None:
            parts.create_task(_speak(conn, every, silence))


async def _sample(conn: psycopg.AsyncConnection[Any], silence: _Silence) -> None:
    """Every SAMPLE seconds, a statement in flight on ``conn`` (sent, its answer not yet read:
    the server running it, or hung) counts as the session speaking, as the server counts it.
    A sample come late (the loop stalled) counts only up to the sample before: the answer
    may have come, and the session idled, at the stall's start."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while not (conn.closed or conn.broken):
        await asyncio.sleep(SAMPLE)
        now = loop.time()
        if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            silence.spoke = max(silence.spoke, now if now - last <= 2 * SAMPLE else last)
        last = now


async def _speak(conn: psycopg.AsyncConnection[Any], every: float, silence: _Silence) -> None:
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
