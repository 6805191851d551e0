"""`cardinal ingest`: ballots from the ingest queue, cast in batches, acked after commit.

The loop: take what the broker has sent (up to the prefetch), up to INGEST_BATCH ballots;
cast them through ``VotingApplication.cast_ballots`` (voters concurrently, one voter's
ballots in order: they share the group-commit writer's transactions; in rounds of at most
MAX_BALLOTS_PER_VOTER of a voter's, a request's limit, which holds for one message, not
for the batch); forward refusals to the refused queue and answer ``reply_to``, each
publish confirmed; then ack the batch with ``multiple=True``. Nothing is acked before its
commit: a crash (SIGKILL included) at any point leaves the batch unacked, the broker
delivers it again, and every ballot's key makes the second cast a replay. A store outage
holds the batch and retries it with backoff (requeueing would spend the broker's delivery
limit, meant for poison messages); a broker outage drops the batch (redelivered) and
``connect_robust`` reconnects (after 1 s doubling to 10 s, not aio-pika's fixed 5 s; the
outage said once, naming AMQP_URL, and its end once: ``Outage``); whatever else came on the
dead channel is skipped, not cast: it comes again after the batch, in order. A batch whose
answers cannot be published (a nack) on a channel still open is given up the same way:
its channel is closed (``_release``), never the batch alone nacked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import aio_pika
import aiormq.abc
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)

from api.problems import Faults, problem_of
from api.views import receipt_view
from domain.application import MAX_BALLOTS_PER_VOTER, Receipt, VotingApplication
from domain.election import Election
from domain.errors import CardinalError, ConcurrentRevision
from domain.voter import Voter
from infra import metrics
from infra.broker.outage import Outage
from infra.ingest.messages import (
    MAX_BALLOT_BYTES,
    Delivery,
    Item,
    forwarded,
    identify,
    json_bytes,
    parse,
    stored_key,
)
from infra.ingest.queues import IngestQueues
from infra.ingest.refusals import refusal_headers
from infra.ingest.strings import SHORT_STR, sendable, tolerate_invalid_utf8
from infra.runtime.voters import VoterKeys

log = logging.getLogger(__name__)

LINGER = 0.005  # seconds a batch waits for more messages once the inbox is empty
MAX_BACKOFF = 5.0
# An unexpected error (not a refusal of the ballot, not the store away) may pass: a ballot
# meeting one is tried this many times, then refused as a fault, so that it cannot hold up
# the batch, and the queue behind it, for ever.
FAULT_ATTEMPTS = 3
DEPTH_EVERY = 5.0


class _PacedConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, its reconnection attempts paced by ``outage`` (1 s
    doubling to 10 s) rather than a fixed 5 s. aio-pika reads ``reconnect_interval``
    before each wait; it calls nothing of ours on a failed attempt, so the pace comes from
    how long the outage has lasted (``Outage.pause``)."""

    outage: Outage | None = None
    _fixed: float = 5.0

    @property
    def reconnect_interval(self) -> float:
        return self._fixed if self.outage is None else self.outage.pause()

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._fixed = value


class Abandoned(Exception):
    """The batch could not be settled: its channel closed before it could be acked, or a
    publish of its answers failed (the broker's nack) while the channel stayed open. The
    broker redelivers it (``_release``)."""


