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
