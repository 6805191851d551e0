"""Our connection pools try to reconnect at least every RECONNECT_AT_MOST seconds, and lend
no connection the server has hung up on (``hung_up``: seen without a round trip).

psycopg_pool replaces a lost connection with attempts 1, 2, 4, 8, 16, 32 ... s apart (up to
its reconnect_timeout, 5 minutes), and offers no setting for the longest wait: after a 75 s
outage the reads pool (results, readiness) and eventsourcing's pool (a retry's lookup) next
tried 44 s after PostgreSQL was back, and answered 503 until then. Each attempt of ours is
one connect (refused at once while the server is down, or given up after connect_timeout's
2 s), so trying every RECONNECT_AT_MOST seconds costs the server nothing worth saving.

The pools keep their own schedule; only the attempt they start a reconnection with (the
one ``_add_connection`` builds when it is given none, and passes on to each retry) is ours.
tests/integration/test_store_outage.py holds psycopg_pool to that (a pool upgrade that
changed it fails there, not in production).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import psycopg
from eventsourcing.postgres import ConnectionPool as StoreConnectionPool
from psycopg import pq
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

RECONNECT_AT_MOST = 2.0


class Verified:
    """One read read again, while it lasts (``over`` once it ended)."""

    over = False


# Set while a read whose connection the server had hung up on is read again (api/again.py):
# every connection the reads pool lends meanwhile is tested with a round trip first. The
# goodbyes of backends terminated together (an administrator's pg_terminate_backend of a
# pool's idle sessions, a pooler's sweep) arrive together: the next idle connection, lent
# a moment after the first failed, had its goodbye on the way too (21 of 50 reads read
# again that way were 503, 0 with the test).
# Scoped to that second read (``verified``): the tasks it starts and awaits (a shared turn,
# a deadline's) inherit it, and a task started meanwhile that outlives it (the positions'
# fallback poll, started by a read that waited for a position) tests no lend after it.
verifying: ContextVar[Verified | None] = ContextVar("verifying", default=None)


@contextlib.contextmanager
def verified() -> Iterator[None]:
    """Every connection the reads pool lends within this block, in this task or in one it
    starts, tested with a round trip first; none lent after it ends, to any task."""
    read = Verified()
    token = verifying.set(read)
    try:
        yield
    finally:
        read.over = True
        verifying.reset(token)


def _verifying() -> bool:
    read = verifying.get()
    return read is not None and not read.over


class CappedAttempt(AttemptWithBackoff):
    """psycopg_pool's backoff, its waits never longer than RECONNECT_AT_MOST."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_AT_MOST)


def _attempt(pool: Any, attempt: AttemptWithBackoff | None) -> AttemptWithBackoff:
    return attempt or CappedAttempt(timeout=pool.reconnect_timeout)


# A lend's test gets at least this long: one that got its connection at the end of its wait
# had a few ms left, a busy loop timed the test out, and a healthy connection was closed
# and the read refused (merge review of 2edad00: 3 of 20 such lends against 1 untested).
TEST_AT_LEAST = 0.05


class ReconnectingPool(AsyncConnectionPool):
    """An AsyncConnectionPool (the reads pool, the projections') that reconnects at least
    every RECONNECT_AT_MOST seconds and lends no connection the server has hung up on
    (``hung_up``: no round trip), as ``ReconnectingStorePool`` does for the lookups.

    The reads pool used to test each connection with an empty query as it lent it (a round
    trip on every results read and readiness probe), and psycopg_pool waits about 1 s after
    each one that fails its test: after a restart every idle connection was broken, and the
    first read after it waited its READ_WAIT (0.9 s) into a 503 while the whole pool was
    tested (``check()``, swept in a task when the first failed). A connection found hung up
    is closed and given back (the pool replaces it, at once) and the next one is taken,
    with no wait between them. (A worker of the projections' pool that waits in it through
    an outage is told so by its pool's shorter wait, PROJECTIONS_WAIT in bootstrap.)"""

    async def _getconn_unchecked(self, timeout: float) -> Any:  # noqa: ASYNC109 (its own)
        deadline = time.monotonic() + timeout
        while True:
            conn = await super()._getconn_unchecked(deadline - time.monotonic())
            try:
                if not hung_up(conn) and (
                    not _verifying()
                    or await _answers(conn, max(TEST_AT_LEAST, deadline - time.monotonic()))
                ):
                    return conn
                await conn.close()
            except BaseException:
                # Cancelled as it tested or closed it (a request's deadline, readiness's 2 s,
                # an abandoned request): given back, as psycopg_pool's own check loop does,
                # else it was lost (out of the pool, counted in it: after 8 such on a store
                # that hung, every read was a 503). Shielded: a second cancel loses it not.
                await asyncio.shield(self._give_back(conn))
                raise
            await self._putconn(conn, from_getconn=True)  # (closed: replaced, not kept)

    async def _give_back(self, conn: Any) -> None:
        if conn.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            await conn.close()  # (its test under way, unanswered: replaced, not kept)
        await self._putconn(conn, from_getconn=True)

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        await super()._add_connection(_attempt(self, attempt), growing)


