"""RabbitMQ names and declarations, all prefixed by CARDINAL_NAMESPACE.

<ns>.events                     fanout exchange the relay publishes log pages to
<ns>.<projection>               quorum queue per projection (single active consumer)
<ns>.dead-letter                direct exchange for refused messages
<ns>.<projection>.dead-letter   where a projection's refused messages wait for an operator
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

# A message redelivered this many times goes to the dead-letter queue by the broker itself,
# should a worker crash on it before it can refuse it explicitly.
DELIVERY_LIMIT = 20


class Topology:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dead-letter"

    def queue(self, projection: str) -> str:
        return f"{self.namespace}.{projection}"

    def dead_letter_queue(self, projection: str) -> str:
        return f"{self.namespace}.{projection}.dead-letter"

    async def declare(
        self, channel: AbstractChannel, projections: Iterable[str]
    ) -> tuple[AbstractExchange, AbstractExchange, dict[str, AbstractQueue]]:
        """Declare everything (idempotent); return the two exchanges and the queues."""
        events = await channel.declare_exchange(
            self.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        queues: dict[str, AbstractQueue] = {}
        for name in projections:
            queue = await channel.declare_queue(
                self.queue(name),
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-single-active-consumer": True,
                    "x-dead-letter-exchange": self.dead_letter_exchange,
                    "x-dead-letter-routing-key": name,
                    "x-delivery-limit": DELIVERY_LIMIT,
                },
            )
            await queue.bind(events)
            parked = await channel.declare_queue(
                self.dead_letter_queue(name), durable=True, arguments={"x-queue-type": "quorum"}
            )
            await parked.bind(dead, routing_key=name)
            queues[name] = queue
        return events, dead, queues

    async def delete(self, channel: AbstractChannel, projections: Iterable[str]) -> None:
        """Remove everything ``declare`` made (test runs and benchmarks clean up after
        themselves; a deployment never calls this)."""
        for name in projections:
            await channel.queue_delete(self.queue(name))
            await channel.queue_delete(self.dead_letter_queue(name))
        await channel.exchange_delete(self.events_exchange)
        await channel.exchange_delete(self.dead_letter_exchange)


def delete_namespace(amqp_url: str, namespace: str, projections: Iterable[str]) -> None:
    """Delete a namespace's exchanges and queues, from sync code or from inside a loop."""

    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            await Topology(namespace).delete(await connection.channel(), projections)

    # A thread of its own: the caller may be inside a running event loop.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, delete()).result()
