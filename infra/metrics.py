"""Prometheus metrics: one definition of every series, shared by all components.

The API serves them on /metrics; relay and projector processes on METRICS_PORT (0 turns
that listener off), on METRICS_HOST (else HOST). METRICS_TOKEN, where set, is the bearer
token both ask for. Names follow Prometheus conventions: counters end in ``_total``,
durations are in seconds.

Under `cardinal serve` the API runs in several processes; the supervisor gives them one
PROMETHEUS_MULTIPROC_DIR, and any one of them answers /metrics for all (prometheus-client's
multiprocess mode). Each gauge therefore says how processes combine: ``livesum`` for what
each process holds (its queue), ``max``/``mostrecent`` for what each reads from the
database (the same figure, read at different times), ``livemin`` for "every live process
can reach it".
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

log = logging.getLogger(__name__)

BALLOTS_ACCEPTED = Counter(
    "cardinal_ballots_accepted_total", "Ballot changes recorded, by kind", ["kind"]
)
BALLOTS_REFUSED = Counter(
    "cardinal_ballots_refused_total", "Ballot requests refused, by reason", ["reason"]
)
WRITE_BATCH_SIZE = Histogram(
    "cardinal_write_batch_size",
    "Appends committed per group-commit transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
WRITE_COMMIT_SECONDS = Histogram(
    "cardinal_write_commit_seconds",
    "Duration of one group-commit transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
WRITER_QUEUE = Gauge(
    "cardinal_writer_queue_depth", "Appends waiting for the writer", multiprocess_mode="livesum"
)
HTTP_SECONDS = Histogram(
    "cardinal_http_request_duration_seconds",
    "HTTP request duration by route",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
# The answers the HTTP protocol (api/protocol.py) writes itself, before or instead of the
# app, by reason: ``malformed`` (400: not HTTP/1.1), ``head_too_large`` (431), ``timeout``
# (408: a head or body not sent in time), ``busy`` (503: past the connection limit). None
# is in cardinal_http_request_duration_seconds: most never reach the app, and a 408 for a
# body comes while the app has the request, which its middleware then leaves out (the
# scope's api.middleware.REFUSED_BY_PROTOCOL); and the 400s and 503s are said at WARNING
# once a minute at most, so this is where each one is counted. Each is counted as it is
# written: requests pipelined behind a 503 are never answered (the connection closes), and
# not counted. A request asking for an Upgrade the server does not serve is not refused (it
# is answered as HTTP/1.1, and counted by the app), so it is not here.
HTTP_REFUSALS = Counter(
    "cardinal_http_protocol_refusals_total",
    "Answers the HTTP protocol wrote itself, in the app's place, by reason",
    ["reason"],
)
HTTP_REFUSAL_REASONS = ("malformed", "head_too_large", "timeout", "busy")
LOG_HEAD = Gauge(
    "cardinal_log_head_position",
    "Position of the last committed log entry",
    multiprocess_mode="max",
)
RELAY_POSITION = Gauge(
    "cardinal_relay_position",
    "Last log position the relay published",
    multiprocess_mode="max",
)
RELAY_LAG = Gauge(
    "cardinal_relay_lag_events", "Log entries not yet published", multiprocess_mode="mostrecent"
)
RELAY_PUBLISHED = Counter("cardinal_relay_published_events_total", "Log entries published")
SEALER_HALTED = Gauge(
    "cardinal_sealer_halted",
    "1 while the sealer has stopped sealing and signing: the chain was altered outside it "
    "(infra/audit/sealer.py; its ERROR line says where)",
    multiprocess_mode="livemax",
)
RELAY_LEADER = Gauge(
    "cardinal_relay_leader", "1 while this relay is the active one", multiprocess_mode="livemax"
)
SEALER_LEADER = Gauge(
    "cardinal_sealer_leader", "1 while this sealer is the active one", multiprocess_mode="livemax"
)
SEALER_POSITION = Gauge(
    "cardinal_sealer_position",
    "Last log position linked into the audit chain",
    multiprocess_mode="max",
)
SEALER_LAG = Gauge(
    "cardinal_sealer_lag_events",
    "Log entries not yet linked into the audit chain (not yet covered by a checkpoint)",
    multiprocess_mode="mostrecent",
)
PROJECTION_POSITION = Gauge(
    "cardinal_projection_position",
    "Last log position applied",
    ["projection"],
    multiprocess_mode="max",
)
PROJECTION_LAG = Gauge(
    "cardinal_projection_lag_events",
    "Log entries not yet applied",
    ["projection"],
    multiprocess_mode="mostrecent",
)
PROJECTION_APPLIED = Counter(
    "cardinal_projection_applied_events_total", "Log entries applied", ["projection"]
)
PROJECTION_APPLY_SECONDS = Histogram(
    "cardinal_projection_apply_seconds",
    "Duration of one page's transaction",
    ["projection"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
PROJECTION_SET_ASIDE = Counter(
    "cardinal_projection_set_aside_total",
    "Log entries a projection could not apply and set aside (by this process)",
    ["projection"],
)
PROJECTION_SET_ASIDE_ACTIVE = Gauge(
    "cardinal_projection_set_aside_events",
    "Log entries the active version of a projection has set aside (from the database)",
    ["projection"],
    multiprocess_mode="mostrecent",
)
PROJECTION_REJECTED = Counter(
    "cardinal_projection_rejected_total", "Messages dead-lettered", ["projection"]
)
PROJECTION_UNSIGNED = Counter(
    "cardinal_projection_unsigned_pages_total",
    "Messages refused unread: not signed by this stack's relay (at most "
    "projections.strangers.RECORDS_PER_MINUTE a minute dead-lettered, as bounded records)",
    ["projection"],
)
PROJECTION_STALE = Counter(
    "cardinal_projection_stale_pages_total",
    "Relay pages refused as not of this store: read from another incarnation of it (the "
    "store it was restored or failed over from), or running past its head; their entries "
    "are read from the store",
    ["projection"],
)
PROJECTION_UNRECORDED = Counter(
    "cardinal_projection_unrecorded_total",
    "Messages of unknown source refused and only counted, not dead-lettered: over the "
    "dead-letter records allowed a minute",
    ["projection"],
)
REBUILD_POSITION = Gauge(
    "cardinal_rebuild_position",
    "Position a running rebuild has reached",
    ["projection"],
    multiprocess_mode="mostrecent",
)
REBUILD_RATE = Gauge(
    "cardinal_rebuild_events_per_second",
    "Speed of a running rebuild",
    ["projection"],
    multiprocess_mode="mostrecent",
)
BROKER_CONNECTED = Gauge(
    "cardinal_broker_connected",
    "1 while connected to RabbitMQ",
    ["component"],
    multiprocess_mode="livemin",
)
DATABASE_CONNECTED = Gauge(
    "cardinal_database_connected",
    "1 while the database answers",
    ["component"],
    multiprocess_mode="livemin",
)
# Labelled, so that a process without a writer (relay, projections) shows no series at
# all: an unlabelled gauge is 0 in every process that never sets it, and the alert on it
# would fire for ever.
STORE_UP = Gauge(
    "cardinal_store_up",
    "1 while this process's writer finds the event store reachable, 0 while it refuses "
    "ballots because it is not",
    ["component"],
    multiprocess_mode="livemin",
)
# Ballots from RabbitMQ (`cardinal ingest`).
INGEST_CONSUMED = Counter(
    "cardinal_ingest_messages_consumed_total", "Messages taken from the ingest queue"
)
INGEST_COMMITTED = Counter(
    "cardinal_ingest_ballots_committed_total",
    "Ballots from the ingest queue recorded (replays of a message_id included), then acked",
)
INGEST_REFUSED = Counter(
    "cardinal_ingest_ballots_refused_total",
    "Ballots from the ingest queue refused (sent to <queue>.refused), by reason",
    ["reason"],
)
INGEST_REPLIES_WITHHELD = Counter(
    "cardinal_ingest_replies_withheld_total",
    "Replies not sent because reply_to named the ingest's own queues (or the broker "
    "topology's); the ballots were cast as usual",
)
INGEST_BATCH = Histogram(
    "cardinal_ingest_batch_ballots",
    "Ballots cast per ingest batch (one ack with multiple=True)",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
INGEST_QUEUE_DEPTH = Gauge(
    "cardinal_ingest_queue_messages",
    "Messages ready in the ingest queue and its refused queue",
    ["queue"],
    multiprocess_mode="mostrecent",
)

POSITIONS = """
SELECT (SELECT coalesce(max(notification_id), 0) FROM cardinal_events),
       (SELECT position FROM relay_positions WHERE name = 'relay'),
       (SELECT coalesce(max(position), 0) FROM audit_chain),
       coalesce((SELECT json_object_agg(r.name, p.position) FROM projections r
                 JOIN projection_positions p
                   ON p.name = r.name AND p.version = r.active_version), '{}'),
       coalesce((SELECT json_object_agg(name, json_build_array(rebuild_position, rebuild_rate))
                 FROM projections WHERE state = 'rebuilding'), '{}'),
       coalesce((SELECT json_object_agg(r.name, (SELECT count(*) FROM projection_set_aside s
                                                  WHERE s.name = r.name
                                                    AND s.version = r.active_version))
                 FROM projections r), '{}')