async def _answers(conn: psycopg.AsyncConnection[Any], within: float) -> bool:
    """Whether the connection answers a round trip (an empty query) within ``within``
    seconds, the wait left to the one who asked for it: a store that hangs does not hold a
    lend past it. One that did not answer is left mid-query, to be closed (not kept).

    Not ``conn.execute``: psycopg answers a cancel of a query under way (this timeout's, a
    request's) by asking the server to cancel it and waiting for that, 5 s and 5 s more,
    on a store that hangs: a lend of 0.9 s took 10.5 s."""
    pgconn = conn.pgconn
    try:
        async with asyncio.timeout(within):  # (not wait_for: its cancel can be lost, gh-86296)
            pgconn.send_query(b"")
            while pgconn.flush():  # (nonblocking, as psycopg's async connections are)
                await _socket_ready(pgconn.socket, writing=True)
            pgconn.consume_input()
            while pgconn.is_busy():
                await _socket_ready(pgconn.socket, writing=False)
                pgconn.consume_input()
            answered = True
            while (result := pgconn.get_result()) is not None:
                answered = answered and result.status == pq.ExecStatus.EMPTY_QUERY
    except (psycopg.Error, OSError, TimeoutError):
        return False
    return answered


async def _socket_ready(socket: int, *, writing: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    (loop.add_writer if writing else loop.add_reader)(socket, ready.set_result, None)
    try:
        await ready
    finally:
        (loop.remove_writer if writing else loop.remove_reader)(socket)


class ReconnectingStorePool(StoreConnectionPool[Any]):
    """eventsourcing's pool (the writer's lookups: a revision's, a withdrawal's, a retry's
    receipt), reconnecting at least every RECONNECT_AT_MOST seconds, that lends no
    connection the server has hung up on (``hung_up``: no round trip).

    It used to test each connection before lending it (eventsourcing's pre-ping, a round
    trip on every lookup), and psycopg_pool waits 1 s, then 2 s, after each one that fails
    its test: after a restart while the process idled (nothing marked the store down, so
    nothing swept the pool) every idle connection was broken, and the first lookups waited
    LOOKUP_WAIT's 3 s into a 503 on a healthy store (review D2). A connection found hung up
    is closed and given back (the pool replaces it, at once) and the next one is taken,
    with no wait between them."""

    def _getconn_unchecked(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            conn = super()._getconn_unchecked(deadline - time.monotonic())
            if not hung_up(conn):
                return conn
            conn.close()
            self._putconn(conn, from_getconn=True)  # (closed: replaced, not kept)

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(_attempt(self, attempt), growing)


def hung_up(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the server has hung up on this idle connection, seen without a round trip:
    an idle connection is sent nothing (no LISTEN on these), so a socket with something to
    read holds the server's goodbye (a shutdown's or a crash's FATAL, then the end of the
    stream). What is there is read: a closed stream, or a broken connection, is hung up;
    anything else (a stray notice) was read and the connection is kept. A connection cut
    without a reset reads as alive here, as it did to a test query that waited for its
    answer: the keepalives see it (infra/store/names.py). Nor is a goodbye still on its
    way seen (a backend terminated a few ms before): a read that finds its connection cut
    is tried again (eventsourcing's own; the writer's, ``GroupCommitWriter._again``; the
    API's reads, api/again.py, ``verified``)."""
    pgconn = conn.pgconn
    for _ in range(3):  # (a goodbye, then the end of the stream: two reads)
        if conn.closed or conn.broken:
            return True
        try:
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN)
            if not poller.poll(0):
                return False
            pgconn.consume_input()
        except (psycopg.OperationalError, OSError, ValueError):
            return True
    return True
