"""A broker that is not there is said once per task, naming RabbitMQ and AMQP_URL, never
its password; and the processes keep trying (operator review M5: 63 ERROR lines in 14 s,
none naming the broker or the setting). The "broker" is a closed port: the shared one is
never stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid

import pytest

from infra.ingest.service import consume_forever, ingester
from infra.runtime.bootstrap import running_services, running_workers
from infra.runtime.settings import Settings, SettingsError
from tests.servers import settings_for

PASSWORD = "s3cret-pw"
OUTAGE = 5.0  # seconds of outage watched


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there now: connection refused


async def test_a_broker_outage_is_said_once_per_task_naming_amqp_url(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = _closed_port()
    url = f"amqp://guest:{PASSWORD}@127.0.0.1:{port}/"
    settings = settings_for(database_url, amqp_url=url, namespace=f"test-{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.INFO)
    async with (
        running_workers(settings, relay=True, projections=("tally", "catalog", "statistics")),
        running_services(settings) as services,
    ):
        consumer = asyncio.create_task(
            consume_forever(ingester(settings, services.app, services.voter_keys))
        )
        try:
            await asyncio.sleep(OUTAGE)
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    said = [f"{r.name}: {r.getMessage()}" for r in records]
    assert not any(PASSWORD in r.getMessage() for r in caplog.records), said
    # One line for each task that connects: the relay, three projections, the ingest
    # consumer and the services' broker monitor (the old code: dozens, aiormq's ERRORs
    # among them), and aio-pika's INFO line per closed robust connection (backed off).
    assert len(records) <= 6, "\n".join(said)
    assert len(caplog.records) <= 20, "\n".join(r.getMessage() for r in caplog.records)
    assert all(r.levelno == logging.WARNING for r in records), said
    for who in ("relay", "projection tally", "projection statistics", "ingest", "api"):
        lines = [s for s in said if f": {who}: cannot reach" in s]
        assert len(lines) == 1, (who, said)
        assert f"RabbitMQ at 127.0.0.1:{port} (AMQP_URL): connection refused" in lines[0]


@pytest.mark.parametrize(
    "url", ["http://guest:s3cret-pw@127.0.0.1:5672/", "guest:s3cret-pw@127.0.0.1:5672", "redis://x"]
)
def test_an_amqp_url_that_is_not_amqp_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"AMQP_URL": url})
    said = str(refused.value)
    assert said.startswith("AMQP_URL must be a RabbitMQ URL, amqp://")
    assert "s3cret-pw" not in said


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672/", "amqps://u:p@host/vhost"])
def test_amqp_and_amqps_urls_are_taken(url: str) -> None:
    assert Settings.from_env({"AMQP_URL": url}).amqp_url == url
