"""Test databases: each test run creates its own, so runs never see each other's data."""

from __future__ import annotations

import os
import uuid

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

# The PostgreSQL server the tests use (trust auth on this machine and in CI).
SERVER_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/postgres")


def create_database(prefix: str = "cardinal_test") -> str:
    """Create an empty database and return its URL. Fails loudly if PostgreSQL is down."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as error:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {SERVER_URL} ({error}); start it with "
            "`make services` (the tests need a real database and never skip)"
        ) from error
    return make_conninfo(SERVER_URL, dbname=name)


def drop_database(url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


# The session holding a one-key advisory lock (objsubid 1) in this database. pg_locks is
# the whole server's: without the database, another test's relay or sealer (every stack
# takes the same keys, each in its own database) answered for this one's, and a takeover
# went unseen for as long as the other one led (CI, stop 33).
LOCK_HOLDER = """
SELECT pid FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((classid::bigint << 32) | objid::bigint) = %s
"""


def lock_holder(url: str, key: int) -> int | None:
    """The backend pid holding the advisory lock ``key`` in ``url``'s database, if any."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(LOCK_HOLDER, (key,)).fetchall()
    assert len(rows) <= 1, f"advisory lock {key:#x} held twice in one database: {rows}"
    return None if not rows else int(rows[0][0])
