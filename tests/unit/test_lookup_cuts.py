"""Which failed lookups the writer reads again (``_again``): those whose connection was cut,
not those whose statement failed (merge review: a lookup cancelled by statement_timeout or
pg_cancel_backend was tried three times, tripling the load on a store already slow)."""

from __future__ import annotations

import psycopg
from eventsourcing import persistence
from psycopg import errors
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

from infra.store.writer import _was_cut


def _wrapped(cause: BaseException) -> persistence.OperationalError:
    error = persistence.OperationalError(str(cause))
    error.__cause__ = cause
    return error


def test_a_cut_connection_is_read_again() -> None:
    for cut in (
        psycopg.OperationalError("server closed the connection unexpectedly"),
        errors.AdminShutdown("terminating connection due to administrator command"),
        errors.IdleSessionTimeout("terminating connection due to idle-session timeout"),
        errors.ConnectionFailure("connection failure"),
    ):
        assert _was_cut(cut), cut
        assert _was_cut(_wrapped(cut)), cut


def test_a_statement_that_failed_is_not() -> None:
    for failed in (
        errors.QueryCanceled("canceling statement due to statement timeout"),
        errors.LockNotAvailable("could not obtain lock"),
        errors.DeadlockDetected("deadlock detected"),
        errors.SerializationFailure("could not serialize access"),
    ):
        assert not _was_cut(failed), failed
        assert not _was_cut(_wrapped(failed)), failed
    assert not _was_cut(persistence.OperationalError("no cause"))


def test_the_pools_own_refusals_are_not() -> None:
    """psycopg_pool's refusals have no SQLSTATE, as a cut socket has none: no connection
    to be had (the pool full, closed, timed out) is not one cut (final merge review)."""
    for refused in (PoolTimeout("timed out"), PoolClosed("closed"), TooManyRequests("full")):
        assert not _was_cut(refused), refused
        assert not _was_cut(_wrapped(refused)), refused
