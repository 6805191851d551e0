"""Which incarnation of the store a connection reaches: what tells a restored (or failed
over) store from the one it was restored from, though both hold the same log up to a point.

A restore loses the log's tail, and the positions after it are issued again, to other
entries. The relay's pages still queued in the broker from the store before the restore
carry valid signatures (same secret, same namespace), and named the positions of entries
this store no longer has: applied, they put lost ballots in the read models and moved their
positions past the head, so that the new entries at those positions were dropped as
duplicates. The relay therefore says in each page (inside the signed body) the incarnation
it read it from, and a projection worker applies only pages of its own store's.

An incarnation is PostgreSQL's system identifier (a new cluster: initdb, or a logical
restore into another cluster), its current WAL timeline (a point-in-time recovery or a
replica's promotion starts a new one), and the database's OID (a ``pg_restore`` into a new
database of the same cluster). All three are readable by a role without superuser on
PostgreSQL 15 (``pg_control_system``, ``pg_walfile_name(pg_current_wal_lsn())`` and
``pg_database`` are executable by PUBLIC; tested in tests/integration/test_restored_store.py).
A copy that none of them tells apart (a file-system snapshot or a base backup started
without recovery, on the same timeline) is caught where a page runs past this store's head
or a page's last entry is not this store's (projections/runtime.py ``track``):
docs/architecture.md, "Pages of another store".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

log = logging.getLogger(__name__)

# (the timeline is the first 8 hex digits of the current WAL file's name)
READ = """
SELECT s.system_identifier::text,
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint,
       d.oid::bigint
FROM pg_control_system() s, pg_database d WHERE d.datname = current_database()
"""


@dataclass(frozen=True)
class Incarnation:
    system: str  # pg_control_system().system_identifier, as text (it is a uint64)
    timeline: int
    database: int  # the database's OID

    def as_message(self) -> dict[str, Any]:
        return {"system": self.system, "timeline": self.timeline, "database": self.database}

    @classmethod
    def from_message(cls, said: object) -> Incarnation | None:
        """A page's incarnation (None: a page of a relay before this field); ValueError for
        one that is not an incarnation's."""
        if said is None:
            return None
        if not isinstance(said, dict):
            raise ValueError("incarnation is not an object")
        system, timeline, database = said.get("system"), said.get("timeline"), said.get("database")
        if not (
            isinstance(system, str)
            and isinstance(timeline, int)
            and isinstance(database, int)
            and not isinstance(timeline, bool)
            and not isinstance(database, bool)
        ):
            raise ValueError("incarnation is not {system: text, timeline: int, database: int}")
        return cls(system, timeline, database)

    def __str__(self) -> str:
        return f"system {self.system}, timeline {self.timeline}, database OID {self.database}"


async def incarnation(conn: AsyncConnection[Any]) -> Incarnation | None:
    """The incarnation of the store ``conn`` reaches; None where it cannot be read (said:
    a role its functions were revoked from, or a server in recovery), so that pages are
    then neither marked nor checked, as before this check."""
    try:
        cursor = await conn.execute(READ)
        row = await cursor.fetchone()
    except psycopg.errors.ObjectNotInPrerequisiteState as error:  # (in recovery)
        _cannot(error)  # (an OperationalError to psycopg, but no outage)
        return None
    except psycopg.OperationalError:
        raise  # (the store away: the caller's outage handling)
    except psycopg.DatabaseError as error:
        # Revoked functions, a server in recovery, a managed or pooled server without
        # them (FeatureNotSupported, UndefinedFunction): the pages go unmarked, never
        # unpublished (merge review mr2: any other error stopped the relay).
        _cannot(error)
        return None
    if row is None:
        return None
    return Incarnation(str(row[0]), int(row[1]), int(row[2]))


def _cannot(error: BaseException) -> None:
    log.warning(
        "cannot read which incarnation of the store this is (%s): relay pages are not "
        "checked against a restore; grant EXECUTE on pg_control_system() and "
        "pg_walfile_name() to this role",
        error,
    )
