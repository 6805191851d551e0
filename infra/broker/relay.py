"""The relay: tails the log and publishes it to RabbitMQ, page by contiguous page.

One message says "these are all committed entries with after < position <= last":
``{"after": A, "last": L, "events": [...]}``. The relay awaits the broker's publisher
confirm before it stores L as its position, so a crash at any point re-publishes at most a
page (delivery is at-least-once; projections drop duplicates by position). Each page is
signed (infra/broker/signing.py): projections apply what this stack's relay published,
never what anyone else with an account on the broker publishes. One relay is active at a
time: it holds a PostgreSQL advisory lock on the connection that also stores its
position; others wait as hot standby and take over when that connection goes away. A
frozen leader's connection goes away too: the server ends it after LEADER_IDLE_TIMEOUT of
silence, and a live one sends a keepalive every few seconds (infra/store/leader.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
import psycopg
from aio_pika.abc import AbstractExchange
from aiormq.exceptions import ChannelInvalidStateError
from psycopg import sql

from infra import metrics
from infra.broker.monitor import connection_closed
from infra.broker.outage import Outage
from infra.broker.signing import HEADER, sign
from infra.broker.topology import Topology
from infra.store import EVENTS_TABLE
from infra.store.incarnation import Incarnation, incarnation
from infra.store.leader import SESSION_ENDED, LeaderTimes, leader_session, said_ended
from infra.store.log import event_type
from infra.store.names import connection_name
from infra.store.outage import UNREACHABLE, StoreOutage

log = logging.getLogger(__name__)

RELAY_LOCK = 0x43415244_52454C59  # "CARDRELY"
RELAY_NAME = "relay"
# No upper bound is needed: ids are issued under the table lock, in commit order, so
# every row below the highest one visible has committed. A page (after, last row] is
# therefore complete, whatever is being inserted meanwhile.
# The stream id as text (what the message carries: no UUID object per entry), the rest in
# binary (the state's bytes as stored, without the hex round trip of bytea as text).
PAGE = f"""
SELECT notification_id, originator_id::text, originator_version, topic, state
FROM {EVENTS_TABLE} WHERE notification_id > %s
ORDER BY notification_id LIMIT %s
"""


@dataclass
class RelayStatus:
    """What the relay is doing, for metrics and the operators' status page."""

    leader: bool = False
    position: int = 0
    head: int = 0
    published_pages: int = 0
    published_events: int = 0
    broker_connected: bool = False
    database_connected: bool = False


BUSY_ROUND = 100  # entries published in one round that make the log "busy"


