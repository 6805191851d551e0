"""Publishing ballots to the ingest queue, each message confirmed by the broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aio_pika
import orjson

from infra.ingest.queues import IngestQueues


async def publish(
    amqp_url: str,
    queue: str,
    messages: Iterable[tuple[str, Any]],
    *,
    window: int = 2000,
) -> int:
    """Publish ``(message_id, body)`` pairs (a body is JSON-encoded unless it is bytes),
    persistent, with publisher confirms: returns once the broker confirmed every one.
    ``window`` publishes are in flight at a time. Declares the queue first, so that no
    message published before the consumer starts is lost. A message the broker did not
    take raises: a nack (``aiormq.exceptions.DeliveryError``), and equally a return
    (``PublishError``, its subclass: routed to no queue, the queue deleted meanwhile), which
    a channel without ``on_return_raises`` confirmed as sent."""
    connection = await aio_pika.connect(amqp_url, client_properties={"connection_name": "publish"})
    sent = 0
    async with connection:
        # A return raises: unroutable, a mandatory message would otherwise be confirmed.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await IngestQueues(queue).declare(channel)
        exchange = channel.default_exchange
        pending: list[Any] = []
        for message_id, body in messages:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            pending.append(
                exchange.publish(
                    aio_pika.Message(
                        data,
                        message_id=message_id,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue,
                    mandatory=True,
                )
            )
            if len(pending) >= window:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending = []
        await asyncio.gather(*pending)
        sent += len(pending)
    return sent


async def cast_with_receipts(
    amqp_url: str, queue: str, messages: list[tuple[str, Any]], *, within: float = 60.0
) -> dict[str, Any]:
    """Publish ballots (confirmed) asking for answers (reply_to, correlation_id = the
    message_id), and return each message's answer by message_id: a receipt or a problem.
    Raises TimeoutError if an answer is missing after ``within`` seconds."""
    answers: dict[str, Any] = {}
    done = asyncio.Event()
    connection = await aio_pika.connect(amqp_url, client_properties={"connection_name": "smoke"})
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await IngestQueues(queue).declare(channel)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)

        async def answered(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            answers[str(message.correlation_id)] = orjson.loads(message.body)
            if len(answers) >= len(messages):
                done.set()

        await replies.consume(answered, no_ack=True)
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        orjson.dumps(body),
                        message_id=message_id,
                        correlation_id=message_id,
                        reply_to=replies.name,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue,
                    mandatory=True,
                )
                for message_id, body in messages
            )
        )
        if messages:
            await asyncio.wait_for(done.wait(), within)
    return answers
