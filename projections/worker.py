"""A projection worker: pages from RabbitMQ when configured, the store otherwise.

With a broker, each message is applied in its own transaction and acked only after that
transaction commits. A message that cannot be decoded or applied is published to the
dead-letter exchange with the reason, then acked; the worker keeps its position and logs
loudly. A message not signed by this stack's relay (infra/broker/signing.py: anyone with
an account on the broker can publish to the events exchange) is refused unread: its
signature is checked before its body is decoded or looked up among decoded pages. Of a
message of unknown source (unsigned, or undecodable and naming no range of the relay's)
only a bounded record is dead-lettered, at most RECORDS_PER_MINUTE a minute.
Whenever the queue is quiet, the worker compares its position with the store head and
catches up from the store, so a lost or refused message or a stopped relay never loses
entries.
Without a broker, the worker follows the store directly (LISTEN/NOTIFY, polling fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import aio_pika
import psycopg
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError
from psycopg import sql

from infra import metrics
from infra.broker.outage import Outage
from infra.broker.signing import verified
from infra.broker.topology import Topology
from infra.store import EVENTS_TABLE
from infra.store.outage import StoreOutage, probe
from projections.pages import Page, contiguous_runs, decode_once, merge, named_span
from projections.runtime import TRANSIENT, GapTooLarge, ProjectionRunner
from projections.status import UNSIGNED_ROW

log = logging.getLogger(__name__)
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


@dataclass
class WorkerStatus:
    """Running figures, read by metrics and the status page."""

    position: int = 0
    applied_events: int = 0
    duplicates: int = 0
    rejected: int = 0
    unsigned: int = 0  # messages refused unread: not signed by this stack's relay
    broker_connected: bool = False
    last_error: str | None = None


class ProjectionWorker:
    def __init__(
        self,
        runner: ProjectionRunner,
        database_url: str,
        *,
        amqp_url: str | None = None,
        topology: Topology | None = None,
        page_key: bytes | None = None,
        idle_interval: float = 1.0,
        prefetch: int = 256,
        linger: float = 0.03,
    ) -> None:
        self.runner = runner
        self.database_url = database_url
        self.amqp_url = amqp_url
        self.topology = topology
        self.page_key = page_key  # what the relay signs pages with; needed with a broker
        self.idle_interval = idle_interval
        self.prefetch = prefetch
        self.linger = linger
        self.status = WorkerStatus()
        self._outage: Outage | None = None
        self._caught_up_at = float("-inf")  # (loop time)
        self._unsigned_said_at = float("-inf")
        self._unsigned_unsaid = 0
        self._unsigned_said = False
        self._unrecorded = 0  # refused unsigned since last said, not dead-lettered
        self._records_since = float("-inf")  # (loop time) this minute's window began
        self._records = 0  # records dead-lettered in this minute's window
        # (the series exists, at 0, wherever a worker runs: the status tells "none refused"
        # from "not counted in this process")
        metrics.PROJECTION_UNSIGNED.labels(runner.name)
        metrics.PROJECTION_UNRECORDED.labels(runner.name)

    @property
    def name(self) -> str:
        return self.runner.name

    async def run(self) -> None:
        """Run until cancelled, riding out database and broker outages.

        The broker away: said once (``Outage``), its connection tried again after 1 s
        doubling to 10 s, and the read model kept moving from the store meanwhile. The
        store away: said once (``StoreOutage``), and waited for with a probe of its own
        (1 s doubling to 5 s), not in the pool, whose retries back off for minutes."""
        outage = (
            None if self.amqp_url is None else Outage(self.amqp_url, f"projection {self.name}", log)
        )
        self._outage = outage
        store = StoreOutage(
            self.database_url, f"projection {self.name}", log, first=self.idle_interval
        )
        while True:
            try:
                await self.runner.prepare()
                await self._catch_up()
                store.connected()
                if self.amqp_url is None:
                    await self._follow_store()
                else:
                    await self._consume()
            except asyncio.CancelledError:
                raise
            except (
                *TRANSIENT,
                aio_pika.exceptions.AMQPError,
                ChannelInvalidStateError,
                OSError,
            ) as error:
                self.status.last_error = str(error)
                if outage is not None and not isinstance(error, TRANSIENT):
                    # (a database outage is not the broker's: it says nothing about it)
                    self.status.broker_connected = False
                    metrics.BROKER_CONNECTED.labels(self.name).set(0)
                    await self._follow_store_for(outage.failed(error))
                    continue
                if isinstance(error, TRANSIENT):
                    await self._wait_for_store(store, error)
                    continue
                log.warning("projection %s interrupted (%s); retrying", self.name, error)
                await asyncio.sleep(self.idle_interval)

    async def _wait_for_store(self, store: StoreOutage, error: BaseException) -> None:
        """Say the outage (once), then probe the store until it answers. (Waiting in the
        pool instead, the worker's request had the pool retry with a backoff of its own,
        1, 2, 4, 8, 16 s ...: after 40 s away the read model came back 20 s late. Asked
        once the store answers, the pool connects at once.)"""
        while True:
            await asyncio.sleep(store.failed(error))
            try:
                await probe(self.database_url)
            except TRANSIENT as failed:
                error = failed
                continue
            return  # ``connected`` once the read model has moved again

    async def _follow_store_for(self, seconds: float) -> None:
        """Catch up from the store every ``idle_interval`` for ``seconds``: the broker's
        backoff must not hold the read model back."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while (left := until - loop.time()) > 0:
            await asyncio.sleep(min(self.idle_interval, left))
            try:
                await self._catch_up()
            except TRANSIENT:
                return  # the store away too: the loop's next turn says so

    async def _catch_up(self) -> None:
        self._caught_up_at = asyncio.get_running_loop().time()
        applied = await self.runner.catch_up()
        if applied:
            self.status.applied_events += applied
        self.status.position = await self.runner.position()

    async def _follow_store(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
            while True:
                await self._catch_up()
                with contextlib.suppress(TimeoutError):
                    async for _ in conn.notifies(timeout=self.idle_interval, stop_after=1):
                        pass

    async def _consume(self) -> None:
        assert self.amqp_url is not None
        assert self.topology is not None
        assert self.page_key is not None, "a worker reading the broker needs the page key"
        connection = await aio_pika.connect(
            self.amqp_url,
            client_properties={"connection_name": f"{self.topology.namespace}-{self.name}"},
        )
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            _, dead_letters, queues = await self.topology.declare(channel, [self.name])
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            closed = asyncio.Event()
            connection.close_callbacks.add(lambda *_: closed.set())
            await queues[self.name].consume(inbox.put)
            self.status.broker_connected = True
            metrics.BROKER_CONNECTED.labels(self.name).set(1)
            if self._outage is not None:
                self._outage.connected()
            log.info("projection %s consuming %s", self.name, self.topology.queue(self.name))
            while not closed.is_set():
                try:
                    # (asyncio.timeout(), not wait_for: Python 3.11's wait_for swallows a
                    # stop that comes as a page arrives, and the worker would carry on.)
                    async with asyncio.timeout(self.idle_interval):
                        first = await inbox.get()
                except TimeoutError:
                    await self._catch_up()
                    if self._unsigned_say_due():  # (the last of a flood, once it is over)
                        await self._say_unsigned()
                    continue
                # Under load, pages queue up: wait a moment, take what is waiting and apply
                # contiguous pages together, in one transaction rather than one each. The
                # cost per transaction (locks, tracking, commit) is what bounds the worker.
                await asyncio.sleep(self.linger)
                messages = [first]
                while len(messages) < self.prefetch and not inbox.empty():
                    messages.append(inbox.get_nowait())
                await self._handle(messages, dead_letters)
            raise aio_pika.exceptions.AMQPConnectionError("broker connection closed")

    async def _handle(
        self, messages: list[AbstractIncomingMessage], dead_letters: AbstractExchange
    ) -> None:
        assert self.page_key is not None
        pages: list[Page] = []
        refused = False
        for message in messages:
            # Checked first: nothing of a page not the relay's is read, cached or applied.
            signature = verified(self.page_key, message)
            if signature is None:
                await self._refuse_unsigned(message, dead_letters)
                refused = True
                continue
            try:
                pages.append(Page(message, *decode_once(signature, message.body)))
            except (ValueError, KeyError, TypeError) as error:
                span = named_span(message)
                if span is None:  # not a page of the relay's: nothing says what it holds
                    reason = f"undecodable page: {error}"
                    await self._refuse(message, dead_letters, reason, None, None, bounded=True)
                    continue
                # A relay page whose entries do not decode (an unreadable entry makes the
                # whole body invalid JSON): its range is in its name, so read it from the
                # store, where each entry is decoded, and set aside, on its own.
                log.warning(
                    "projection %s: page %s-%s does not decode (%s); reading it from the store",
                    self.name,
                    *span,
                    error,
                )
                pages.append(Page(message, *span, None))
        for run in contiguous_runs(pages):
            await self._apply(run, dead_letters)
        if refused and self._catch_up_due():
            # An old relay's unsigned pages (a rolling upgrade) are refused too: what they
            # held is read from the store, at most once per idle interval however many
            # pages are refused (the store's reads do not grow with a flood of forgeries).
            await self._catch_up()

    def _catch_up_due(self) -> bool:
        return asyncio.get_running_loop().time() - self._caught_up_at >= self.idle_interval

    async def _refuse_unsigned(
        self, message: AbstractIncomingMessage, dead_letters: AbstractExchange
    ) -> None:
        """Refuse a message this stack's relay did not sign, unread: counted, said at most
        once a minute (``_say_unsigned``: one row in the database a minute, not one per
        message: a flood from the broker does not become writes to the store), and at most
        RECORDS_PER_MINUTE of them a minute dead-lettered, each as a bounded record
        (``_record``), for an operator to see what is arriving.

        Dead-lettered whole and unbounded, a flood of forged pages was kept for good in every
        projection's dead-letter queue (3,000 pages of 100 KB: 300 MB sent, 900 MB kept),
        until the broker's disk or memory alarm blocked the workers' own publishes, and
        with them the catch-up from the store (the merge review)."""
        if not self._record_due():
            metrics.PROJECTION_UNRECORDED.labels(self.name).inc()
            self._unrecorded += 1
        elif not await self._keep_record(self._record(message, UNSIGNED_REASON), dead_letters):
            self._unrecorded += 1
        await message.ack()
        self.status.unsigned += 1
        metrics.PROJECTION_UNSIGNED.labels(self.name).inc()
        self._unsigned_unsaid += 1
        if self._unsigned_say_due():
            await self._say_unsigned()

    def _unsigned_say_due(self) -> bool:
        return bool(self._unsigned_unsaid) and (
            asyncio.get_running_loop().time() - self._unsigned_said_at >= UNSIGNED_SAID_EVERY
        )

    async def _say_unsigned(self) -> None:
        """Say how many messages were refused for their signature since last said: in the
        log, and as one row of ``projection_rejections`` (UNSIGNED_ROW), which is how the
        operator's status (GET /api/admin/projections, `cardinal projections`) counts them
        whichever process the worker runs in: at most one write a minute, however many."""
        since = "last said" if self._unsigned_said else "it started"
        try:
            async with self.runner.pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO projection_rejections "
                    "(name, message_after, message_last, reason) VALUES (%s, NULL, NULL, %s)",
                    (
                        self.name,
                        f"{UNSIGNED_ROW}{self._unsigned_unsaid} message(s) not signed by this "
                        f"stack's relay refused unread since {since}; {self._unrecorded} of "
                        "them only counted, not dead-lettered",
                    ),
                )
        except TRANSIENT:  # the store away: said with the next, a minute on (nothing lost)
            self._unsigned_said_at = asyncio.get_running_loop().time()
            return
        log.warning(
            "projection %s REFUSED %d message(s) not signed by this stack's relay "
            "(an old relay, another stack's, or a forgery by someone with an account on "
            "the broker) since %s, unread; %d of them only counted, not dead-lettered "
            "(at most %d records a minute, each its headers and first %d bytes); what "
            "the log holds is read from the store (said at most every %g s)",
            self.name,
            self._unsigned_unsaid,
            since,
            self._unrecorded,
            RECORDS_PER_MINUTE,
            RECORD_BODY_BYTES,
            UNSIGNED_SAID_EVERY,
        )
        self._unsigned_said_at = asyncio.get_running_loop().time()
        self._unsigned_said = True
        self._unsigned_unsaid = 0
        self._unrecorded = 0

    def _record_due(self) -> bool:
        """Whether another record may be dead-lettered this minute (a fixed window of
        RECORD_WINDOW seconds from the first record)."""
        now = asyncio.get_running_loop().time()
        if now - self._records_since >= RECORD_WINDOW:
            self._records_since, self._records = now, 0
        if self._records >= RECORDS_PER_MINUTE:
            return False
        self._records += 1
        return True

    def _record(self, message: AbstractIncomingMessage, reason: str) -> aio_pika.Message:
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

    async def _keep_record(self, record: aio_pika.Message, dead_letters: AbstractExchange) -> bool:
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

    async def _apply(self, run: list[Page], dead_letters: AbstractExchange) -> None:
        after, last = run[0].after, max(page.last for page in run)
        events = merge(run)
        try:
            try:
                applied = await self.runner.apply_page(after, last, events)
            except GapTooLarge:
                await self._catch_up()
                applied = await self.runner.apply_page(after, last, events)
        except TRANSIENT:
            for page in run:
                await page.message.nack(requeue=True)
            raise
        except Exception as error:  # pages this projection cannot apply: park them, say so
            if len(run) > 1:  # find the culprit: apply the pages one at a time
                for page in run:
                    await self._apply([page], dead_letters)
                return
            reason = f"{type(error).__name__}: {error}"
            await self._refuse(run[0].message, dead_letters, reason, after, last)
            return
        for page in run:
            await page.message.ack()
        self.status.position = applied.position
        if applied.duplicate:
            self.status.duplicates += len(run)
        else:
            self.status.applied_events += applied.events

    async def _refuse(
        self,
        message: AbstractIncomingMessage,
        dead_letters: AbstractExchange,
        reason: str,
        after: int | None,
        last: int | None,
        *,
        bounded: bool = False,
    ) -> None:
        """Dead-letter a message, with a row in ``projection_rejections``. ``bounded``: one
        that names no range of the relay's (whatever its size), kept as a bounded record,
        at most RECORDS_PER_MINUTE a minute (the rest only counted and logged)."""
        log.error(
            "projection %s REFUSED a message (after=%s, last=%s) and dead-lettered it: %s; "
            "its position stays at %d",
            self.name,
            after,
            last,
            reason,
            self.status.position,
        )
        if not bounded:
            await dead_letters.publish(
                aio_pika.Message(
                    message.body,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={
                        "x-cardinal-reason": reason[:1000],
                        "x-cardinal-projection": self.name,
                    },
                ),
                routing_key=self.name,
            )
        elif self._record_due():
            await self._keep_record(self._record(message, reason), dead_letters)
        else:
            metrics.PROJECTION_UNRECORDED.labels(self.name).inc()
        async with self.runner.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO projection_rejections (name, message_after, message_last, reason) "
                "VALUES (%s, %s, %s, %s)",
                (self.name, after, last, reason),
            )
        await message.ack()
        self.status.rejected += 1
        metrics.PROJECTION_REJECTED.labels(self.name).inc()
        self.status.last_error = reason


def _cut(value: object, limit: int = RECORD_HEADER_CHARS) -> str | int | float | bool:
    """A header value of a record: numbers and flags as they are, anything else as text
    cut to ``limit`` characters (a forger chooses headers as freely as bodies)."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        value = value[: limit * 4].decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)[: limit * 4]
    return text[:limit]


UNSIGNED_REASON = "not signed by this stack's relay (x-cardinal-page-mac): not read"
