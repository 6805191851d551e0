"""How many PostgreSQL connections each process may hold: the one place for the figures.

The pools are sized from these constants; `cardinal serve` adds them up at start and warns
when the server has no room for them (``check_room``), and starts its embedded PostgreSQL
with room for them (``embedded_max_connections``). docs/architecture.md's table ("Connections
each process may hold") says the same: change both together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from infra.store.names import COMMAND_CONNECTION

log = logging.getLogger(__name__)

# Pools (each opens one connection and grows on demand up to its size).
STORE_POOL_SIZE = 4  # eventsourcing's pool: POSTGRES_POOL_SIZE ...
STORE_POOL_OVERFLOW = 4  # ... and POSTGRES_MAX_OVERFLOW beyond it under load
READS_POOL = 8  # an API process's `reads` pool


def projections_pool(projections: int) -> int:
    """The workers' pool (`projections`): two per projection and one more (1 with none)."""
    return 2 * projections + 1


# Connections of one each, held for a process's lifetime.
WRITER = 1  # the group-commit writer's
ELECTION_FEED = 1
POSITION_WATCHER = 1
RATE_LIMITER = 1  # API processes only
RELAY = 1  # with a broker only
SEALER = 1
LISTEN_PER_PROJECTION = 1  # without a broker, each projection LISTENs on one of its own
# The metrics task's (``serve_worker_metrics``), refreshing the position gauges every 5 s;
# a scrape opens none. Every workers process (relay, project) holds it, METRICS_PORT 0
# included; a standalone ingest only with a METRICS_PORT (serve's ingest has none).
WORKER_METRICS = 1

# Held only for a moment, besides: an API process's `writer probe` (a commit overdue), its
# readiness probe's migration check (until migrated) and its rate limiter's give-back; an
# ingest's `writer probe`.
API_BRIEFLY = 3
INGEST_BRIEFLY = 1

# The server's own default, kept by the embedded server unless serve needs more, and the
# room the embedded server keeps beyond serve's need for the one-shot commands (`rebuild` 4,
# `audit verify` 2, ...), a psql session or a `cardinal ingest` of a developer's.
POSTGRES_DEFAULT = 100
SUPERUSER_RESERVED_DEFAULT = 3
ONE_SHOT_ROOM = 30


def services(*, rate_limiter: bool, projections: int = 0) -> int:
    """What ``running_services`` holds: an API process (with the rate limiter) or an
    ingest (without), with a workers' pool for ``projections``."""
    return (
        STORE_POOL_SIZE
        + STORE_POOL_OVERFLOW
        + READS_POOL
        + WRITER
        + ELECTION_FEED
        + POSITION_WATCHER
        + (RATE_LIMITER if rate_limiter else 0)
        + projections_pool(projections)
    )


def workers(projections: int, *, broker: bool) -> int:
    """What serve's workers process holds (`cardinal project --relay`), without its pool's
    place in an API process: the pool, the relay or the projections' LISTENs, the sealer."""
    return (
        projections_pool(projections)
        + (RELAY if broker else LISTEN_PER_PROJECTION * projections)
        + SEALER
    )


def ingest(*, metrics: bool) -> int:
    """The most a `cardinal ingest` may hold: with a METRICS_PORT (standalone, compose) or
    without one (serve's)."""
    return services(rate_limiter=False) + INGEST_BRIEFLY + (WORKER_METRICS if metrics else 0)


def serve_needs(api_processes: int, *, broker: bool, projections: int) -> int:
    """The most `cardinal serve` may hold at once with ``api_processes`` API processes
    (WEB_CONCURRENCY) and ``projections`` projections, with a broker (AMQP_URL) or not."""
    if api_processes == 1:  # everything in one process: its workers' pool is the pool
        held = services(rate_limiter=True) - projections_pool(0)
        return held + workers(projections, broker=broker) + API_BRIEFLY
    need = api_processes * (services(rate_limiter=True) + API_BRIEFLY)
    need += workers(projections, broker=broker) + WORKER_METRICS
    if broker:  # serve's `cardinal ingest`, without a metrics port
        need += ingest(metrics=False)
    return need


def embedded_max_connections(need: int) -> int:
    """The embedded server's max_connections for a serve that needs ``need``."""
    return max(POSTGRES_DEFAULT, need + SUPERUSER_RESERVED_DEFAULT + ONE_SHOT_ROOM)


@dataclass(frozen=True)
class Room:
    """What a server has for new connections: max_connections, less those reserved for
    superusers (and, from PostgreSQL 16, for pg_use_reserved_connections), less those in
    use by clients other than the one that asked."""

    max_connections: int
    reserved: int
    in_use: int

    @property
    def free(self) -> int:
        return self.max_connections - self.reserved - self.in_use


def room(database_url: str) -> Room:
    """Ask the server how much room it has for connections."""
    with psycopg.connect(database_url, autocommit=True, **COMMAND_CONNECTION) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int"
            " + coalesce(current_setting('reserved_connections', true)::int, 0),"
            " (SELECT count(*)::int FROM pg_stat_activity"
            "  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())"
        ).fetchone()
    assert row is not None
    return Room(max_connections=row[0], reserved=row[1], in_use=row[2])


def check_room(database_url: str, need: int, what: str) -> Room | None:
    """Warn, once, when ``need`` connections (``what`` holds them) may not fit in the
    server's room; never refuse (a shared server may be fine in practice). Returns the room
    found (None when the server could not be asked, which is logged and let go)."""
    try:
        found = room(database_url)
    except psycopg.Error as error:
        log.warning("could not compare %s's connections with max_connections: %s", what, error)
        return None
    if need > found.free:
        log.warning(
            "%s may hold up to %d PostgreSQL connections, but the server has room for %d "
            "(max_connections %d, less %d reserved and %d in use): under load a process "
            'would be refused ("too many clients") and answer 503 or restart. Lower '
            "WEB_CONCURRENCY or raise max_connections to at least %d",
            what,
            need,
            found.free,
            found.max_connections,
            found.reserved,
            found.in_use,
            need + found.reserved + found.in_use,
        )
    return found
