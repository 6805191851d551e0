"""The ingest queue and what surrounds it, all durable.

<INGEST_QUEUE>              quorum queue of ballots (default <namespace>.votes.aggregation)
<INGEST_QUEUE>.dead-letter  direct exchange: the broker dead-letters a message there once it
                            was returned more than DELIVERY_LIMIT times (unacked when its
                            consumer's channel closed, for whatever reason, or nacked)
<INGEST_QUEUE>.refused      quorum queue where refused and dead-lettered messages wait for an
                            operator; a refusal carries the problem's detail in `x-refusal`
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# Returns of one message before the broker dead-letters it: a message that kills the
# consumer each time it is read must not loop forever. Every return counts (RabbitMQ 3.10
# quorum queues), a consumer killed or a broker restarted too, so a batch caught in many of
# those in a row lands in the refused queue. Republishing it is safe against double counting
# (message_id), not against order: where the voter's later ballot was cast meanwhile, the
# republished one revises it (README, Reliability: republish only where nothing came after).
# Refusals never get here: they are acked and forwarded explicitly.
DELIVERY_LIMIT = 10
# Ready messages the queue holds before it refuses publishes (the publisher's confirm is
# then a nack): a bounded backlog rather than a broker out of memory.
MAX_LENGTH = 5_000_000


class IngestQueues:
    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def refused(self) -> str:
        return f"{self.name}.refused"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.name}.dead-letter"

    def arguments(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-dead-letter-routing-key": self.refused,
            "x-max-length": MAX_LENGTH,
            "x-overflow": "reject-publish",
        }

    async def declare(
        self, channel: AbstractChannel
    ) -> tuple[AbstractQueue, AbstractQueue, AbstractExchange]:
        """Declare the queue, its dead-letter exchange and the refused queue (idempotent)."""
        refused, dead = await self.declare_refused(channel)
        queue = await channel.declare_queue(self.name, durable=True, arguments=self.arguments())
        return queue, refused, dead

    async def declare_refused(
        self, channel: AbstractChannel
    ) -> tuple[AbstractQueue, AbstractExchange]:
        """Declare the dead-letter exchange, the refused queue and its binding (idempotent):
        also where one was deleted under a running consumer."""
        dead = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        refused = await channel.declare_queue(
            self.refused, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await refused.bind(dead, routing_key=self.refused)
        return refused, dead

    async def delete(self, channel: AbstractChannel) -> None:
        """Remove what ``declare`` made (tests and benchmarks; never a deployment)."""
        await channel.queue_delete(self.name)
        await channel.queue_delete(self.refused)
        await channel.exchange_delete(self.dead_letter_exchange)


def delete_ingest_queues(amqp_url: str, queue: str) -> None:
    """Delete an ingest queue and its companions, from sync code or from inside a loop."""

    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await IngestQueues(queue).delete(await connection.channel())

    with ThreadPoolExecutor(1) as pool:  # the caller may be inside a running event loop
        pool.submit(asyncio.run, delete()).result()