"""


def withdraw(gauge: Gauge, *labels: str) -> None:
    """Drop a labelled gauge's series: what it said no longer holds for this process (a
    relay standing by has no broker connection to report). Where processes share their
    metrics (`cardinal serve`'s multiprocess mode), a series cannot be dropped: it keeps
    its last value, which is what not setting it does."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    with contextlib.suppress(KeyError):  # (never set here)
        gauge.remove(*labels)


async def refresh_positions(conn: psycopg.AsyncConnection[Any], component: str) -> None:
    """Set head, relay and projection positions and lags from the database."""
    try:
        cursor = await conn.execute(POSITIONS)
        row = await cursor.fetchone()
    except psycopg.Error:
        DATABASE_CONNECTED.labels(component).set(0)
        raise
    DATABASE_CONNECTED.labels(component).set(1)
    assert row is not None
    head, relay, sealed, projections, rebuilds, set_aside = row
    LOG_HEAD.set(head)
    if relay is not None:
        RELAY_POSITION.set(relay)
        RELAY_LAG.set(max(0, head - relay))
    SEALER_POSITION.set(sealed)
    SEALER_LAG.set(max(0, head - sealed))
    for name, position in projections.items():
        PROJECTION_POSITION.labels(name).set(position)
        PROJECTION_LAG.labels(name).set(max(0, head - position))
        PROJECTION_SET_ASIDE_ACTIVE.labels(name).set(set_aside.get(name, 0))
    # Rebuild progress, from the registry: a rebuild runs in a process of its own.
    for name in projections:
        position, rate = rebuilds.get(name, (None, None))
        REBUILD_POSITION.labels(name).set(position or 0)
        REBUILD_RATE.labels(name).set(rate or 0)


def exposition() -> tuple[bytes, str]:
    """This process's metrics, or every process's where they share a multiprocess folder."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _guarded(app: WSGIApp, token: str | None) -> WSGIApp:
    """The exposition app, answering 401 to a scrape without ``Bearer <token>``."""
    if token is None:
        return app
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        presented = str(environ.get("HTTP_AUTHORIZATION", "")).encode()
        if hmac.compare_digest(presented, expected):
            return app(environ, start)
        start("401 Unauthorized", [("WWW-Authenticate", 'Bearer realm="metrics"')])
        return [b"send Authorization: Bearer <METRICS_TOKEN>\n"]

    return guarded


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A scrape every few seconds is not worth a log line."""


def start_metrics_server(host: str, port: int, token: str | None = None) -> ThreadingWSGIServer:
    """Serve this process's metrics on ``host:port`` from a thread (prometheus-client's
    start_http_server, plus the bearer check it lacks)."""
    server = make_server(
        host,
        port,
        _guarded(make_wsgi_app(REGISTRY), token),
        ThreadingWSGIServer,
        handler_class=_Quiet,
    )
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
    return server


async def serve_worker_metrics(
    port: int, database_url: str, component: str, host: str = "127.0.0.1", token: str | None = None
) -> None:
    """Expose metrics on ``host:port`` and keep the position gauges fresh (every 5 s)."""
    if port:
        start_metrics_server(host, port, token)
        log.info("metrics on http://%s:%d/metrics", host, port)
    while True:
        with contextlib.suppress(psycopg.Error, OSError):
            async with await psycopg.AsyncConnection.connect(
                database_url, autocommit=True, connect_timeout=5
            ) as conn:
                while True:
                    await refresh_positions(conn, component)
                    await asyncio.sleep(5)
        DATABASE_CONNECTED.labels(component).set(0)
        await asyncio.sleep(5)
