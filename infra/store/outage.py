"""A store outage, said once per task and retried with a short capped backoff.

While PostgreSQL is away the workers (the relay, the sealer, every projection worker) each
logged a line per attempt, about one a second per task, quoting libpq's two-line error and
never naming the setting that points at the server. Now each says once that it cannot
reach "PostgreSQL at host:port/dbname (DATABASE_URL)" and why, at WARNING, and once, at
INFO, that it is back and how long it was away; it tries again after 1 s doubling to
``CAP`` (short: a worker's first attempt after the return is what lets the read models
catch up). The URL's user and password are never logged. (psycopg's pool logs its own
failed attempts at WARNING, but eventsourcing sets the ``psycopg`` logger to ERROR: they
never reach the log.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from infra.outage import Outage
from infra.store.names import ALIVE, connection_name

FIRST = 1.0  # seconds before the first retry
CAP = 5.0  # the longest wait between attempts: the read models catch up within seconds
# Failures that say the store cannot be reached (down, restarting, the connection lost, no
# pooled connection to be had), as against a statement the store refused.
UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
PROBE_TIMEOUT = 2  # seconds a probe's connection attempt may take


def where(database_url: str) -> str:
    """``PostgreSQL at host:port/dbname (DATABASE_URL)``: never its user or password."""
    try:
        params = conninfo_to_dict(database_url)
    except (psycopg.Error, ValueError):
        return "PostgreSQL (DATABASE_URL)"
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or 5432)
    host = f"[{host}]" if ":" in host and "," not in host else host
    dbname = params.get("dbname")
    place = f"{host}:{port}" + (f"/{dbname}" if dbname else "")
    return f"PostgreSQL at {place} (DATABASE_URL)"


# libpq's words for the usual ways a server is away, and ours (the first found is said).
_WHYS = (
    ("connection refused", "connection refused"),
    ("timeout expired", "no answer (timed out)"),
    (
        "terminating connection due to administrator command",
        "the server ended the connection (shutting down, or the backend terminated)",
    ),
    ("server closed the connection unexpectedly", "the server closed the connection"),
    ("the database system is starting up", "the server is starting up"),
    ("the database system is shutting down", "the server is shutting down"),
)


def reason(error: BaseException) -> str:
    """A short why: "connection refused" rather than libpq's two lines."""
    if isinstance(error, PoolTimeout):
        return "no connection to be had (the pool's attempts fail)"
    if isinstance(error, TimeoutError):
        return "no answer (timed out)"
    lowered = " ".join(str(error).split()).lower()
    said = next((why for words, why in _WHYS if words in lowered), None)
    lines = str(error).strip().splitlines()
    return said or (lines[0][:300] if lines else type(error).__name__)


class StoreOutage(Outage):
    """One task's view of the store: one WARNING per outage (whatever its reasons: a
    server going down closes the connection, then refuses it), one INFO on its return
    with how long it lasted."""

    def __init__(
        self, database_url: str, who: str, logger: logging.Logger, *, first: float = FIRST
    ) -> None:
        super().__init__(
            where(database_url),
            who,
            logger,
            reason=_scrubbed(database_url),
            first=first,
            cap=max(CAP, first),
            once=True,
            timed=True,
        )


def _scrubbed(database_url: str) -> Callable[[BaseException], str]:
    try:
        password = conninfo_to_dict(database_url).get("password")
    except (psycopg.Error, ValueError):
        password = None

    def why(error: BaseException) -> str:
        said = reason(error)
        return said.replace(str(password), "***") if password else said

    return why


async def probe(database_url: str) -> None:
    """Connect and disconnect once (raises what connecting raised): whether the store
    answers, without waiting on a pool, which lends nothing until its next attempt (up to 2 s
    later for ours, infra/store/reconnect.py; psycopg_pool's own waits grow to minutes)."""
    conn = await psycopg.AsyncConnection.connect(
        database_url,
        autocommit=True,
        connect_timeout=PROBE_TIMEOUT,
        application_name=connection_name("probe"),
        **ALIVE,
    )
    await conn.close()
