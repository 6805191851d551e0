"""The connections ballots wait on fail in seconds when cut without a reset, the lookups'
too (review helper-42: eventsourcing's own pool had no keepalives)."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

from infra.store import open_application
from infra.store.names import ALIVE


def test_the_event_stores_pool_connections_carry_the_keepalives(database_url: str) -> None:
    app = open_application(database_url)
    try:
        with app.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            options = conninfo_to_dict(conn.info.dsn)
        for name, value in ALIVE.items():
            assert str(options.get(name)) == str(value), name
    finally:
        app.close()
