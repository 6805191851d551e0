"""Migrations: applied once each, in order, under a lock; readiness reflects them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
import psycopg
import pytest

from infra.store.migrations import MigrationError, discover, migrate
from tests.databases import create_database, drop_database
from tests.integration.client import assert_problem
from tests.servers import running_api, settings_for


def _cardinal(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _ledger(database_url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()


async def test_ready_is_503_before_migrations_and_200_after(fresh_database_url: str) -> None:
    async with (
        running_api(settings_for(fresh_database_url)) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        before = await http.get("/api/ready")
        problem = assert_problem(before, 503, "migrations pending: 0001_event_store.sql")
        assert problem["checks"]["database"] == "ok"

        first = _cardinal("migrate", database_url=fresh_database_url)
        assert first.returncode == 0, first.stderr
        assert "applied 0001_event_store.sql" in first.stderr
        ledger = _ledger(fresh_database_url)
        assert [row[0] for row in ledger] == [m.version for m in discover()]

        second = _cardinal("migrate", database_url=fresh_database_url)
        assert second.returncode == 0, second.stderr
        assert "up to date; nothing to apply" in second.stderr
        assert _ledger(fresh_database_url) == ledger  # the second run changed nothing

        after = await http.get("/api/ready")
        assert after.status_code == 200, after.text
        assert after.json()["checks"] == {"database": "ok", "migrations": "ok"}


def test_an_applied_migration_that_was_edited_is_refused(fresh_database_url: str) -> None:
    migrate(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(MigrationError, match=r"0001_event_store\.sql was edited after it was"):
        migrate(fresh_database_url)
    refused = _cardinal("migrate", database_url=fresh_database_url)
    assert refused.returncode != 0
    assert "restore the file and put the change in a new numbered migration" in refused.stderr


def test_concurrent_migrators_apply_each_migration_once() -> None:
    url = create_database("cardinal_race")
    try:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                migrate(url)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert [row[0] for row in _ledger(url)] == [m.version for m in discover()]
    finally:
        drop_database(url)


def test_stored_events_are_immutable(fresh_database_url: str) -> None:
    migrate(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute(
            "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
            "VALUES (gen_random_uuid(), 1, 'test:Probe', '{}')"
        )
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable"):
            conn.execute("UPDATE cardinal_events SET state = '{}' WHERE topic = 'test:Probe'")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="immutable"):
            conn.execute("DELETE FROM cardinal_events WHERE topic = 'test:Probe'")
        conn.rollback()
