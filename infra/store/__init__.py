"""The event store: eventsourcing's PostgreSQL persistence, wired from DATABASE_URL."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

from domain.application import VotingApplication
from infra.store.connections import STORE_POOL_OVERFLOW, STORE_POOL_SIZE

EVENTS_TABLE = "cardinal_events"  # eventsourcing names it after the application
# Every commit to the log notifies EVENTS_TABLE (the relay and the sealer follow it); a
# commit that holds an election's event also notifies this one (the elections' caches).
ELECTIONS_CHANNEL = "cardinal_elections"


def connection_kwargs(database_url: str) -> dict[str, str]:
    """libpq connection parameters of a DATABASE_URL, as strings."""
    return {k: str(v) for k, v in conninfo_to_dict(database_url).items() if v is not None}


def store_environment(database_url: str, pool_size: int = STORE_POOL_SIZE) -> dict[str, str]:
    """The eventsourcing environment for our PostgreSQL event store.

    CREATE_TABLE is off because the tables come from migrations/, and
    POSTGRES_ENABLE_DB_FUNCTIONS stays off: its insert function takes no table lock, which
    would let readers tailing the log skip rows that commit later.
    """
    params = connection_kwargs(database_url)
    return {
        "PERSISTENCE_MODULE": "infra.store.persistence:AliveFactory",
        "POSTGRES_DBNAME": params.get("dbname", params.get("user", "postgres")),
        "POSTGRES_HOST": params.get("host", ""),
        "POSTGRES_PORT": params.get("port", "5432"),
        "POSTGRES_USER": params.get("user", "postgres"),
        "POSTGRES_PASSWORD": params.get("password", ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": str(STORE_POOL_OVERFLOW),
        # No test query before each lookup (a round trip on every revision, withdrawal
        # and retry): the pool passes over a connection the server hung up on without one
        # (infra/store/reconnect.py, ReconnectingStorePool).
        "POSTGRES_PRE_PING": "n",
        # How long a read of an aggregate waits for a connection (the library's default
        # is 30 s): while the store is down, a request is refused quickly instead.
        "POSTGRES_CONNECT_TIMEOUT": "2",
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        "CREATE_TABLE": "n",
        "TRANSCODER_TOPIC": "infra.store.transcoder:OrjsonTranscoder",
    }


def open_application(database_url: str) -> VotingApplication:
    """A VotingApplication on PostgreSQL (connects lazily, on first use)."""
    return VotingApplication(env=store_environment(database_url))