class Ingester:
    def __init__(
        self,
        app: VotingApplication,
        keys: VoterKeys,
        amqp_url: str,
        queue: str,
        *,
        prefetch: int = 1000,
        batch: int = 5000,
        name: str = "cardinal ingest",
        max_ballot_bytes: int = MAX_BALLOT_BYTES,
    ) -> None:
        self.app = app
        self.keys = keys
        self.amqp_url = amqp_url
        self.queues = IngestQueues(queue)
        self.prefetch = prefetch
        self.batch = batch
        self.name = name
        self.max_ballot_bytes = max_ballot_bytes
        self.ready = asyncio.Event()
        # The broker's outages, said once each, naming AMQP_URL: at start (consume_forever)
        # and mid-run, where connect_robust reconnects by itself (_said_by).
        self.outage = Outage(amqp_url, "ingest", log)
        # Never wait_for() on the inbox's get(): on Python 3.11 a timeout racing a delivery
        # can drop the message, and the next ack with multiple=True would ack it unseen.
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._held: Delivery | None = None
        self._channel: AbstractChannel | None = None

    async def run(self) -> None:
        """Consume forever; reconnect without help."""
        tolerate_invalid_utf8()  # a message_id not UTF-8 must not cost the connection
        connection = await aio_pika.connect_robust(
            self.amqp_url,
            client_properties={"connection_name": self.name},
            connection_class=_PacedConnection,
        )
        self._said_by(connection)
        connected = metrics.BROKER_CONNECTED.labels("ingest")
        connection.reconnect_callbacks.add(lambda *_: connected.set(1))
        connection.close_callbacks.add(lambda *_: connected.set(0))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            self._channel = channel
            await channel.set_qos(prefetch_count=self.prefetch)
            queue, _, dead = await self.queues.declare(channel)
            await queue.consume(self._received)
            connected.set(1)
            depth = asyncio.create_task(self._watch_depth(channel, connection))
            self.ready.set()
            try:
                while True:
                    batch = await self._collect()
                    try:
                        await self._process(batch, dead)
                    except Abandoned:
                        log.warning("the batch could not be settled; it will be redelivered")
                        await _release(batch)
                        # What came on the batch's channel, now closed, is back in the queue,
                        # to be redelivered after the batch, in order: casting it now would
                        # let a voter's later ballot be recorded before the batch's earlier
                        # one (which then revises it). _collect skips the inbox's such ones.
                        if self._held is not None and not _open(self._held.message):
                            self._held = None
            finally:
                depth.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await depth

    def _said_by(self, connection: AbstractRobustConnection) -> None:
        """The connection lost (not closed by us), the outage said (once); back, its end;
        and aio-pika's attempts between paced by the outage."""
        if isinstance(connection, _PacedConnection):
            connection.outage = self.outage

        def lost(_: object, error: BaseException | None = None) -> None:
            if not connection.close_called:
                self.outage.failed(error or ConnectionError("connection lost"))

        connection.close_callbacks.add(lost)
        connection.reconnect_callbacks.add(lambda *_: self.outage.connected())

    async def _received(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)
        self._arrived.set()

    async def _collect(self) -> list[Delivery]:
        """Wait for a message, then take what else is waiting, up to ``batch`` ballots.

        A message whose channel has closed is skipped: the broker requeued it with the
        channel, and delivers it again on the new one, in order with its neighbours."""
        first = self._held
        self._held = None
        while first is None or not _open(first.message):
            message = await self._inbox.get()
            if _open(message):
                first = parse(message, self.max_ballot_bytes)
        batch, ballots = [first], first.ballots
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER
        while ballots < self.batch:
            try:
                message = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                continue
            if not _open(message):
                continue
            delivery = parse(message, self.max_ballot_bytes)
            if ballots + delivery.ballots > self.batch:
                self._held = delivery  # the next batch starts with it
                break
            batch.append(delivery)
            ballots += delivery.ballots
        metrics.INGEST_CONSUMED.inc(len(batch))
        metrics.INGEST_BATCH.observe(ballots)
        return batch

    async def _process(self, batch: list[Delivery], dead: AbstractExchange) -> None:
        # A channel that closed since the batch was gathered took its messages back: they
        # come again, in order, on the new one (see run).
        batch = [delivery for delivery in batch if _open(delivery.message)]
        if not batch:
            return
        items = [item for d in batch if d.problem is None for item in d.items if not item.settled]
        origin = {id(item): at for at, d in enumerate(batch) for item in d.items}
        delay = 0.1
        while items:
            items = await self._cast(items, origin)
            if items:
                self._check_open(batch)
                log.warning(
                    "%d ballots could not be recorded (store unavailable or busy); "
                    "holding them unacked, retrying in %.1fs",
                    len(items),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                self._check_open(batch)  # the channel may have closed meanwhile
        committed = sum(1 for d in batch for item in d.items if item.receipt is not None)
        try:
            await asyncio.gather(*(self._answer(d, dead) for d in batch))
            await _ack(batch)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
            raise Abandoned from error
        metrics.INGEST_COMMITTED.inc(committed)

    async def _cast(self, items: list[Item], origin: Mapping[int, int]) -> list[Item]:
        """Cast what can be cast; refuse what is refused; return the ballots to retry.

        ``origin`` numbers each ballot's message. ``cast_ballots`` takes at most
        MAX_BALLOTS_PER_VOTER ballots of a voter (a request's limit): a voter with more in
        the batch, each message its own request, has them cast in rounds (``_round``), in
        order, and a voter whose ballot is to be retried has the later ones retried after it.
        """
        retry: list[Item] = []
        elections = await self._elections({item.election_id for item in items})
        castable: list[Item] = []
        faults = Faults()
        for item in items:
            assert item.election_id is not None
            found = elections[item.election_id]
            if isinstance(found, CardinalError):
                item.refuse(found)
            elif isinstance(found, Exception):
                _refused_or_again(item, found, retry, faults)
            else:
                if item.voter is None:
                    identify(item, found, self.keys)
                if item.problem is None:
                    castable.append(item)
        while castable:
            now, castable = _round(castable, origin)
            stopped = await self._cast_round(now, retry, faults)
            if stopped:  # their later ballots wait for the retried one, behind it
                retry.extend(item for item in castable if _voter(item) in stopped)
                castable = [item for item in castable if _voter(item) not in stopped]
        faults.log("from the ingest queue; refused")
        return retry

    async def _cast_round(
        self, items: list[Item], retry: list[Item], faults: Faults
    ) -> set[tuple[UUID, str]]:
        """Cast ``items`` (each election's in one ``cast_ballots``); the voters of those
        put in ``retry``."""
        groups: dict[UUID, list[Item]] = {}
        for item in items:
            assert item.election_id is not None
            groups.setdefault(item.election_id, []).append(item)
        outcomes = await asyncio.gather(
            *(
                self.app.cast_ballots(election_id, [_castable(i) for i in group])
                for election_id, group in groups.items()
            )
        )
        stopped: set[tuple[UUID, str]] = set()
        for group, results in zip(groups.values(), outcomes, strict=True):
            for item, outcome in zip(group, results, strict=True):
                if isinstance(outcome, Receipt):
                    item.receipt = outcome
                elif _refused_or_again(item, outcome, retry, faults):
                    stopped.add(_voter(item))
        return stopped

    async def _elections(self, ids: set[UUID | None]) -> dict[UUID, Election | Exception]:
        """Each election, or why its ballots are refused (a CardinalError), or the error its
        reading met: the store away (tried again), or a fault (counted, then refused)."""
        elections: dict[UUID, Election | Exception] = {}
        for election_id in ids:
            assert election_id is not None
            try:
                elections[election_id] = await self.app.election(election_id)
            except Exception as error:
                log.debug("election %s could not be read: %s", election_id, error)
                elections[election_id] = error
        return elections

    def _check_open(self, batch: list[Delivery]) -> None:
        try:
            for delivery in batch:
                _ = delivery.message.channel
        except Exception as error:
            raise Abandoned from error

    async def _answer(self, delivery: Delivery, dead: AbstractExchange) -> None:
        """Forward the refused ballots, and reply where the message asks for it."""
        message = delivery.message
        publishes = []
        if delivery.problem is not None:
            metrics.INGEST_REFUSED.labels(delivery.reason).inc()
            publishes.append(
                self._refuse(dead, message.body, message.message_id, delivery.problem, message)
            )
        for item in delivery.items:
            if item.problem is not None:
                metrics.INGEST_REFUSED.labels(item.reason).inc()
                body = forwarded(item) if delivery.multi else message.body
                publishes.append(self._refuse(dead, body, item.key, item.problem, message))
        if message.reply_to and message.correlation_id:
            publishes.append(self._reply(delivery, self._channel))
        await asyncio.gather(*publishes)

    async def _refuse(
        self,
        dead: AbstractExchange,
        body: bytes,
        key: str | None,
        problem: dict[str, Any],
        original: AbstractIncomingMessage,
    ) -> None:
        await dead.publish(
            aio_pika.Message(
                body,
                message_id=_sendable(key),
                correlation_id=_sendable(original.correlation_id),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=refusal_headers(problem),
            ),
            routing_key=self.queues.refused,
        )

    async def _reply(self, delivery: Delivery, channel: AbstractChannel | None) -> None:
        message = delivery.message
        problem = delivery.problem is not None
        if delivery.problem is not None:
            body: Any = delivery.problem
        elif delivery.multi:
            body = {"results": [_result(item) for item in delivery.items]}
        else:
            body = _result(delivery.items[0])
            problem = delivery.items[0].receipt is None
        kind = "problem+json" if problem else "json"
        assert message.reply_to is not None
        assert channel is not None
        await channel.default_exchange.publish(
            aio_pika.Message(
                json_bytes(body),
                correlation_id=_sendable(message.correlation_id),
                content_type=f"application/{kind}",
            ),
            routing_key=sendable(message.reply_to, SHORT_STR),
        )

    async def _watch_depth(
        self, channel: AbstractChannel, connection: AbstractRobustConnection
    ) -> None:
        """Keep the queue-depth gauges current (the alert on a growing backlog reads them).

        Each sweep asks the broker afresh, on a channel of its own: a robust channel answers
        a passive declare of a queue it declared from its cache (the count as it was at
        start, so the refused queue's gauge stayed 0), and a passive declare of a queue
        that is gone closes its channel, which must not be the consuming one. A sweep that
        fails is logged once, at WARNING, until one succeeds again, unless the broker is
        away (its outage is said once, naming RabbitMQ and AMQP_URL: a second warning,
        naming neither, only confused); each call to the broker waits DEPTH_EVERY at most."""
        wait = DEPTH_EVERY
        watch: aiormq.abc.AbstractChannel | None = None
        failing: str | None = None
        warned = False
        while True:
            try:
                if watch is None or watch.is_closed:
                    underlay = await asyncio.wait_for(channel.get_underlay_channel(), wait)
                    watch = await asyncio.wait_for(underlay.connection.channel(), wait)
                for name in (self.queues.name, self.queues.refused):
                    declared = await watch.queue_declare(name, passive=True, timeout=wait)
                    metrics.INGEST_QUEUE_DEPTH.labels(name).set(declared.message_count or 0)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                reason = str(error).strip() or type(error).__name__
                away = self.outage.down is not None or not connection.connected.is_set()
                if not warned and not away:
                    log.warning(
                        "cannot read the ingest queues' depth (%s); "
                        "cardinal_ingest_queue_messages is stale until it can",
                        reason,
                    )
                    warned = True
                elif failing is None:
                    log.debug("cannot read the ingest queues' depth (%s)", reason)
                failing = reason
            else:
                if warned:
                    log.info("reading the ingest queues' depth again")
                failing, warned = None, False
            await asyncio.sleep(DEPTH_EVERY)


def _sendable(text: str | None) -> str | None:
    return None if text is None else sendable(text, SHORT_STR)


def _open(message: AbstractIncomingMessage) -> bool:
    """Whether the message's channel is open (it can still be acked)."""
    try:
        _ = message.channel  # aio-pika raises where the channel has closed
    except Exception:
        return False
    return True


def _voter(item: Item) -> tuple[UUID, str]:
    assert item.election_id is not None
    assert item.voter is not None
    return item.election_id, item.voter.ballot_key


def _round(items: list[Item], origin: Mapping[int, int]) -> tuple[list[Item], list[Item]]:
    """The ballots to cast together now, and the rest, for a later round: a voter's in
    order, at most MAX_BALLOTS_PER_VOTER of them, and a message's ballots of one voter
    never split (a message holding more than that of one voter is a request over the
    limit: it goes alone, and ``cast_ballots`` refuses the rest of it, as over HTTP)."""
    sizes = Counter((_voter(item), origin[id(item)]) for item in items)
    taken: dict[tuple[UUID, str], int] = {}
    placed: set[tuple[tuple[UUID, str], int]] = set()
    deferred: set[tuple[UUID, str]] = set()
    now: list[Item] = []
    later: list[Item] = []
    for item in items:
        voter = _voter(item)
        part = (voter, origin[id(item)])
        if part not in placed and voter not in deferred:
            count = taken.get(voter, 0)
            if count and count + sizes[part] > MAX_BALLOTS_PER_VOTER:
                deferred.add(voter)
            else:
                taken[voter] = count + sizes[part]
                placed.add(part)
        (now if part in placed else later).append(item)
    return now, later


def _castable(item: Item) -> tuple[Voter, dict[str, object], str]:
    assert item.voter is not None
    assert item.ballot is not None
    return item.voter, item.ballot.content(), stored_key(item)


def _result(item: Item) -> dict[str, Any]:
    if item.receipt is not None:
        status = "cast" if item.receipt.version == 1 else "revised"
        return receipt_view(item.receipt, str(item.election_id), status)
    assert item.problem is not None
    return item.problem


def _refused_or_again(item: Item, error: Exception, retry: list[Item], faults: Faults) -> bool:
    """Refuse the ballot, or put it in ``retry`` (True): where the error says nothing about
    it (the store away or busy, a race, an earlier ballot of its voter to go first), and for
    an unexpected one, up to FAULT_ATTEMPTS (``faults``: those refused, to log once)."""
    found = problem_of(error)
    if isinstance(error, ConcurrentRevision) or (found is not None and found["status"] == 503):
        retry.append(item)
        return True
    if found is not None:
        item.refuse(error)
        return False
    item.faults += 1
    if item.faults < FAULT_ATTEMPTS:
        retry.append(item)
        return True
    item.refuse_as_fault()
    faults.add(error)
    return False


async def _release(batch: list[Delivery]) -> None:
    """Hand an unsettled batch back to the broker, and with it everything delivered after
    it: its channel is closed, where it is still open (one that closed by itself did the
    same), so that no later ack with ``multiple`` covers the batch. The broker puts every
    message unacked on the channel back at the queue's head, in the order it delivered
    them; the robust channel opens again and consumes; what the consumer still holds from
    the closed one (the message held for the next batch, the inbox) is skipped (``_open``),
    never cast. A nack would hand back the batch alone, and those, already delivered,
    would be cast before it came again: a voter's later ballot recorded before the batch's
    earlier one, which would then revise it."""
    channels: dict[int, aiormq.abc.AbstractChannel] = {}
    for delivery in batch:
        with contextlib.suppress(Exception):  # a closed channel's: already back
            channel = delivery.message.channel
            channels[id(channel)] = channel
    for channel in channels.values():
        with contextlib.suppress(Exception):
            # With a reason: aiormq's default is a cancellation, which the robust channel
            # leaves to the connection's recovery (none comes) rather than opening again.
            await channel.close(Abandoned("the batch is handed back to the broker"))


async def _ack(batch: list[Delivery]) -> None:
    """Ack the batch: one ack with ``multiple`` per channel it came on (one, unless a
    reconnection happened while it was gathered)."""
    last: dict[int, AbstractIncomingMessage] = {}
    for delivery in batch:
        with contextlib.suppress(Exception):  # a closed channel's: redelivered on the new one
            last[id(delivery.message.channel)] = delivery.message
    if not last:
        raise Abandoned("every message of the batch came on a closed channel")
    for message in last.values():
        await message.ack(multiple=True)
