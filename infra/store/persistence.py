"""eventsourcing's PostgreSQL persistence, with our options on its connections.

eventsourcing builds its pool from POSTGRES_* settings alone, and opens it while it builds
the recorder, so options cannot be added afterwards. Its pool serves the lookups on a
ballot's path (a revision's, a withdrawal's, a retry's): they get the TCP keepalives and
send timeout of every connection a ballot waits on (names.ALIVE), so a connection cut
without a reset fails in seconds instead of holding a thread for the kernel's two hours.
And it reconnects after an outage at least every 2 s, not after psycopg_pool's doubling
waits (infra/store/reconnect.py): its pool is made a ReconnectingStorePool, the same class
with that one method more, before it opens.
"""

from __future__ import annotations

from eventsourcing.postgres import ConnectionPool as StoreConnectionPool
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment

from infra.store.names import ALIVE
from infra.store.reconnect import ReconnectingStorePool


class AliveFactory(PostgresFactory):
    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        if type(pool) is StoreConnectionPool:  # (eventsourcing builds it; nothing to pass on)
            pool.__class__ = ReconnectingStorePool
        kwargs = pool.kwargs
        if isinstance(kwargs, dict):  # (before the pool opens: the recorder opens it)
            kwargs.update(ALIVE)
