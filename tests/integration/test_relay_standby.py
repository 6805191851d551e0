"""A relay that stands by reports no broker connection of its own (observability review):
its gauge at 0 held CardinalBrokerDown firing after every failover."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from prometheus_client import REGISTRY

from infra.broker.relay import RELAY_LOCK, Relay
from infra.broker.topology import Topology, delete_namespace
from infra.store.migrations import migrate
from infra.store.names import connection_name
from projections import PROJECTIONS
from tests.databases import create_database, drop_database

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("cardinal_broker_connected", {"component": "relay"})


async def _until(done: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_a_relay_that_lost_its_lead_to_another_reports_no_broker_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="infra.broker.relay")
    url = create_database("cardinal_standby")
    migrate(url)
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    relay = Relay(url, AMQP_URL, Topology(namespace), PROJECTIONS, page_key=b"k" * 32)
    running = asyncio.create_task(relay.run())
    other = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        assert await _until(lambda: relay.status.broker_connected and _gauge() == 1, 30)
        # Its session ended (as a frozen leader's is) and another relay takes the lock.
        await other.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (connection_name("relay"),),
        )
        await other.execute("SELECT pg_advisory_lock(%s)", (RELAY_LOCK,))
        assert await _until(lambda: not relay.status.leader, 10)
        # It stands by, connected to no broker: no series (the old code: 0, for ever).
        assert await _until(lambda: "standing by" in caplog.text, 10), caplog.text
        assert not relay.status.leader
        assert _gauge() is None
        await other.execute("SELECT pg_advisory_unlock(%s)", (RELAY_LOCK,))
        assert await _until(lambda: relay.status.broker_connected and _gauge() == 1, 30)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await other.close()
        delete_namespace(AMQP_URL, namespace, PROJECTIONS)
        drop_database(url)
