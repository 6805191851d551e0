"""Messages of unknown source, as one projection worker meets them: not signed by this
stack's relay, or undecodable and naming no range of the relay's.

Each is counted; those refused for their signature are said at most once a minute, with how
many since, in the log and as one row of ``projection_rejections`` (UNSIGNED_ROW); and at
most RECORDS_PER_MINUTE of them a minute are dead-lettered, each as a bounded record.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING, Any

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage

from infra import metrics
from projections.runtime import TRANSIENT, ProjectionRunner
from projections.status import UNSIGNED_ROW

if TYPE_CHECKING:
    from projections.worker import WorkerStatus

# (said as the worker's, by the logger's name operators know it by)
log = logging.getLogger("projections.worker")
# Pages refused for their signature are said at most this often (seconds) by each worker,
# with how many since: a flood of forged pages must not flood the log.
UNSIGNED_SAID_EVERY = 60.0
# A message of unknown source (not signed by the relay, or undecodable and naming no range
# of the relay's) is dead-lettered as a record of at most this much of its body, its
# properties and headers (at most RECORD_HEADERS of them, each cut to RECORD_HEADER_CHARS),
# and its size; at most RECORDS_PER_MINUTE such records a minute by each worker, the rest
# only counted (cardinal_projection_unrecorded_total) and said in the warning. A flood of
# forged pages then keeps at most RECORDS_PER_MINUTE * ~4 KiB a minute per projection in
# the dead-letter queues, whatever its size.
# (api/documents.py's ProjectionStatus.unsigned says these figures.)
RECORD_BODY_BYTES = 1024
RECORD_HEADERS = 16
RECORD_HEADER_CHARS = 256
RECORDS_PER_MINUTE = 10
RECORD_WINDOW = 60.0  # seconds: the minute of RECORDS_PER_MINUTE
RECORD_PUBLISH_WITHIN = 5.0  # seconds: a broker that takes longer keeps no record

UNSIGNED_REASON = "not signed by this stack's relay (x-cardinal-page-mac): not read"


class Strangers:
    """One worker's messages of unknown source: its counts, its minute's records, and when
    it last said them."""

    def __init__(self, runner: ProjectionRunner, status: WorkerStatus) -> None:
        self.runner = runner
        self.status = status  # the worker's: ``unsigned`` counts the refused
        self.said_at = float("-inf")
        self.unsaid = 0
        self.said = False
        self.unrecorded = 0  # refused unsigned since last said, not dead-lettered
        self.records_since = float("-inf")  # (loop time) this minute's window began
        self.records = 0  # records dead-lettered in this minute's window
        # (the series exists, at 0, wherever a worker runs: the status tells "none refused"
        # from "not counted in this process")
        metrics.PROJECTION_UNSIGNED.labels(runner.name)
        metrics.PROJECTION_UNRECORDED.labels(runner.name)

    @property
    def name(self) -> str:
        return self.runner.name

    async def refuse_unsigned(
        self, message: AbstractIncomingMessage, dead_letters: AbstractExchange
    ) -> None:
        """Refuse a message this stack's relay did not sign, unread: counted, said at most
        once a minute (``say``: one row in the database a minute, not one per message: a
        flood from the broker does not become writes to the store), and at most
        RECORDS_PER_MINUTE of them a minute dead-lettered, each as a bounded record
        (``record``), for an operator to see what is arriving.

        Dead-lettered whole and unbounded, a flood of forged pages was kept for good in every
        projection's dead-letter queue (3,000 pages of 100 KB: 300 MB sent, 900 MB kept),
        until the broker's disk or memory alarm blocked the workers' own publishes, and
        with them the catch-up from the store (the merge review)."""
        if not self.record_due():
            metrics.PROJECTION_UNRECORDED.labels(self.name).inc()
            self.unrecorded += 1
        elif not await self.keep_record(self.record(message, UNSIGNED_REASON), dead_letters):
            self.unrecorded += 1
        await message.ack()
        self.status.unsigned += 1
        metrics.PROJECTION_UNSIGNED.labels(self.name).inc()
        self.unsaid += 1
        if self.say_due():
            await self.say()

    def say_due(self) -> bool:
        return bool(self.unsaid) and (
            asyncio.get_running_loop().time() - self.said_at >= UNSIGNED_SAID_EVERY
        )

    async def say(self) -> None:
        """Say how many messages were refused for their signature since last said: in the
        log, and as one row of ``projection_rejections`` (UNSIGNED_ROW), which is how the
        operator's status (GET /api/admin/projections, `cardinal projections`) counts them
        whichever process the worker runs in: at most one write a minute, however many."""
        since = "last said" if self.said else "it started"
        try:
            await count_row(
                self.runner,
                f"{UNSIGNED_ROW}{self.unsaid} message(s) not signed by this stack's relay "
                f"refused unread since {since}; {self.unrecorded} of them only counted, not "
                "dead-lettered",
            )
        except TRANSIENT:  # the store away: said with the next, a minute on (nothing lost)
            self.said_at = asyncio.get_running_loop().time()
            return
        log.warning(
            "projection %s REFUSED %d message(s) not signed by this stack's relay "
            "(an old relay, another stack's, or a forgery by someone with an account on "
            "the broker) since %s, unread; %d of them only counted, not dead-lettered "
            "(at most %d records a minute, each its headers and first %d bytes); what "
            "the log holds is read from the store (said at most every %g s)",
            self.name,
            self.unsaid,
            since,
            self.unrecorded,
            RECORDS_PER_MINUTE,
            RECORD_BODY_BYTES,
            UNSIGNED_SAID_EVERY,
        )
        self.said_at = asyncio.get_running_loop().time()
        self.said = True
        self.unsaid = 0
        self.unrecorded = 0

    def record_due(self) -> bool:
        """Whether another record may be dead-lettered this minute (a fixed window of
        RECORD_WINDOW seconds from the first record)."""
        now = asyncio.get_running_loop().time()
        if now - self.records_since >= RECORD_WINDOW:
            self.records_since, self.records = now, 0
        if self.records >= RECORDS_PER_MINUTE:
            return False
        self.records += 1
        return True

    def record(self, message: AbstractIncomingMessage, reason: str) -> aio_pika.Message:
        """What is kept of a message of unknown source: its properties and headers (each
        cut to RECORD_HEADER_CHARS), its size, and at most RECORD_BODY_BYTES of its body.
        Never the whole of it: whoever can publish to the events exchange chooses its size."""
        said: dict[str, Any] = {
            "x-cardinal-reason": reason[:1000],
            "x-cardinal-projection": self.name,
            "x-cardinal-size": len(message.body),
            "x-cardinal-body-kept": min(len(message.body), RECORD_BODY_BYTES),
        }
        properties = {
            "message_id": message.message_id,
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "correlation_id": message.correlation_id,
            "type": message.type,
            "app_id": message.app_id,
            "user_id": message.user_id,
            "timestamp": message.timestamp,
            "exchange": message.exchange,
            "routing_key": message.routing_key,
        }
        for key, value in properties.items():
            if value is not None:
                said[f"x-cardinal-original-{key}"] = _cut(value)
        original = message.headers or {}
        for key in itertools.islice(original, RECORD_HEADERS):
            said[f"x-cardinal-header-{_cut(key, 64)}"] = _cut(original[key])
        if len(original) > RECORD_HEADERS:
            said["x-cardinal-headers-left-out"] = len(original) - RECORD_HEADERS
        return aio_pika.Message(
            message.body[:RECORD_BODY_BYTES],
            content_type="application/octet-stream",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=said,
        )

    async def keep_record(self, record: aio_pika.Message, dead_letters: AbstractExchange) -> bool:
        """Dead-letter a record of a message of unknown source, waiting at most
        RECORD_PUBLISH_WITHIN for the broker: one whose disk or memory alarm blocks
        publishers must not hold the worker, and its catch-up from the store, for a record.
        False (and counted as unrecorded) for one not confirmed in time, which the broker
        may still keep."""
        try:
            async with asyncio.timeout(RECORD_PUBLISH_WITHIN):
                await dead_letters.publish(record, routing_key=self.name)
        except TimeoutError:
            metrics.PROJECTION_UNRECORDED.labels(self.name).inc()
            return False
        return True


def _cut(value: object, limit: int = RECORD_HEADER_CHARS) -> str | int | float | bool:
    """A header value of a record: numbers and flags as they are, anything else as text
    cut to ``limit`` characters (a forger chooses headers as freely as bodies)."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        value = value[: limit * 4].decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)[: limit * 4]
    return text[:limit]


async def count_row(runner: ProjectionRunner, reason: str) -> None:
    """One row of ``projection_rejections`` that counts refused messages (no range of its
    own): how the operators' status counts unsigned and stale pages, whichever process the
    worker runs in. Raises what the store meets (TRANSIENT: the caller writes it later)."""
    async with runner.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO projection_rejections "
            "(name, message_after, message_last, reason) VALUES (%s, NULL, NULL, %s)",
            (runner.name, reason),
        )