class Relay:
    def __init__(
        self,
        database_url: str,
        amqp_url: str,
        topology: Topology,
        projections: Iterable[str],
        *,
        page_key: bytes,
        page_size: int = 1000,
        poll_interval: float = 1.0,
        retry_interval: float = 1.0,
        linger: float = 0.02,
        busy_linger: float = 0.1,
        leader: LeaderTimes | None = None,
    ) -> None:
        """``leader``: its session's idle limit and keepalive when not the module's
        (infra/store/leader.py; tests)."""
        self.database_url = database_url
        self.amqp_url = amqp_url
        self.topology = topology
        self.projections = list(projections)
        self.page_key = page_key  # signs each page (infra/broker/signing.py)
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.linger = linger
        self.busy_linger = busy_linger
        self.leader = leader
        self.status = RelayStatus()
        self._outage = Outage(amqp_url, "relay", log, first=retry_interval)
        self._store = StoreOutage(database_url, "relay", log, first=retry_interval)

    async def run(self) -> None:
        """Relay forever, reconnecting to PostgreSQL and RabbitMQ after any outage (the
        broker's said once, retried after 1 s doubling to 10 s: ``Outage``; the store's
        said once, retried after 1 s doubling to 5 s: ``StoreOutage``)."""
        while True:
            pause = self.retry_interval
            broker_lost = False  # the broker failed the leader (not the store, nor a stop)
            try:
                await self._lead()
            except asyncio.CancelledError:
                raise
            except SESSION_ENDED:
                said_ended(log, "relay", self.leader)
            except UNREACHABLE as error:
                pause = self._store.failed(error)
            except psycopg.Error as error:
                log.warning("relay interrupted (%s); retrying in %.1fs", error, self.retry_interval)
            except (
                aio_pika.exceptions.AMQPError,
                ChannelInvalidStateError,
                OSError,
            ) as error:
                broker_lost = self.status.leader
                pause = self._outage.failed(error)
            finally:
                self.status.leader = False
                self.status.broker_connected = False
                self.status.database_connected = False
                metrics.RELAY_LEADER.set(0)
                # The broker gauge is the leader's alone (only it connects): 0 where the
                # broker failed it; otherwise no series, so that a healthy standby, or a
                # relay waiting out the store's outage (CardinalDatabaseDown's), does not
                # hold CardinalBrokerDown firing.
                if broker_lost:
                    metrics.BROKER_CONNECTED.labels("relay").set(0)
                else:
                    metrics.withdraw(metrics.BROKER_CONNECTED, "relay")
            await asyncio.sleep(pause)

    async def _lead(self) -> None:
        # The session ends after LEADER_IDLE_TIMEOUT of silence, and is kept talking while
        # this process runs: a frozen leader loses its lock to the standby within about 30 s.
        async with (
            await psycopg.AsyncConnection.connect(
                self.database_url, autocommit=True, application_name=connection_name("relay")
            ) as conn,
            leader_session(conn, self.leader),
        ):
            self.status.database_connected = True
            self._store.connected()
            await self._become_leader(conn)
            connection = await aio_pika.connect(
                self.amqp_url,
                client_properties={"connection_name": f"{self.topology.namespace}-relay"},
            )
            # Watched from the start: an idle relay (no entry to publish) learns of a lost
            # broker as the connection closes, not at its next publish (which may be long
            # after: its gauge and the operators' status said "connected" meanwhile).
            lost = connection_closed(connection)
            async with connection:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                events, _, _ = await self.topology.declare(channel, self.projections)
                self.status.broker_connected = True
                metrics.BROKER_CONNECTED.labels("relay").set(1)
                self._outage.connected()
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(EVENTS_TABLE)))
                # A position lost in a crash only re-publishes pages that projections
                # drop as duplicates: no need to wait for the WAL flush on each page,
                # and the ballot writers' commits share that flush.
                await conn.execute("SET synchronous_commit = off")
                position = await self._stored_position(conn)
                log.info("relay is the leader, publishing after position %d", position)
                await _unless_lost(self._relay(conn, events, position), lost)

    async def _relay(
        self, conn: psycopg.AsyncConnection[Any], events: AbstractExchange, position: int
    ) -> None:
        while True:
            before = position
            position = await self._publish_pending(conn, events, position)
            await self._wait(conn, busy=position - before >= BUSY_ROUND)

    async def _become_leader(self, conn: psycopg.AsyncConnection[Any]) -> None:
        waiting_said = False
        while True:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (RELAY_LOCK,))
            row = await cursor.fetchone()
            if row is not None and row[0]:
                self.status.leader = True
                metrics.RELAY_LEADER.set(1)
                return
            if not waiting_said:
                # (a leader the broker failed, now a standby: its 0 is another's to report)
                metrics.withdraw(metrics.BROKER_CONNECTED, "relay")
                log.info("another relay is active; standing by")
                waiting_said = True
            await asyncio.sleep(self.poll_interval)

    async def _stored_position(self, conn: psycopg.AsyncConnection[Any]) -> int:
        await conn.execute(
            "INSERT INTO relay_positions (name, position) VALUES (%s, 0) ON CONFLICT DO NOTHING",
            (RELAY_NAME,),
        )
        cursor = await conn.execute(
            "SELECT position FROM relay_positions WHERE name = %s", (RELAY_NAME,)
        )
        row = await cursor.fetchone()
        assert row is not None
        self.status.position = int(row[0])
        return self.status.position

    # The incarnation of the store pages are read from (infra/store/incarnation.py), said in
    # each page, and the connection it was read on: read once per connection (a restored or
    # promoted store is reached by a new one).
    _incarnation: tuple[object, Incarnation | None] | None = None

    async def _publish_pending(
        self, conn: psycopg.AsyncConnection[Any], exchange: AbstractExchange, position: int
    ) -> int:
        if self._incarnation is None or self._incarnation[0] is not conn:
            self._incarnation = (conn, await incarnation(conn))
        store = self._incarnation[1]
        while True:
            cursor = await conn.execute(PAGE, (position, self.page_size), prepare=True, binary=True)
            rows = await cursor.fetchall()
            if not rows:
                return position
            last = self.status.head = int(rows[-1][0])
            page: dict[str, Any] = {"after": position, "last": last}
            if store is not None:
                # In the signed body: workers apply only pages of their own store's
                # incarnation (a restore's store never takes the pages of the store it was
                # restored from); workers of the release before ignore it.
                page["incarnation"] = store.as_message()
            page["events"] = _entries(rows)
            body = orjson.dumps(page)
            name = f"{position}-{last}"
            await exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=name,
                    headers={HEADER: sign(self.page_key, name, body)},
                ),
                routing_key="",
                mandatory=True,
            )
            # Confirmed by the broker: only now may the position move past these entries.
            await conn.execute(
                "UPDATE relay_positions SET position = %s, updated_at = now() WHERE name = %s",
                (last, RELAY_NAME),
            )
            position = self.status.position = last
            self.status.published_pages += 1
            self.status.published_events += len(rows)
            metrics.RELAY_PUBLISHED.inc(len(rows))
            metrics.RELAY_POSITION.set(position)
            if len(rows) < self.page_size:
                return position  # the page ended at the head: no need to ask again

    async def _wait(self, conn: psycopg.AsyncConnection[Any], *, busy: bool) -> None:
        with contextlib.suppress(TimeoutError):
            async for _ in conn.notifies(timeout=self.poll_interval, stop_after=1):
                pass
        # Under a stream of commits, a pause makes one page of many entries instead of many
        # pages of a few: cheaper for every projection downstream (each page is a
        # transaction in each). While ballots pour in (the last round carried BUSY_ROUND
        # entries or more), the pause is longer: a tenth of a second, what a results stream
        # shows anyway (at most 4 updates a second); a quiet log keeps its short pause.
        await asyncio.sleep(self.busy_linger if busy else self.linger)


async def _unless_lost(work: Awaitable[None], lost: asyncio.Future[BaseException]) -> None:
    """Run ``work`` until it ends, or until the broker connection is ``lost``: then it is
    cancelled and the loss raised (a ``ConnectionError``, which ``Relay.run`` says once as
    the broker's outage, retrying with its backoff)."""
    task = asyncio.ensure_future(work)
    try:
        either: set[asyncio.Future[Any]] = {task, lost}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()  # its own error first: a publish that failed says why
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        # The stop's own cancel, come meanwhile, was suppressed with the work's: raised, or
        # the relay would carry on as after an outage of the broker.
        if (current := asyncio.current_task()) is not None and current.cancelling():
            raise asyncio.CancelledError
        raise ConnectionError("connection lost") from lost.result()
    finally:
        if not task.done():  # (cancelled ourselves: the process stopping)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _entries(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Log rows as message entries; the stored JSON state goes through untouched."""
    return [
        {
            "position": position,
            "stream_id": stream_id,
            "version": version,
            "type": event_type(topic),
            "data": orjson.Fragment(bytes(state)),
        }
        for position, stream_id, version, topic, state in rows
    ]
