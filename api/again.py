"""A read whose connection the server had hung up on is read again, once, on another.

The reads pool lends no connection the server has hung up on, seen without a round trip
(infra/store/reconnect.py, ``hung_up``), but a goodbye still on its way is not seen: a
backend terminated a few ms before its connection was lent (``pg_terminate_backend``, a
pooler reaping idle sessions, a restart) looks alive, and the read on it fails with the
server's FATAL, or with the connection closed, before anything of it was answered. Such a
read was answered 503 on a healthy store (38 of 50 results reads sent right after every
idle backend of the pool was terminated). A read is idempotent: it is read again at once,
once, while the store is not marked down, on connections the pool tests with a round trip
before it lends them (``verified``: their backends, terminated together, may have their
goodbyes on the way too; the test costs only such a second read); only the error of a
connection the server hung up on (not a statement refused or cancelled, not a pool with
no connection to lend, whose wait a second try would double). Writes are never read
again: only GET and HEAD endpoints are wrapped (``read_again``; a stream's endpoint for
what it reads before it returns, the election and whether the reader may see it),
readiness's probe, and a stream's first read (api/streams.py, made in its response once
its endpoint returned).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg import errors
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests
from starlette.requests import Request
from starlette.responses import Response

from api import context
from infra.store.reconnect import verified

log = logging.getLogger(__name__)
T = TypeVar("T")
READS = frozenset({"GET", "HEAD"})
# The server's goodbyes: an administrator's or a shutdown's (57P01), a crash's (57P02),
# a session idle past the server's idle_session_timeout (57P05).
GOODBYES = (errors.AdminShutdown, errors.CrashShutdown, errors.IdleSessionTimeout)
# The pool's own refusals (no SQLSTATE, as a connection found closed has none): none to
# lend within the wait, the pool closed (the process stopping), too many waiting.
REFUSALS = (PoolTimeout, PoolClosed, TooManyRequests)


def hung_up_on(error: BaseException) -> bool:
    """Whether a database error says the server hung up on the connection (its FATAL, or
    the connection found closed: an OperationalError with no SQLSTATE), rather than that
    a statement was refused, cancelled or timed out, or that the pool lent none (none to
    lend in time, closed, too many waiting)."""
    if isinstance(error, REFUSALS) or not isinstance(error, psycopg.OperationalError):
        return False
    return isinstance(error, GOODBYES) or error.sqlstate is None


async def once_more(read: Callable[[], Awaitable[T]], store_up: Callable[[], bool]) -> T:
    """``read()``, and once more if the server had hung up on its connection (while the
    store is up: marked down, a second read would only wait for the pool in vain)."""
    try:
        return await read()
    except psycopg.OperationalError as error:
        if not hung_up_on(error) or not store_up():
            raise
        log.info(
            "a read's connection was closed by the server (%s): read again on another",
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
        )
    with verified():  # (each connection lent for it tested first: reconnect.py)
        return await read()


def read_again(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """A GET endpoint, read again once (``once_more``) where the server had hung up on a
    connection it read on; its answer is not begun before the endpoint returns."""

    @functools.wraps(endpoint)
    async def again(request: Request) -> Response:
        if request.method not in READS:
            return await endpoint(request)
        return await once_more(
            lambda: endpoint(request), lambda: context.services(request).writer.health.up
        )

    return again
