"""`cardinal ingest`: ballots from the ingest queue, cast in batches, acked after commit.

The loop: take what the broker has sent (up to the prefetch, sized in ballots by
``_Window``: about two batches in flight however large the messages), up to INGEST_BATCH
ballots; cast them through ``VotingApplication.cast_ballots`` (voters concurrently, one voter's
ballots in order: they share the group-commit writer's transactions; in rounds of at most
MAX_BALLOTS_PER_VOTER of a voter's, a request's limit, which holds for one message, not
for the batch); forward refusals to the refused queue, each publish confirmed, and answer
``reply_to`` (best-effort); then ack the batch with ``multiple=True``. Nothing is acked
before its commit: a crash (SIGKILL included) at any point leaves the batch unacked, the
broker delivers it again, and every ballot's key makes the second cast a replay. A store outage
holds the batch and retries it with backoff (requeueing would spend the broker's delivery
limit, meant for poison messages); a broker outage drops the batch (redelivered) and
``connect_robust`` reconnects (after 1 s doubling to 10 s, not aio-pika's fixed 5 s; the
outage said once, naming AMQP_URL, and its end once: ``Outage``); whatever else came on the
dead channel is skipped, not cast: it comes again after the batch, in order. A refusal the
broker will not take (its publish to ``<queue>.refused`` nacked) holds the batch too, on its
live channel, retried with backoff until it is taken: nothing is returned to the queue, no
delivery is spent, and a refused ballot is never acked untraced (``_forward``). A reply is
best-effort (the ballot's outcome is in the log; republishing the message with the same
``message_id`` answers it again): one the broker will not take is logged, once per
``reply_to`` queue a minute (``_Unanswered``), and the batch is acked as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

import aio_pika
import aiormq.abc
import aiormq.exceptions
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
    MAX_BALLOTS,
    REFUSAL_REASONS,
    Delivery,
    Item,
    forwarded,
    identify,
    json_bytes,
    parse,
    stored_key,
)
from infra.ingest.queues import DELIVERY_LIMIT, IngestQueues
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
# Elections a batch looks up at a time (each one not yet known is a read of the store).
ELECTION_LOOKUPS = 8
# A reply_to queue that does not take replies is said once per this many seconds (of the
# first at most UNANSWERED_QUEUES queues at a time: a client may name any number of them).
UNANSWERED_EVERY = 60.0
UNANSWERED_QUEUES = 1000


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


class _Window:
    """The consumer's prefetch, in messages, sized in ballots: at most ``most`` messages
    (INGEST_PREFETCH), no more than hold about ``budget`` ballots (two batches: one cast
    while the next is gathered) at the largest size lately seen, and at least 2 (the next
    message at hand while one is cast: with one, each message waited, after the ack, for
    the quorum queue to settle it and deliver the next, and 10,000-ballot messages were cast
    at half the rate). So the ballots in flight are at most about the larger of ``budget``
    and two of the largest messages. AMQP's prefetch counts messages and RabbitMQ cannot
    count bytes, while a message may hold up to MAX_BALLOTS ballots (4 MiB): a prefetch of
    1,000 such messages was 10 million ballots in flight, gigabytes held, and a backlog the
    consumer could not cast before the broker's consumer_timeout closed its channel (every
    message returned, a delivery spent each).

    It starts at what ``budget`` allows for the largest messages (2 with the defaults), and
    doubles, up to ``most``, each time a whole window of messages has come no larger than
    the doubled window allows; a larger message narrows it at once. What the broker already
    sent under a wider window still comes (it cannot be taken back without spending
    deliveries): large messages right after many small ones are held up to the wide window
    of them, once, until they are cast."""

    def __init__(self, budget: int, most: int) -> None:
        self.budget = max(1, budget)
        self.most = max(1, most)
        self.size = self._fitting(MAX_BALLOTS)
        self._largest = 1  # the most ballots in one message since the size was set
        self._seen = 0  # messages since then

    def _fitting(self, largest: int) -> int:
        return min(self.most, max(2, self.budget // largest))

    def saw(self, ballots: int) -> bool:
        """A message of ``ballots`` was taken: whether ``size`` changed."""
        self._largest = max(self._largest, ballots)
        self._seen += 1
        fits = self._fitting(self._largest)
        if fits < self.size:
            size = fits
        elif fits > self.size and self._seen >= self.size:
            size = min(fits, 2 * self.size)
        else:
            return False
        self.size, self._largest, self._seen = size, 1, 0
        return True


class Abandoned(Exception):
    """The batch could not be settled: its channel closed before it could be acked. The
    broker redelivers it, and everything else delivered on that channel (``_release``)."""


class _Unanswered:
    """Replies the broker would not take (a ``reply_to`` queue full at a reject-publish
    limit, or gone): said at WARNING once per queue per UNANSWERED_EVERY, with how many
    more failed since, never once per message."""

    def __init__(self) -> None:
        self._said: dict[str, tuple[float, int]] = {}  # queue: when said, failures since

    def failed(self, queue: str, error: BaseException) -> None:
        now = time.monotonic()
        said = self._said.get(queue)
        if said is not None and now - said[0] < UNANSWERED_EVERY:
            self._said[queue] = (said[0], said[1] + 1)
            return
        if said is None and len(self._said) >= UNANSWERED_QUEUES:
            self._said = {
                name: entry
                for name, entry in self._said.items()
                if now - entry[0] < UNANSWERED_EVERY
            }
            if len(self._said) >= UNANSWERED_QUEUES:
                log.debug("a reply to %r was not taken (%s)", queue, error)
                return
        more = f"; {said[1]} more since it was last said" if said is not None and said[1] else ""
        log.warning(
            "a reply to %r was not taken by the broker (%s); its ballots are recorded and "
            "acked all the same, and republishing the message with the same message_id "
            "answers it again (said once a minute for this queue%s)",
            queue,
            str(error).strip() or type(error).__name__,
            more,
        )
        self._said[queue] = (now, 0)


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
        in_flight: int | None = None,
        name: str = "cardinal ingest",
        max_ballot_bytes: int = MAX_BALLOT_BYTES,
        reserved: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.keys = keys
        self.amqp_url = amqp_url
        self.queues = IngestQueues(queue)
        self.prefetch = prefetch
        self.batch = batch
        # The ballots the consumer may hold delivered and unacked: two batches by default.
        self._window = _Window(2 * batch if in_flight is None else in_flight, prefetch)
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._consuming = 0  # the prefetch the current consumer was started with
        self._stale: list[str] = []  # consumers to cancel (a cancel failed: retried)
        self.name = name
        self.max_ballot_bytes = max_ballot_bytes
        self.ready = asyncio.Event()
        # The broker's outages, said once each, naming AMQP_URL: at start (consume_forever)
        # and mid-run, where connect_robust reconnects by itself (_said_by).
        self.outage = Outage(amqp_url, "ingest", log)
        # Never wait_for() on the inbox's get(): on Python 3.11 a timeout racing a delivery
        # can drop the message, and the next ack with multiple=True would ack it unseen.
        # Nor anywhere on the consuming loop's path: 3.11's wait_for returns the
        # result of an awaitable that finished as the task was cancelled, and so swallowed
        # a stop (a fresh clone's test waited 20 s on a consumer cancelled mid-resize);
        # asyncio.timeout() lets the cancellation through.
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._arrived = asyncio.Event()
        self._held: Delivery | None = None
        self._channel: AbstractChannel | None = None
        self._connection: AbstractRobustConnection | None = None
        self._forwarding: AbstractChannel | None = None  # refusals' (_forwarder)
        self._undeclared_said = -60.0  # monotonic: the refused queue's declare refused, said
        self._unanswered = _Unanswered()
        # Names a reply is never sent to: the ingest's own queues and exchange, and what
        # else the broker's topology declares (``reserved``: the projections' queues). A
        # receipt sent there went back into the queue (and was refused) or sat in the
        # refused queue with no x-refusal header, for an operator to puzzle over.
        self.reserved = frozenset(
            {queue, self.queues.refused, self.queues.dead_letter_exchange, *reserved}
        )
        self._withheld_said = -UNANSWERED_EVERY  # monotonic: a withheld reply last said
        self._withheld_since = 0  # replies withheld since it was last said
        # Every refusal's series at 0 from the start: one born at 1 has no increase(), and
        # the first refusal of a kind would raise no alert (CardinalIngestRefusals).
        for reason in REFUSAL_REASONS:
            metrics.INGEST_REFUSED.labels(reason)

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
            self._connection = connection
            channel = await connection.channel(publisher_confirms=True)
            channel.reopen_callbacks.add(self._reopened)
            self._channel = channel
            size = self._window.size
            await channel.set_qos(prefetch_count=size)
            queue, _, _ = await self.queues.declare(channel)
            self._queue = queue
            self._consumer_tag = await queue.consume(self._received)
            self._consuming = size
            connected.set(1)
            depth = asyncio.create_task(self._watch_depth(channel, connection))
            self.ready.set()
            pause = 0.1
            try:
                while True:
                    batch = await self._collect()
                    try:
                        await self._process(batch)
                    except Abandoned as error:
                        log.warning(
                            "the batch could not be settled (%s); it will be redelivered, "
                            "each of its messages (and all else delivered on its channel) "
                            "spending one of its %d deliveries before it is dead-lettered "
                            "to %s",
                            abandoned_reason(error),
                            DELIVERY_LIMIT,
                            self.queues.refused,
                        )
                        if any(_open(delivery.message) for delivery in batch):
                            # Given up on a live channel (none of ours should be: a refusal
                            # not taken is retried on it, a reply not taken let go). Closing
                            # it returns all it delivered, each return spending a delivery:
                            # not in a tight loop, which would dead-letter them in seconds.
                            await asyncio.sleep(pause)
                            pause = min(pause * 2, MAX_BACKOFF)
                        await _release(batch)
                        # What came on the batch's channel, now closed, is back in the queue,
                        # to be redelivered after the batch, in order: casting it now would
                        # let a voter's later ballot be recorded before the batch's earlier
                        # one (which then revises it). _collect skips the inbox's such ones.
                        if self._held is not None and not _open(self._held.message):
                            self._held = None
                    else:
                        pause = 0.1
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
        seen = first is not None  # a held message was seen by the window as it was taken
        while first is None or not _open(first.message):
            message = await self._inbox.get()
            if _open(message):
                first, seen = parse(message, self.max_ballot_bytes), False
        batch, ballots = [first], first.ballots
        if not seen:
            self._window.saw(max(1, first.ballots))
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
                    async with asyncio.timeout(remaining):  # (not wait_for: see __init__)
                        await self._arrived.wait()
                continue
            if not _open(message):
                continue
            delivery = parse(message, self.max_ballot_bytes)
            self._window.saw(max(1, delivery.ballots))
            if ballots + delivery.ballots > self.batch:
                self._held = delivery  # the next batch starts with it
                break
            batch.append(delivery)
            ballots += delivery.ballots
        metrics.INGEST_CONSUMED.inc(len(batch))
        metrics.INGEST_BATCH.observe(ballots)
        if self._behind():  # the window's size changed, or a resize is yet to be finished
            await self._resize()
        return batch

    async def _resize(self) -> None:
        """Bring the broker's consumers to the window's size: the prefetch set (RabbitMQ
        applies a consumer's prefetch as it starts consuming), a consumer started with it,
        then the old one cancelled. What the old one was sent stays delivered on the channel
        and is cast and acked as ever, in order (its deliveries reach us before the cancel's
        answer, and an ack with ``multiple`` covers the channel's, whichever consumer took
        them).

        A step that fails (the broker away, a timeout) is not taken for done: ``_consuming``
        stays the size the current consumer was started with, and the tags not yet
        cancelled stay in ``_stale``, so ``_collect`` calls this again at its next batch
        until both match (``_behind``). Nothing else would: the robust channel restores
        the prefetch its ``set_qos`` last recorded, which a ``set_qos`` cut short while it
        waits for the reconnection never records, and the consumers it last knew, which a
        cancel cut short no longer lists, though the broker may still run it (the merge
        review: an old prefetch of 64 kept for good under a window of 2, and a consumer more
        at each failed cancel, their prefetches adding up)."""
        queue, size = self._queue, self._window.size
        assert queue is not None
        assert self._channel is not None
        if self._consuming != size:
            # Our own tag: a consume that times out may still have started on the broker;
            # the tag is then cancelled with the others (a tag unknown to it is answered).
            tag, consuming = f"ingest.{uuid.uuid4().hex}", False
            try:
                async with asyncio.timeout(DEPTH_EVERY):  # (not wait_for: see __init__)
                    await self._channel.set_qos(prefetch_count=size)
                consuming = True
                async with asyncio.timeout(DEPTH_EVERY):
                    await queue.consume(self._received, consumer_tag=tag)
            except Exception as error:
                if consuming:
                    self._stale.append(tag)
                log.debug("the prefetch of %d is retried at the next batch (%s)", size, error)
                return
            old, self._consumer_tag, self._consuming = self._consumer_tag, tag, size
            if old is not None:
                self._stale.append(old)
        while self._stale:
            try:
                async with asyncio.timeout(DEPTH_EVERY):  # (not wait_for: see __init__)
                    await queue.cancel(self._stale[0])
            except Exception as error:
                log.debug("cancelling the consumer %s is retried (%s)", self._stale[0], error)
                return
            del self._stale[0]
        log.debug("prefetch now %d messages", size)

    def _reopened(self, *_: object) -> None:
        """The robust channel came back with the prefetch and consumer it last recorded,
        which need not be the window's: its ``set_qos`` records the size before the broker
        has it, so a resize cut short there comes back with that size under the old
        consumer (the merge review). A resize at the next batch makes them the window's."""
        self._consuming = 0

    def _behind(self) -> bool:
        """Whether the broker's consumers are not yet the window's (``_resize``)."""
        return self._consuming != self._window.size or bool(self._stale)

    async def _process(self, batch: list[Delivery]) -> None:
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
        await self._forward(batch)
        await asyncio.gather(
            *(
                self._answer(d)
                for d in batch
                if d.message.reply_to and d.message.correlation_id and self._replied(d)
            )
        )
        try:
            await _ack(batch)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as error:
            # The broker's reason, where the channel closed under the ack: aio-pika's own
            # error says only that it did.
            closed = [_closed_by(d.message) for d in batch if not _open(d.message)]
            raise Abandoned from (closed[0] if closed else error)
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
        bound = asyncio.Semaphore(ELECTION_LOOKUPS)

        async def look_up(election_id: UUID) -> None:
            async with bound:
                try:
                    elections[election_id] = await self.app.election(election_id)
                except Exception as error:
                    log.debug("election %s could not be read: %s", election_id, error)
                    elections[election_id] = error

        # Concurrently, a few at a time: read one after another, 10 messages of 10,000
        # ballots each naming another (unknown) election held the queue 7.9 s (review).
        await asyncio.gather(*(look_up(election_id) for election_id in ids if election_id))
        return elections

    def _check_open(self, batch: list[Delivery]) -> None:
        for delivery in batch:
            if not _open(delivery.message):
                raise Abandoned from _closed_by(delivery.message)

    async def _forward(self, batch: list[Delivery]) -> None:
        """Forward the batch's refused ballots to the refused queue, each publish confirmed,
        before the batch is acked: a refusal the broker does not take (a nack: the refused
        queue at a reject-publish limit, or unavailable) is published again with backoff
        (up to MAX_BACKOFF), the batch held unacked on its live channel meanwhile, as
        while the store is away. Neither acked (the refused ballot would vanish untraced)
        nor returned to the queue (the channel closed, every message delivered on it would
        come back, each spending a delivery towards the limit, and soon be dead-lettered
        uncast); nothing else is cast meanwhile, so nothing overtakes it. Only the
        channel's closing gives the batch up (``Abandoned``), as in any other wait. Each
        try after a failure is made on a new channel (``_forwarder``)."""
        pending: list[tuple[Delivery, bytes, str | None, dict[str, Any]]] = []
        for delivery in batch:
            if delivery.problem is not None:
                metrics.INGEST_REFUSED.labels(delivery.reason).inc()
                message = delivery.message
                pending.append((delivery, message.body, message.message_id, delivery.problem))
            for item in delivery.items:
                if item.problem is not None:
                    metrics.INGEST_REFUSED.labels(item.reason).inc()
                    body = forwarded(item) if delivery.multi else delivery.message.body
                    pending.append((delivery, body, item.key, item.problem))
        delay, fresh = 0.1, False
        while pending:
            try:
                dead = await self._forwarder(fresh)
            except Exception as opening:  # the broker away, or the channel refused
                outcomes: list[BaseException | None] = [opening] * len(pending)
            else:
                outcomes = await asyncio.gather(
                    *(
                        self._refuse(dead, body, key, problem, delivery.message)
                        for delivery, body, key, problem in pending
                    ),
                    return_exceptions=True,
                )
            failed = [
                (refusal, outcome)
                for refusal, outcome in zip(pending, outcomes, strict=True)
                if isinstance(outcome, BaseException)
            ]
            for _, outcome in failed:
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
            if not failed:
                return
            self._check_open(batch)
            pending = [refusal for refusal, _ in failed]
            first = failed[0][1]
            log.warning(
                "%d refused ballots could not be forwarded to %s (%s); holding the batch "
                "unacked, retrying in %.1fs",
                len(pending),
                self.queues.refused,
                str(first).strip() or type(first).__name__,
                delay,
            )
            await asyncio.sleep(delay)
            delay, fresh = min(delay * 2, MAX_BACKOFF), True
            self._check_open(batch)  # the channel may have closed meanwhile

    async def _forwarder(self, fresh: bool) -> AbstractExchange:
        """The dead-letter exchange, on the refusals' channel of their own (publisher
        confirms), a new one where ``fresh``: on RabbitMQ 3.10 a quorum queue that rejected
        a channel's publish (reject-publish) goes on rejecting that channel's, even once
        its limit is lifted, until it is back under one; a new channel is taken, and the
        refused queue, its binding and exchange declared again (one may have been deleted)."""
        if self._forwarding is not None and (fresh or self._forwarding.is_closed):
            with contextlib.suppress(Exception):
                await self._forwarding.close()
            self._forwarding = None
        if self._forwarding is None:
            assert self._connection is not None
            # A return raises: a refusal routed nowhere (the refused queue deleted) would
            # otherwise be confirmed, and its ballot acked without a trace.
            channel = self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._forwarding = channel
            async with asyncio.timeout(DEPTH_EVERY):  # not for ever (nor wait_for: __init__)
                await channel.initialize()
            if fresh:
                # After a failure: the refused queue, its binding or the exchange may have
                # been deleted (a return, NO_ROUTE, or NOT_FOUND); declared once at start,
                # they would be missing for ever and the batch held for ever.
                await self._declare_refused(channel)
        return await self._forwarding.get_exchange(self.queues.dead_letter_exchange, ensure=False)

    async def _declare_refused(self, channel: AbstractChannel) -> None:
        """Declare the refused queue, its binding and exchange again on ``channel``. One
        that an operator made again with other arguments (a classic queue, a length limit)
        refuses the declare (PRECONDITION_FAILED) and closes the channel: that is said (an
        ERROR a minute at most), and the refusal is tried on a new channel as it is, as it
        was before this declare (the merge review: declared again and again, the batch was
        held until the broker's consumer_timeout)."""
        try:
            async with asyncio.timeout(DEPTH_EVERY):
                await self.queues.declare_refused(channel)
        except Exception as error:  # the refusal itself says whether it is taken
            now = time.monotonic()
            if now - self._undeclared_said >= 60:
                self._undeclared_said = now
                log.error(
                    "ingest: %s cannot be declared as this consumer declares it (%s); "
                    "refusals are sent to it as it is",
                    self.queues.refused,
                    abandoned_reason(error),
                )
            with contextlib.suppress(Exception):
                await channel.close()
            assert self._connection is not None
            channel = self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._forwarding = channel
            async with asyncio.timeout(DEPTH_EVERY):
                await channel.initialize()

    def _replied(self, delivery: Delivery) -> bool:
        """Whether the message's ``reply_to`` may be answered: not where it names one of
        ``reserved`` (counted, and said at WARNING once per UNANSWERED_EVERY at most, with
        how many more since). Its ballots are cast all the same."""
        reply_to = delivery.message.reply_to
        assert reply_to is not None
        if reply_to not in self.reserved:
            return True
        metrics.INGEST_REPLIES_WITHHELD.inc()
        now = time.monotonic()
        if now - self._withheld_said < UNANSWERED_EVERY:
            self._withheld_since += 1
            return False
        more = f"; {self._withheld_since} more since" if self._withheld_since else ""
        log.warning(
            "a message asked for its reply in %r, one of the ingest's own queues: no reply "
            "is sent there (its ballots are cast as usual; said once a minute at most%s)",
            sendable(reply_to, SHORT_STR),
            more,
        )
        self._withheld_said, self._withheld_since = now, 0
        return False

    async def _answer(self, delivery: Delivery) -> None:
        """Reply to the message's ``reply_to``: best-effort. The ballots' outcome is in the
        log whatever becomes of the reply, and the message republished with the same
        ``message_id`` is answered again (a replay), so a reply the broker does not take
        (a nack: the client's queue full, at a reject-publish limit) is said
        (``_Unanswered``) and let go; the batch is acked as usual. Giving the batch up for
        it instead returned every message delivered on the channel, again and again, until
        the delivery limit dead-lettered them all uncast (review: ingest, once)."""
        try:
            await self._reply(delivery, self._channel)
        except Exception as error:
            if _open(delivery.message):  # else the batch comes again, and its reply with it
                assert delivery.message.reply_to is not None
                self._unanswered.failed(sendable(delivery.message.reply_to, SHORT_STR), error)

    async def _refuse(
        self,
        dead: AbstractExchange,
        body: bytes,
        key: str | None,
        problem: dict[str, Any],
        original: AbstractIncomingMessage,
    ) -> None:
        # The message refused whole goes as it came (a 415's content_type and encoding
        # too); a ballot of a multi-ballot message, as JSON of our own making.
        whole = body is original.body
        await dead.publish(
            aio_pika.Message(
                body,
                message_id=forwarded_id(key),
                correlation_id=_sendable(original.correlation_id),
                content_type=(whole and _sendable(original.content_type)) or "application/json",
                content_encoding=_sendable(original.content_encoding) if whole else None,
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
                # Persistent, as refusals are: a reply waiting in a client's durable
                # reply_to queue must outlive a broker restart.
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
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
                # asyncio.timeout(), not wait_for (nor aiormq's timeout=, which is wait_for):
                # Python 3.11's wait_for swallows a cancellation that comes as the awaited
                # call finishes, and this watch went on for 20 s after a stop given just as
                # the consumer became ready.
                if watch is None or watch.is_closed:
                    async with asyncio.timeout(wait):
                        underlay = await channel.get_underlay_channel()
                    async with asyncio.timeout(wait):
                        watch = await underlay.connection.channel()
                for name in (self.queues.name, self.queues.refused):
                    async with asyncio.timeout(wait):
                        declared = await watch.queue_declare(name, passive=True)
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


def forwarded_id(key: str | None) -> str | None:
    """The message_id a refusal is forwarded under: its key whole, never cut (a key cut to
    255 bytes was another ballot's, and republished under it was a replay of that one,
    its own ballot never recorded). Where a message_id cannot hold it (a ballot's own
    ``idempotency_key`` of more than 255 bytes, which ``forwarded`` keeps in the body), a
    random one, which names no ballot: aiormq would invent one for none (it tells a
    return's message by it)."""
    if key is None:
        return None
    text = sendable(key)
    return text if len(text.encode()) <= SHORT_STR else uuid.uuid4().hex


def _open(message: AbstractIncomingMessage) -> bool:
    """Whether the message's channel is open (it can still be acked)."""
    try:
        _ = message.channel  # aio-pika raises where the channel has closed
    except Exception:
        return False
    return True


def _closed_by(message: AbstractIncomingMessage) -> BaseException:
    """Why the message's channel closed, as aiormq's channel keeps it (its ``closing``
    future's exception: the broker's Channel.Close, e.g. 406 PRECONDITION_FAILED "delivery
    acknowledgement on channel 1 timed out", or the connection's loss). aio-pika's
    ``IncomingMessage.channel`` raises a bare ChannelInvalidStateError instead, which said
    only "channel closed"; that is what is left where aiormq kept no reason."""
    raw = getattr(message, "_IncomingMessage__channel", None)  # aio-pika 10 keeps no other
    if raw is not None and raw.is_closed:
        closing = raw.closing  # done: aiormq's own future, not an observer
        if not closing.cancelled() and closing.exception() is not None:
            reason: BaseException = closing.exception()
            return reason
    return aiormq.exceptions.ChannelInvalidStateError("its channel closed")


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
    same; ``run`` backs off first, as each closing spends a delivery of every message
    unacked on it), so that no later ack with ``multiple`` covers the batch. The broker
    puts every message unacked on the channel back at the queue's head, in the order it
    delivered them; the robust channel opens again and consumes; what the consumer still
    holds from the closed one (the message held for the next batch, the inbox) is skipped
    (``_open``), never cast. A nack would hand back the batch alone, and those, already
    delivered, would be cast before it came again: a voter's later ballot recorded before
    the batch's earlier one, which would then revise it."""
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


def abandoned_reason(error: BaseException) -> str:
    """What the broker said (a channel closed with PRECONDITION_FAILED "delivery
    acknowledgement timed out": the batch outlived RabbitMQ's consumer_timeout), from the
    causes of ``error``: aiormq's exceptions carry the close frame, whose str says nothing."""
    seen: list[str] = []
    cause: BaseException | None = error
    for _ in range(4):
        if cause is None:
            break
        frame = cause.args[0] if cause.args else None
        text = getattr(frame, "reply_text", None)
        if text is not None:
            said = f"{getattr(frame, 'reply_code', '?')} {text}"
        else:
            try:
                said = str(cause).strip()
            except Exception:  # (aiormq's DeliveryError with no frame cannot say itself)
                said = ""
            if not said and cause is not error:
                said = type(cause).__name__
        if said and said not in seen:  # (a close and its context often say the same)
            seen.append(said)
        cause = cause.__cause__ or cause.__context__
    return ": ".join(seen) or "its channel closed"


async def _ack(batch: list[Delivery]) -> None:
    """Ack the batch: one ack with ``multiple`` per channel it came on (one, unless a
    reconnection happened while it was gathered)."""
    last: dict[int, AbstractIncomingMessage] = {}
    for delivery in batch:
        with contextlib.suppress(Exception):  # a closed channel's: redelivered on the new one
            last[id(delivery.message.channel)] = delivery.message
    if not last:
        raise Abandoned("every message of the batch came on a closed channel") from (
            _closed_by(batch[0].message)
        )
    for message in last.values():
        await message.ack(multiple=True)
