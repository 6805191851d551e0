"""A store that goes away is said once per worker task, naming PostgreSQL and DATABASE_URL,
never its password; its return once, with how long it lasted; and the read models catch
up within seconds of it (operator review: each worker logged every attempt, a line a
second per task, libpq's two lines each). On a PostgreSQL cluster of the module's own,
stopped and started: the shared one is never stopped."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from domain.rules import ElectionRules
from domain.voter import Voter
from infra.runtime.bootstrap import running_workers
from infra.store import open_application
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from tests.e2e.stack import AMQP_URL
from tests.own_logs import TEST, said_in
from tests.pg_cluster import Cluster
from tests.servers import settings_for

PASSWORD = "s3cret-db-pw"  # trust authentication: sent nowhere, but in the URL
TASKS = ("relay", "sealer", "projection tally", "projection catalog", "projection statistics")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(Path(tempfile.mkdtemp(prefix="cardinal-outage-log-"))) as own:
        yield own


@pytest.fixture
def url(cluster: Cluster) -> Iterator[str]:
    database = cluster.create_database(f"outage_log_{uuid.uuid4().hex[:8]}")
    migrate(database)
    yield database.replace("root@", f"root:{PASSWORD}@", 1)
    if not cluster.running():  # a failed test left it stopped
        cluster.start()


async def _cast(url: str, election: uuid.UUID | None, voters: range) -> uuid.UUID:
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    try:
        if election is None:
            rules = ElectionRules.create(
                options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
                method="plurality",
            )
            election = (await app.create_election("Outage", rules)).id
            await app.open_election(election)
        for n in voters:
            await app.cast_ballot(election, Voter(f"v{n}", f"v{n}"), {"choice": "ab"[n % 2]}, None)
        return election
    finally:
        await writer.stop()
        app.close()


def _behind(url: str) -> dict[str, int]:
    """How far each follower of the log is behind its head."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(max(notification_id), 0) FROM cardinal_events), "
            "(SELECT coalesce(max(position), 0) FROM audit_chain), "
            "(SELECT coalesce(max(position), 0) FROM relay_positions)"
        ).fetchone()
        assert row is not None
        head, sealed, relayed = (int(v) for v in row)
        positions: dict[str, int] = dict(
            conn.execute(
                "SELECT r.name, p.position FROM projections r JOIN projection_positions p "
                "ON p.name = r.name AND p.version = r.active_version"
            ).fetchall()
        )
    behind = {"sealer": head - sealed, "relay": head - relayed}
    for name in ("tally", "catalog", "statistics"):
        behind[name] = head - int(positions.get(name, 0))
    return behind


async def _caught_up(url: str, within: float) -> float:
    started = time.monotonic()
    while any((await asyncio.to_thread(_behind, url)).values()):
        assert time.monotonic() - started < within, await asyncio.to_thread(_behind, url)
        await asyncio.sleep(0.1)
    return time.monotonic() - started


# An outage longer than psycopg's pool waits between attempts early on: the old workers
# waited for the store in the pool, whose attempts back off (1, 2, 4, 8, 16 s ...), and after
# 40 s away came back 20 s late; after 20 s, over 8 s late. (A 6 s outage as well, once, told
# nothing this one does not: one warning per task, the tally back in time.)
@pytest.mark.parametrize("outage", [20.0])
async def test_a_store_outage_is_said_once_per_task_and_the_tally_catches_up(
    cluster: Cluster, url: str, caplog: pytest.LogCaptureFixture, outage: float
) -> None:
    settings = settings_for(url, amqp_url=AMQP_URL, namespace=f"t-{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.INFO)
    async with running_workers(
        settings, relay=True, projections=("tally", "catalog", "statistics")
    ) as workers:
        assert workers.sealer is not None
        election = await _cast(url, None, range(20))
        await _caught_up(url, within=20)
        caplog.clear()
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.sleep(outage)
        await asyncio.to_thread(cluster.start)
        back = time.monotonic()
        await _cast(url, election, range(20, 40))
        # The workers come back within their backoff's cap (5 s) of the store's return.
        caught_up = await _caught_up(url, within=30)
        took = time.monotonic() - back
        await asyncio.sleep(0.5)
    text = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records)
    assert PASSWORD not in text
    place = f"PostgreSQL at 127.0.0.1:{cluster.port}/{url.rsplit('/', 1)[1]} (DATABASE_URL)"
    # This test's lines: its workers' (tests/own_logs.py), and any naming its own cluster
    # and database (a writer's thread's would not carry the test's id); not the session API
    # stack's, on this loop too, whose tasks have the same names.
    own = [r for r in caplog.records if said_in(r, TEST.get()) or place in r.getMessage()]
    said = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in own]
    warnings = [r for r in own if r.levelno >= logging.WARNING]
    # One WARNING per task (the old code: a line a second from the relay and the sealer,
    # two or three from each projection, none naming DATABASE_URL).
    assert len(warnings) == len(TASKS), text
    for who in TASKS:
        down = [s for s in said if s.startswith("WARNING") and f": {who}: cannot reach" in s]
        assert len(down) == 1, (who, text)
        assert place in down[0], down[0]
        back_lines = [s for s in said if f": {who}: {place} reachable again (away " in s]
        assert len(back_lines) == 1, (who, text)
        assert back_lines[0].startswith("INFO"), back_lines[0]
    assert took < 8, (took, caught_up)
