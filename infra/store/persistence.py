"""eventsourcing's PostgreSQL persistence, with our options on its connections.

eventsourcing builds its pool from POSTGRES_* settings alone, and opens it while it builds
the recorder, so options cannot be added afterwards. Its pool serves the lookups on a
ballot's path (a revision's, a withdrawal's, a retry's): they get the TCP keepalives and
send timeout of every connection a ballot waits on (names.ALIVE), so a connection cut
without a reset fails in seconds instead of holding a thread for the kernel's two hours.
"""

from __future__ import annotations

from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment

from infra.store.names import ALIVE


class AliveFactory(PostgresFactory):
    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        kwargs = self.datastore.pool.kwargs
        if isinstance(kwargs, dict):  # (before the pool opens: the recorder opens it)
            kwargs.update(ALIVE)
