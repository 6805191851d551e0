"""Numbered SQL migrations, applied in order, once each, under an advisory lock.

Each file in migrations/ named ``NNNN_description.sql`` runs in its own transaction and is
recorded in ``schema_migrations`` with a SHA-256 of its text. An applied migration whose
file has since changed is refused: the database would no longer match the code's idea of it.
So is a database holding a migration this release lacks (a newer release upgraded it, and
this one was rolled back onto it): its code would fail against that schema in ways no
migration of its own can mend. A migration whose SQL fails leaves nothing of it applied and
names its file.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files

import psycopg

from infra.store.names import COMMAND_CONNECTION

# pg_advisory_lock key: any fixed 64-bit number shared by every Cardinal Vote process.
MIGRATION_LOCK = 0x43415244_4D494752  # "CARDMIGR"
FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The database and the migrations in this release do not agree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def discover() -> list[Migration]:
    """The migrations shipped with this release, in order."""
    found = []
    for entry in files("migrations").iterdir():
        match = FILENAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return found


def migrate(database_url: str) -> list[str]:
    """Apply every pending migration; return the names of those applied now."""
    migrations = discover()
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True, **COMMAND_CONNECTION) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            conn.execute(CREATE_LEDGER)
            applied = _applied(conn)
            _check_known(conn, migrations, applied)
            _check_unchanged(migrations, applied)
            for migration in migrations:
                if migration.version in applied:
                    continue
                with conn.transaction():
                    _run(conn, migration)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                applied_now.append(migration.filename)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


def pending(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """Migrations not yet applied (an empty list means the schema is current)."""
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    migrations = discover()
    if not exists or not exists[0]:
        return [m.filename for m in migrations]
    applied = _applied(conn)
    _check_known(conn, migrations, applied)
    _check_unchanged(migrations, applied)
    return [m.filename for m in migrations if m.version not in applied]


class MigrationsPending(RuntimeError):
    """The database lacks migrations this release needs (`cardinal migrate` applies them)."""


def require_current(database_url: str) -> None:
    """Refuse, naming them, if the database lacks any of this release's migrations (or
    holds one it does not know): for the commands that read the schema but never change it."""
    with psycopg.connect(database_url, autocommit=True, **COMMAND_CONNECTION) as conn:
        missing = pending(conn)
    if missing:
        first, last = missing[0][:4], missing[-1][:4]
        span = f"migration {first}" if first == last else f"migrations {first}..{last}"
        raise MigrationsPending(f"the database needs {span}: run `cardinal migrate`")


def _run(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    try:
        conn.execute(migration.sql.encode())
    except psycopg.Error as error:
        if error.sqlstate is None or error.sqlstate.startswith("08"):
            raise  # the connection failed, not the migration: `cannot reach the database`
        said = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise MigrationError(
            f"migration {migration.filename} failed, and nothing of it was applied: "
            f"PostgreSQL said: {said}"
        ) from error


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, str]:
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(str(version)): str(checksum) for version, checksum in rows}


def _check_known(
    conn: psycopg.Connection[tuple[object, ...]],
    migrations: list[Migration],
    applied: dict[int, str],
) -> None:
    unknown = sorted(set(applied) - {m.version for m in migrations})
    if unknown:
        row = conn.execute(
            "SELECT name FROM schema_migrations WHERE version = %s", (unknown[0],)
        ).fetchone()
        raise MigrationError(
            f"the database has migration {unknown[0]:04d} ({row[0] if row else '?'}) that "
            "this version does not know: it was upgraded by a newer release; run that release, "
            "or, to come back to this one, restore the pg_dump taken before the upgrade into an "
            "empty database (there are no down-migrations: docs/upgrading.md, the way back)"
        )


def _check_unchanged(migrations: list[Migration], applied: dict[int, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.filename} was edited after it was applied "
                f"(recorded checksum {recorded[:12]}..., file {migration.checksum[:12]}...). "
                "Applied migrations are immutable: restore the file and put the change in a "
                "new numbered migration."
            )
