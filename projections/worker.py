"""A projection worker: pages from RabbitMQ when configured, the store otherwise.

With a broker, each message is applied in its own transaction and acked only after that
transaction commits. A message that cannot be decoded or applied is published to the
dead-letter exchange with the reason, then acked; the worker keeps its position and logs
loudly. A message not signed by this stack's relay (infra/broker/signing.py: anyone with
an account on the broker can publish to the events exchange) is refused unread: its
signature is checked before its body is decoded or looked up among decoded pages. Of a
message of unknown source (unsigned, or undecodable and naming no range of the relay's)
only a bounded record is dead-lettered, at most RECORDS_PER_MINUTE a minute
(projections/strangers.py).
Whenever the queue is quiet, the worker compares its position with the store head and
catches up from the store, so a lost or refused message or a stopped relay never loses
entries.
Without a broker, the worker follows the store directly (LISTEN/NOTIFY, polling fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

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
from infra.store.incarnation import Incarnation, incarnation
from infra.store.outage import StoreOutage, probe
from projections.pages import Page, contiguous_runs, decode_once, merge, named_span
from projections.runtime import TRANSIENT, BeyondTheLog, GapTooLarge, ProjectionRunner
from projections.status import STALE_ROW
from projections.strangers import Strangers, count_row

log = logging.getLogger(__name__)
# Relay pages of another store refused are written to projection_rejections (the operators'
# status) at most this often (seconds), with how many since: a queue full of them after a
# restore is one row a minute, not one each.
STALE_WRITTEN_EVERY = 60.0


@dataclass
class WorkerStatus:
    """Running figures, read by metrics and the status page."""

    position: int = 0
    applied_events: int = 0
    duplicates: int = 0
    rejected: int = 0
    unsigned: int = 0  # messages refused unread: not signed by this stack's relay
    # relay pages refused as not this store's: of another incarnation, or past its head
    stale: int = 0
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
        self.strangers = Strangers(runner, self.status)  # messages of unknown source
        # This store's incarnation (infra/store/incarnation.py), read as the worker catches
        # up (at its start, after any outage, and whenever its queue is quiet); pages of
        # another are refused (``_refuse_stale``), each kind said once.
        self.incarnation: Incarnation | None = None
        self._stale_said: set[str] = set()
        # Those refused since last written to ``projection_rejections`` (STALE_ROW), which is
        # how the operators' status counts them: at most one row every STALE_WRITTEN_EVERY.
        self._stale_unwritten = 0
        self._stale_written_at = float("-inf")  # (loop time)
        # Each counter an alert reads with increase() is shown at 0 from the start: a
        # series born at 1 has no increase, and the first dead letter would page no one.
        metrics.PROJECTION_STALE.labels(runner.name)
        metrics.PROJECTION_REJECTED.labels(runner.name)

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
        if self.amqp_url is not None:  # (only pages are checked against it)
            async with self.runner.pool.connection() as conn:
                self.incarnation = await incarnation(conn)
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
                    if self.strangers.say_due():  # (the last of a flood, once it is over)
                        await self.strangers.say()
                    if self._stale_due():  # (likewise)
                        await self._write_stale()
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
                await self.strangers.refuse_unsigned(message, dead_letters)
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
        ours, kept = self.incarnation, []
        for page in pages:
            if ours is None or page.incarnation in (None, ours):  # (None: a relay before)
                kept.append(page)
                continue
            # Read from another incarnation of the store: the one this store was restored
            # (or failed over) from, whose pages the broker still held. Its entries may not
            # be in this store, and its positions are given to other entries here.
            why = f"it was read from another store ({page.incarnation})"
            await self._refuse_stale(page, why, str(page.incarnation))
            refused = True
        pages = kept
        for run in contiguous_runs(pages):
            refused = not await self._apply(run, dead_letters) or refused
        if refused and self._catch_up_due():
            # An old relay's unsigned pages (a rolling upgrade) are refused too: what they
            # held is read from the store, at most once per idle interval however many
            # pages are refused (the store's reads do not grow with a flood of forgeries).
            await self._catch_up()

    def _catch_up_due(self) -> bool:
        return asyncio.get_running_loop().time() - self._caught_up_at >= self.idle_interval

    async def _apply(self, run: list[Page], dead_letters: AbstractExchange) -> bool:
        """Apply a run of pages; False if any was refused as not of this store (its entries
        are then to be read from the store)."""
        after, last = run[0].after, max(page.last for page in run)
        events = merge(run)
        # Each page's last entry, checked to be this store's as the page is applied: a page
        # of the store before a restore (of the same incarnation, or a relay before it said
        # it) holds other entries at the positions this store issued again.
        ends = [page.events[-1] for page in run if page.events]
        try:
            try:
                applied = await self.runner.apply_page(after, last, events, ends)
            except GapTooLarge:
                await self._catch_up()
                applied = await self.runner.apply_page(after, last, events, ends)
        except TRANSIENT:
            for page in run:
                await page.message.nack(requeue=True)
            raise
        except Exception as error:  # pages this projection cannot apply: park them, say so
            if len(run) > 1:  # find the culprit: apply the pages one at a time
                kept = [await self._apply([page], dead_letters) for page in run]
                return all(kept)
            if isinstance(error, BeyondTheLog):
                why = f"it {error.where}"
                await self._refuse_stale(run[0], why, "not in this store")
                return False
            reason = f"{type(error).__name__}: {error}"
            await self._refuse(run[0].message, dead_letters, reason, after, last)
            return True
        for page in run:
            await page.message.ack()
        self.status.position = applied.position
        if applied.duplicate:
            self.status.duplicates += len(run)
        else:
            self.status.applied_events += applied.events
        return True

    def _stale_due(self) -> bool:
        return bool(self._stale_unwritten) and (
            asyncio.get_running_loop().time() - self._stale_written_at >= STALE_WRITTEN_EVERY
        )

    async def _write_stale(self) -> None:
        """Count the stale pages refused since last written as one row of
        ``projection_rejections`` (STALE_ROW): the operators' status (`cardinal
        projections`, GET /api/admin/projections) shows them as ``stale``, whichever
        process the worker runs in; at most one write every STALE_WRITTEN_EVERY."""
        try:
            await count_row(
                self.runner,
                f"{STALE_ROW}{self._stale_unwritten} relay page(s) of another store refused, "
                "not applied",
            )
        except TRANSIENT:  # the store away: written with the next (nothing lost)
            self._stale_written_at = asyncio.get_running_loop().time()
            return
        self._stale_written_at = asyncio.get_running_loop().time()
        self._stale_unwritten = 0

    async def _refuse_stale(self, page: Page, why: str, kind: str) -> None:
        """Refuse a page of the relay's that is not of this store: not applied, not
        dead-lettered (it is no forgery: its signature holds), counted, and said once per
        worker and kind. The entries of this store in its range are read from the store."""
        await page.message.ack()
        self.status.stale += 1
        metrics.PROJECTION_STALE.labels(self.name).inc()
        self._stale_unwritten += 1
        if self._stale_due():
            await self._write_stale()
        if kind in self._stale_said:
            return
        self._stale_said.add(kind)
        log.warning(
            "projection %s REFUSED the relay page %d-%d: %s; this store is %s. The store was "
            "restored from a backup or failed over, and the broker still held pages of the "
            "store before: their entries after the restore point are lost (receipts of "
            "those ballots answer 404, their positions are given to new entries). Nothing "
            "of such pages is applied; this store's entries are read from it. Nothing to do "
            "unless a release without this check applied them (a position past the head in "
            "`cardinal projections`): then rebuild every projection. Pages refused so are "
            "counted in cardinal_projection_stale_pages_total and said once per worker",
            self.name,
            page.after,
            page.last,
            why,
            self.incarnation or "of an incarnation that could not be read",
        )

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
        elif self.strangers.record_due():
            record = self.strangers.record(message, reason)
            await self.strangers.keep_record(record, dead_letters)
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
