"""Migrations: applied once each, in order, under a lock; readiness reflects them."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from infra.audit import sealer as sealer_module
from infra.audit.chain import filed_election
from infra.audit.sealer import Sealer
from infra.audit.sources import verify_database
from infra.audit.verifier import Discrepancy
from infra.store.log import event_type
from infra.store.migrations import CREATE_LEDGER, Migration, MigrationError, discover, migrate
from tests.databases import create_database, drop_database
from tests.integration.client import assert_problem
from tests.integration.test_audit_verify import KEYS, SIGNER, catch_up_every_projection
from tests.integration.test_projection_runtime import _fill
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

        # The election feed loads the log once its table exists (it retries each second).
        deadline = asyncio.get_running_loop().time() + 15
        while (after := await http.get("/api/ready")).status_code != 200:
            assert after.json()["checks"]["migrations"] == "ok", after.text
            assert asyncio.get_running_loop().time() < deadline, after.text
            await asyncio.sleep(0.1)
        assert after.json()["checks"] == {"database": "ok", "migrations": "ok", "elections": "ok"}


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


def test_chain_links_learn_their_elections_from_election_streams(fresh_database_url: str) -> None:
    """0009 moves election_streams onto the chain: every entry of a stream mapped to an
    election (a ballot's revision too) names that election, others none."""
    before = [m for m in discover() if m.version < 9]
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(CREATE_LEDGER)
        for migration in before:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )
        election, ballot, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        entries = [
            (election, 1, "domain.election:Election.Created"),
            (ballot, 1, "domain.ballot:Ballot.Cast"),
            (ballot, 2, "domain.ballot:Ballot.Revised"),
            (other, 1, "test:Unmapped"),
        ]
        for stream, version, topic in entries:
            conn.execute(
                "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
                "VALUES (%s, %s, %s, '{}')",
                (stream, version, topic),
            )
        conn.execute(
            "INSERT INTO audit_chain (position, entry_hash, hash) "
            "SELECT notification_id, sha256(notification_id::text::bytea), '\\x00' "
            "FROM cardinal_events"
        )
        conn.execute(
            "INSERT INTO election_streams VALUES (%s, %s), (%s, %s)",
            (election, election, ballot, election),
        )
    assert migrate(fresh_database_url) == [m.filename for m in discover() if m.version >= 9]
    with psycopg.connect(fresh_database_url) as conn:
        named = conn.execute(
            "SELECT e.originator_id, e.originator_version, c.election_id FROM audit_chain c "
            "JOIN cardinal_events e ON e.notification_id = c.position ORDER BY c.position"
        ).fetchall()
        left = conn.execute("SELECT to_regclass('election_streams')").fetchone()
    assert named == [
        (election, 1, election),
        (ballot, 1, election),
        (ballot, 2, election),
        (other, 1, None),
    ]
    assert left == (None,)


