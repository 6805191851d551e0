"""`cardinal ingest` and the broker's consumer_timeout: a batch given up names the broker's
reason. Against the real RabbitMQ (a node of the test's own, its consumer_timeout
shortened) and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from domain.ports import StoreUnavailable
from infra.ingest.publisher import publish
from tests.integration.test_ingest import (
    Ingest,
    _opened,
    ballot,
    consuming,
    delete_queues,
    until,
)
from tests.rabbit_node import RabbitNode
from tests.servers import settings_for

CONSUMER_TIMEOUT = 3.0  # seconds, on the test's own node


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A node whose consumer_timeout is CONSUMER_TIMEOUT, checked every half second."""
    with RabbitNode(
        tmp_path_factory.mktemp("rabbit") / "node",
        config=f"consumer_timeout = {int(CONSUMER_TIMEOUT * 1000)}\n",
        advanced="[{rabbit, [{channel_tick_interval, 500}]}].",
    ) as node:
        yield node


def _given_up(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if "could not be settled" in record.getMessage()
    ]


async def test_a_batch_held_past_consumer_timeout_names_the_brokers_reason(
    database_url: str,
    rabbit: RabbitNode,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch held (the store away) past consumer_timeout: the broker closes the channel
    with 406 PRECONDITION_FAILED, and the warning said only that the channel closed
    (ChannelInvalidStateError); it names the broker's reason now."""
    caplog.set_level(logging.WARNING, logger="infra.ingest.consumer")
    settings = settings_for(
        database_url, amqp_url=rabbit.url, namespace=f"t-{uuid.uuid4().hex[:8]}"
    )
    queue = settings.ingest_queue_name
    try:
        election_id = await _opened(settings, "Held", ["yes", "no"])
        back = asyncio.Event()
        async with consuming(settings) as (services, _):
            cast = services.app.cast_ballots

            async def away(election_id: UUID, ballots: list[Any]) -> Any:
                if not back.is_set():  # each ballot's outcome: the store away
                    return [StoreUnavailable("the store is away (test)") for _ in ballots]
                return await cast(election_id, ballots)

            monkeypatch.setattr(services.app, "cast_ballots", away)
            await publish(rabbit.url, queue, [("held-1", ballot(election_id, "h"))])
            said = await until(lambda: _given_up(caplog), bool, within=CONSUMER_TIMEOUT + 20)
            back.set()
            assert "PRECONDITION_FAILED" in said[0], said
            assert "timed out" in said[0], said
            check = Ingest(settings, services, queue)
            assert await check.until_counted(election_id, ["h"]) == {"h": 1}
    finally:
        await delete_queues(queue, rabbit.url)
