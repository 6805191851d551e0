"""`cardinal ingest` holds what it has been sent in ballots, not messages: a backlog of
large messages is neither the whole prefetch in the consumer nor held past the broker's
consumer_timeout; and a batch given up names the broker's reason. Against the real
RabbitMQ (a node of the test's own where its consumer_timeout is shortened) and
PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from domain.ports import StoreUnavailable
from infra.ingest.publisher import publish
from tests.e2e.stack import AMQP_URL
from tests.integration.test_ingest import (
    Ingest,
    _opened,
    _unacked,
    ballot,
    consuming,
    delete_queues,
    queue_depth,
    until,
)
from tests.rabbit_node import RabbitNode
from tests.servers import settings_for

# Seconds, on the test's own node. (At 4 s, a message waiting about two batches of a busy
# machine's crossed it once, beside a full `make test` and three review stacks.)
CONSUMER_TIMEOUT = 8.0


def _messages(election_id: UUID, count: int, size: int) -> list[tuple[str, Any]]:
    """``count`` messages of ``size`` ballots each, every ballot a voter of its own."""
    return [
        (
            f"big-{m}",
            {
                "election_id": str(election_id),
                "ballots": [{"voter_id": f"v{m}-{b}", "choice": "yes"} for b in range(size)],
            },
        )
        for m in range(count)
    ]


def _voters(count: int, size: int) -> list[str]:
    return [f"v{m}-{b}" for m in range(count) for b in range(size)]


async def test_a_backlog_of_large_messages_is_held_in_ballots_not_in_messages(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INGEST_PREFETCH counts messages; a message may hold 10,000 ballots. A backlog of
    large messages was all delivered at once (the review: 85 MB grew to 328 MB); now the
    consumer holds about two batches of ballots: with batches of 200, two messages of 200,
    not the twenty the prefetch allows. (Batches and messages of 1,000 held the same, and
    took 39 s of the suite, 104 s beside other work: the ballots are the cost.)"""
    settings = settings_for(
        database_url, amqp_url=AMQP_URL, namespace=f"t-{uuid.uuid4().hex[:8]}", ingest_batch=200
    )
    queue = settings.ingest_queue_name
    count, size = 20, 200
    try:
        election_id = await _opened(settings, "Window", ["yes", "no"])
        await publish(AMQP_URL, queue, _messages(election_id, count, size))  # the backlog
        async with consuming(settings) as (services, _):
            cast = services.app.cast_ballots

            async def slow(*args: Any, **kwargs: Any) -> Any:
                # A store slower than the test database (0.1 s a batch, 2 s the backlog):
                # the backlog outlasts the samples of what is held, which take a
                # rabbitmqctl each (at full speed it was cast before the first one came).
                await asyncio.sleep(0.1)
                return await cast(*args, **kwargs)

            monkeypatch.setattr(services.app, "cast_ballots", slow)
            check = Ingest(settings, services, queue)
            held: list[int] = []

            def versions() -> dict[str, int]:
                held.append(_unacked(queue))
                return check.versions(election_id, _voters(count, size))

            counted = await until(versions, lambda v: len(v) == count * size, within=120)
            assert set(counted.values()) == {1}
            assert max(held) <= 2, held
            assert await queue_depth(queue + ".refused") == 0
    finally:
        await delete_queues(queue)


def _prefetches(queue: str) -> list[int]:
    """The prefetch of each consumer of ``queue``, as the broker applies it."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_consumers", "queue_name", "prefetch_count"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in listed.splitlines() if "\t" in line]
    return sorted(int(count) for name, count in rows if name == queue)


async def test_the_window_widens_for_small_messages_and_narrows_for_large_ones(
    database_url: str,
) -> None:
    """The broker applies the window: a consumer's prefetch doubles from 2 up to
    INGEST_PREFETCH as small messages come (so one-ballot messages are taken as many at a
    time as before), and falls to 2 once messages of a batch's size come; one consumer at
    a time (the one of the old size cancelled)."""
    settings = settings_for(
        database_url,
        amqp_url=AMQP_URL,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        ingest_batch=1000,
        ingest_prefetch=64,
    )
    queue = settings.ingest_queue_name
    small = [f"s{n}" for n in range(200)]
    try:
        election_id = await _opened(settings, "Widen", ["yes", "no"])
        await publish(AMQP_URL, queue, [(f"m-{v}", ballot(election_id, v)) for v in small])
        async with consuming(settings) as (services, _):
            check = Ingest(settings, services, queue)
            await check.until_counted(election_id, small)
            await until(lambda: _prefetches(queue), lambda p: p == [64])
            await publish(AMQP_URL, queue, _messages(election_id, 4, 1000))
            await check.until_counted(election_id, _voters(4, 1000))
            await until(lambda: _prefetches(queue), lambda p: p == [2])
    finally:
        await delete_queues(queue)


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A node whose consumer_timeout is CONSUMER_TIMEOUT, checked every half second."""
    with RabbitNode(
        tmp_path_factory.mktemp("rabbit") / "node",
        config=f"consumer_timeout = {int(CONSUMER_TIMEOUT * 1000)}\n",
        advanced="[{rabbit, [{channel_tick_interval, 500}]}].",
    ) as node:
        yield node


def _unacked_on(node: RabbitNode, queue: str) -> int:
    listed = node._ctl("-q", "list_queues", "name", "messages_unacknowledged", timeout=60).stdout
    counts = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
    return int(counts.get(queue, "0"))


def _given_up(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if "could not be settled" in record.getMessage()
    ]


async def test_a_backlog_longer_than_consumer_timeout_is_cast_without_losing_the_channel(
    database_url: str,
    rabbit: RabbitNode,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Casting the whole backlog takes longer than the broker's consumer_timeout, each
    batch far less. Delivered all at once, the messages waiting behind outlived it: the
    broker closed the channel, every message came back a delivery spent, again and again.
    Held in ballots, none waits more than about two batches."""
    caplog.set_level(logging.WARNING, logger="infra.ingest.consumer")
    settings = settings_for(
        database_url, amqp_url=rabbit.url, namespace=f"t-{uuid.uuid4().hex[:8]}", ingest_batch=200
    )
    queue = settings.ingest_queue_name
    count, size = 24, 200
    try:
        election_id = await _opened(settings, "Timeout", ["yes", "no"])
        await publish(rabbit.url, queue, _messages(election_id, count, size))
        async with consuming(settings) as (services, _):
            cast = services.app.cast_ballots

            async def slow(*args: Any, **kwargs: Any) -> Any:
                # A store slower than the test database: each batch CONSUMER_TIMEOUT / 10
                # at least, the backlog over twice CONSUMER_TIMEOUT.
                await asyncio.sleep(CONSUMER_TIMEOUT / 10)
                return await cast(*args, **kwargs)

            monkeypatch.setattr(services.app, "cast_ballots", slow)
            check = Ingest(settings, services, queue)
            counted = await until(
                lambda: check.versions(election_id, _voters(count, size)),
                lambda v: len(v) == count * size,
                within=120,
            )
            assert set(counted.values()) == {1}
            assert _given_up(caplog) == []
            await until(lambda: _unacked_on(rabbit, queue), lambda n: n == 0)
    finally:
        await delete_queues(queue, rabbit.url)


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