def _apply(database_url: str, migrations: list[Migration]) -> None:
    """Apply these migrations as `migrate` would, as a release that stopped there did."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(CREATE_LEDGER)
        for migration in migrations:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum),
            )


async def test_a_database_a_newer_release_migrated_is_refused_and_not_ready(
    fresh_database_url: str,
) -> None:
    """A rollback onto a newer schema: `migrate` said "up to date" and /api/ready "ok" while
    routes failed (review helper-40). Both now name the migration this release lacks."""
    migrate(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) "
            "VALUES (9999, 'from_the_future', 'x')"
        )
    said = (
        "the database has migration 9999 (from_the_future) that this version does not know: "
        "it was upgraded by a newer release; run that release, or, to come back to this one, "
        "restore the pg_dump taken before the upgrade into an empty database (there are no "
        "down-migrations: docs/upgrading.md, the way back)"
    )
    refused = _cardinal("migrate", database_url=fresh_database_url)
    assert refused.returncode == 2, refused.stderr
    assert said in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr
    async with (
        running_api(settings_for(fresh_database_url), projections=()) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        problem = assert_problem(await http.get("/api/ready"), 503, said)
        assert problem["checks"]["database"] == "ok"


def test_a_migration_whose_sql_fails_names_its_file_and_applies_nothing(
    fresh_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It was a raw traceback that named no file (review helper-40)."""
    from infra.cli import main
    from infra.store import migrations

    shipped = discover()
    broken = Migration(9999, "broken", "CREATE TABLE half_done (id int);\nSELEC 1;\n")
    monkeypatch.setattr(migrations, "discover", lambda: [*shipped, broken])
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    assert main(["migrate"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "cannot use this database: migration 9999_broken.sql failed, and nothing of it was "
        'applied: PostgreSQL said: syntax error at or near "SELEC"'
    ) in err
    assert "Traceback" not in err
    assert [row[0] for row in _ledger(fresh_database_url)] == [m.version for m in shipped]
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone() == (None,)


def test_operator_commands_refuse_a_database_that_needs_migrations(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """`projections` and `rebuild` applied pending migrations on the way (review helper-40):
    reading commands leave the schema to `cardinal migrate`, and say so."""
    shipped = discover()
    _apply(fresh_database_url, shipped[:-2])
    ledger = _ledger(fresh_database_url)
    first, last = shipped[-2].filename[:4], shipped[-1].filename[:4]
    said = f"the database needs migrations {first}..{last}: run `cardinal migrate`"
    for command in (
        ["projections"],
        ["rebuild", "tally"],
        ["audit", "export", "--output", str(tmp_path / "export.ndjson")],
        ["audit", "verify"],
    ):
        refused = _cardinal(*command, database_url=fresh_database_url)
        assert refused.returncode == 2, (command, refused.stdout + refused.stderr)
        assert said in " ".join(refused.stderr.split()), command
        assert "Traceback" not in refused.stderr
    assert _ledger(fresh_database_url) == ledger  # nothing was applied on the way
    assert not (tmp_path / "export.ndjson").exists()


# A sealer of a release before 0009 (ab7cbf3:infra/audit/sealer.py): it leaves election_id out.
OLD_INSERT_LINKS = """
INSERT INTO audit_chain (position, entry_hash, hash)
SELECT p, substr(%(entries)s::bytea, 32 * i::int - 31, 32),
       substr(%(hashes)s::bytea, 32 * i::int - 31, 32)
FROM unnest(%(positions)s::bigint[]) WITH ORDINALITY AS t(p, i)
"""


def _filed(database_url: str) -> list[tuple[int, object, object]]:
    """Each link's position, the election it is filed under, and the one its entry names."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT c.position, c.election_id, uuid_send(e.originator_id), e.topic, e.state "
            "FROM audit_chain c JOIN cardinal_events e ON e.notification_id = c.position "
            "ORDER BY c.position"
        ).fetchall()
    return [
        (int(p), filed, filed_election(event_type(t), bytes(s), bytes(state)))
        for p, filed, s, t, state in rows
    ]


async def test_links_an_old_sealer_left_unfiled_are_mended_and_it_is_refused_after(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old sealer still running while 0009 was applied (the old relay beside compose's new
    `migrate`) committed links with election_id NULL: left out of their election's audit
    read, and reported by `audit verify` as altered, for good (review of the upgrade from
    ab7cbf3). 0011 files them where they belong, and refuses such a sealer's links after."""
    url = fresh_database_url
    _apply(url, [m for m in discover() if m.version <= 10])
    election = await _fill(url, random.Random(11), ballots=80)
    monkeypatch.setattr(sealer_module, "INSERT_LINKS", OLD_INSERT_LINKS)
    monkeypatch.setattr(sealer_module, "RECORD_KEY", "SELECT %s, %s, %s")  # (nor audit_keys)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        sealed = await Sealer(url, SIGNER, page_size=32).seal_pending(conn)
    filed = _filed(url)
    assert len(filed) == sealed > 80
    assert {row[1] for row in filed} == {None}
    assert {row[2] for row in filed} == {election}
    await catch_up_every_projection(url)
    with pytest.raises(Discrepancy, match="files this entry under election None"):
        await verify_database(url, public_keys=KEYS, election=None, validate=True)

    assert migrate(url)[0] == "0011_chain_elections_required.sql"
    assert [(p, named) for p, _, named in filed] == [(p, f) for p, f, _ in _filed(url)]
    await verify_database(url, public_keys=KEYS, election=None, validate=True)
    with psycopg.connect(url) as conn:
        read = conn.execute(
            "SELECT count(*) FROM audit_chain WHERE election_id = %s", (election,)
        ).fetchone()
    assert read == (sealed,)  # the election's audit read holds every entry

    # The old sealer's next page is refused whole (it retries, writing nothing); this
    # release's sealer seals it, an entry of no election filed under none (NULL given).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
            "VALUES (gen_random_uuid(), 1, 'test:Probe', '{}'), (%s, 1, "
            "'domain.ballot:Ballot.Cast', %s)",
            (uuid.uuid4(), f'{{"election_id":"{election}"}}'.encode()),
        )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.NotNullViolation, match="stop every process"):
            await Sealer(url, SIGNER).seal_pending(conn)
        assert len(_filed(url)) == sealed
        monkeypatch.undo()  # this release's sealer
        assert await Sealer(url, SIGNER).seal_pending(conn) == 2
    assert [row[1] for row in _filed(url)[-2:]] == [None, election]


def test_the_mending_files_only_what_names_an_election(fresh_database_url: str) -> None:
    """0011 reads a ballot's election as the sealer does (filed_election), and one naming
    none, or not legibly, stays unfiled rather than failing the migration."""
    _apply(fresh_database_url, [m for m in discover() if m.version <= 10])
    election, other = uuid.uuid4(), uuid.uuid4()
    states = [
        ("domain.election:Election.Opened", election, b"{}"),
        ("domain.ballot:Ballot.Revised", other, f'{{"election_id":"{election}"}}'.encode()),
        (
            "domain.ballot:Ballot.Withdrawn",
            other,
            f'{{"election_id":"{{{election.hex}}}"}}'.encode(),
        ),
        ("domain.ballot:Ballot.Cast", other, f'{{"election_id":"urn:uuid:{election}"}}'.encode()),
        ("domain.ballot:Ballot.Cast", other, b'{"election_id": 5}'),
        ("domain.ballot:Ballot.Cast", other, b'{"election_id": "x"}'),
        ("domain.ballot:Ballot.Cast", other, b"[]"),
        ("domain.ballot:Ballot.Cast", other, b"\xff{"),
        ("domain.ballot:Ballot.Cast", other, b'{"election_id": "\\u0000"}'),
        ("test:Unmapped", other, f'{{"election_id":"{election}"}}'.encode()),
    ]
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        for version, (topic, stream, state) in enumerate(states, start=1):
            conn.execute(
                "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
                "VALUES (%s, %s, %s, %s)",
                (stream, version, topic, state),
            )
        conn.execute(
            "INSERT INTO audit_chain (position, entry_hash, hash) "
            "SELECT notification_id, sha256(notification_id::text::bytea), '\\x00' "
            "FROM cardinal_events"
        )
    assert migrate(fresh_database_url)[0] == "0011_chain_elections_required.sql"
    filed = _filed(fresh_database_url)
    assert [row[1] for row in filed] == [row[2] for row in filed]
    assert [row[1] for row in filed] == [election] * 4 + [None] * 6
