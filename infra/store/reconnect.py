"""Our connection pools try to reconnect at least every RECONNECT_AT_MOST seconds.

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

from typing import Any

from eventsourcing.postgres import ConnectionPool as StoreConnectionPool
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

RECONNECT_AT_MOST = 2.0


class CappedAttempt(AttemptWithBackoff):
    """psycopg_pool's backoff, its waits never longer than RECONNECT_AT_MOST."""

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_AT_MOST)


def _attempt(pool: Any, attempt: AttemptWithBackoff | None) -> AttemptWithBackoff:
    return attempt or CappedAttempt(timeout=pool.reconnect_timeout)


class ReconnectingPool(AsyncConnectionPool):
    """An AsyncConnectionPool that reconnects at least every RECONNECT_AT_MOST seconds."""

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        await super()._add_connection(_attempt(self, attempt), growing)


class ReconnectingStorePool(StoreConnectionPool[Any]):
    """eventsourcing's pool, reconnecting at least every RECONNECT_AT_MOST seconds."""

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(_attempt(self, attempt), growing)
