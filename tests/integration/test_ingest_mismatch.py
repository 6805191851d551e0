"""A queue pre-declared under the ingest queue's name with other arguments (the deployment
guide's `rabbitmqadmin declare queue name=votes.aggregation durable=true`: a classic queue)
makes every declare fail with PRECONDITION_FAILED. `cardinal ingest` logged a traceback at
each retry, every 2 s (docs review: 228 lines in 10 s); now one ERROR line saying what
differs and what to do, and it keeps trying, so it consumes once the queue is gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any, cast

import aio_pika
import pytest

from infra.ingest.consumer import Ingester
from infra.ingest.service import consume_forever
from tests.e2e.stack import AMQP_URL
from tests.integration.test_ingest import delete_queues


async def test_a_classic_queue_in_the_way_is_said_once_and_retried_until_deleted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = f"test-{uuid.uuid4().hex[:8]}.votes.aggregation"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        await (await connection.channel()).declare_queue(queue, durable=True)  # classic
    consumer = Ingester(cast(Any, None), cast(Any, None), AMQP_URL, queue)
    runs = 0
    run = consumer.run
    retried = asyncio.Event()

    async def counted() -> None:
        nonlocal runs
        runs += 1
        if runs >= 2:
            retried.set()
        await run()

    consumer.run = counted  # type: ignore[method-assign]
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(consume_forever(consumer))
    try:
        async with asyncio.timeout(15):
            await retried.wait()  # retried (every 2 s)
        # (The ingest's lines only: the worker's session stack runs in this loop, and its
        # sealer said its session had ended once, after a test before this one held the
        # loop past the sealer's idle limit: fresh-clone run at 446d757.)
        said = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("infra.ingest")
        ]
        assert [r.exc_info for r in said] == [None]  # one line, no traceback
        line = said[0].getMessage()
        assert said[0].levelno == logging.ERROR
        assert f"queue {queue}" in line
        assert "inequivalent arg 'x-dead-letter-exchange'" in line  # the broker's words
        assert "delete it" in line
        assert "INGEST_QUEUE" in line
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            await (await connection.channel()).queue_delete(queue)
        async with asyncio.timeout(10):
            await consumer.ready.wait()  # declared as it should be, and consuming
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)  # bounded: a consumer that does not stop fails
        await delete_queues(queue)
