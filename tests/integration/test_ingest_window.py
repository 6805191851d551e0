"""`cardinal ingest` brings the broker's consumers to its window's size even where a resize
is cut short: by a broker outage (the old prefetch was kept for good) or by a cancel that
failed (the old consumer was kept for good, their prefetches adding up). Against a RabbitMQ
node of the test's own (stopped and started again) and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import aiormq
import pytest

from infra.ingest import consumer as ingest_consumer
from infra.ingest.publisher import publish
from tests.integration.test_ingest import Ingest, _opened, ballot, consuming, delete_queues, until
from tests.rabbit_node import RabbitNode
from tests.servers import settings_for

LARGE = 900  # ballots in a large message: the window of 2,000 ballots takes 2 of them


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    with RabbitNode(tmp_path_factory.mktemp("rabbit") / "node") as node:
        yield node


async def _prefetches(node: RabbitNode, queue: str) -> list[int]:
    """The prefetch of each consumer of ``queue``, as the broker applies it."""
    listed = await asyncio.to_thread(
        node._ctl, "-q", "list_consumers", "queue_name", "prefetch_count", timeout=60
    )
    rows = [line.split("\t") for line in listed.stdout.splitlines() if "\t" in line]
    return sorted(int(count) for name, count in rows if name == queue)


def _large(election_id: UUID, count: int) -> list[tuple[str, Any]]:
    return [
        (
            f"large-{m}",
            {
                "election_id": str(election_id),
                "ballots": [{"voter_id": f"l{m}-{b}", "choice": "yes"} for b in range(LARGE)],
            },
        )
        for m in range(count)
    ]


def _settings(database_url: str, rabbit: RabbitNode) -> Any:
    return settings_for(
        database_url,
        amqp_url=rabbit.url,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        ingest_batch=1000,
        ingest_prefetch=64,
    )


async def test_a_shrink_cut_short_by_a_broker_outage_is_finished_after_it(
    database_url: str, rabbit: RabbitNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker stopped as the window narrows from 64 to 2 (large messages after small
    ones), and started again: the prefetch's set_qos, waiting for the reconnection, was
    cut short by its timeout and never recorded, the robust channel came back with the
    old consumer of 64, and nothing resized it again (the merge review: 31 messages of
    900 ballots held while the window said 2). The resize is retried until the broker's
    consumer has the window's prefetch; every ballot is counted once."""
    settings = _settings(database_url, rabbit)
    queue = settings.ingest_queue_name
    small = [f"s{n}" for n in range(300)]
    # 16 large messages: 8 windows of 2 after the shrink, enough for the consumer of 64
    # to hold them all (the bug) and for the resize to be seen; 40 (36,000 ballots) took
    # 53 s on a loaded machine and over 200 s, past the patience, beside a review's load.
    large = [f"l{m}-{b}" for m in range(16) for b in range(LARGE)]
    armed, published = asyncio.Event(), asyncio.Event()
    starts: list[asyncio.Task[None]] = []
    resize = ingest_consumer.Ingester._resize

    async def cut_short(self: ingest_consumer.Ingester) -> None:
        if armed.is_set() and self._window.size == 2 and not starts:
            await published.wait()
            # The broker away for the whole of this resize, and started only after it gave
            # up: its set_qos is cut short whatever the machine's speed (started at once,
            # the node came back within the set_qos's wait and the old code passed too).
            await asyncio.to_thread(rabbit.stop)
            try:
                await resize(self)
            finally:
                starts.append(asyncio.create_task(asyncio.to_thread(rabbit.start)))
            return
        await resize(self)

    monkeypatch.setattr(ingest_consumer.Ingester, "_resize", cut_short)
    try:
        election_id = await _opened(settings, "Outage", ["yes", "no"])
        await publish(rabbit.url, queue, [(f"m-{v}", ballot(election_id, v)) for v in small])
        async with consuming(settings) as (services, ingester):
            check = Ingest(settings, services, queue)
            await check.until_counted(election_id, small)
            await until(lambda: _prefetches(rabbit, queue), lambda p: p == [64])
            armed.set()
            await publish(rabbit.url, queue, _large(election_id, 16))
            published.set()
            await until(lambda: bool(starts), bool, within=60)
            await starts[0]  # the node is up again
            counted = await until(
                lambda: check.versions(election_id, large),
                lambda v: len(v) == len(large),
                within=240,
            )
            assert set(counted.values()) == {1}
            assert ingester._window.size == 2
            await until(lambda: _prefetches(rabbit, queue), lambda p: p == [2], within=30)
    finally:
        for start in starts:
            await start
        await delete_queues(queue, rabbit.url)


async def test_a_cancel_that_failed_is_retried(
    database_url: str, rabbit: RabbitNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel of the old consumer that fails before its frame is sent (forced here): the
    robust queue has already forgotten the consumer, the broker still runs it, and it was
    kept for good, a consumer more at each such failure. The cancel is retried: one
    consumer is left, with the window's prefetch."""
    settings = _settings(database_url, rabbit)
    queue = settings.ingest_queue_name
    small = [f"c{n}" for n in range(300)]
    failed: list[str] = []
    basic_cancel = aiormq.Channel.basic_cancel

    async def fail_once(self: aiormq.Channel, consumer_tag: str, **kwargs: Any) -> Any:
        if not failed:
            failed.append(consumer_tag)
            raise ConnectionError("cancel failed before its frame was sent (test)")
        return await basic_cancel(self, consumer_tag, **kwargs)

    monkeypatch.setattr(aiormq.Channel, "basic_cancel", fail_once)
    try:
        election_id = await _opened(settings, "Cancel", ["yes", "no"])
        await publish(rabbit.url, queue, [(f"m-{v}", ballot(election_id, v)) for v in small])
        async with consuming(settings) as (services, ingester):
            check = Ingest(settings, services, queue)
            assert set((await check.until_counted(election_id, small)).values()) == {1}
            assert failed
            assert ingester._window.size == 64
            await until(lambda: _prefetches(rabbit, queue), lambda p: p == [64], within=30)
    finally:
        await delete_queues(queue, rabbit.url)
