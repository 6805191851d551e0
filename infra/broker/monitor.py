"""One connection per API process to tell whether RabbitMQ is there.

The API does not need the broker to take ballots or serve results (the projections catch
up from the store), so an outage makes the service *degraded*, not unready. Readiness and
health probes read this monitor's state instead of opening a connection each (which cost
a connection and an error line per probe while the broker was down).

Where another task of the process already says the broker's outages under the same name (a
standalone ``cardinal ingest``: its consumer), the monitor is ``quiet``: it keeps its state
and gauge but says nothing, so that one outage is one warning and one return per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from infra import metrics
from infra.broker.outage import Outage

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds between connection attempts while the broker is away


def _silent() -> logging.Logger:
    """A logger that drops every line (a quiet monitor's outage)."""
    silent = logging.getLogger(f"{__name__}.quiet")
    if not silent.filters:
        silent.addFilter(lambda _: False)
    return silent


class BrokerMonitor:
    def __init__(self, amqp_url: str, component: str = "api", *, quiet: bool = False) -> None:
        self.amqp_url = amqp_url
        self.component = component
        self.quiet = quiet
        self.connected = False
        self.reason = "not yet connected"
        self._task: asyncio.Task[None] | None = None
        self._connection: AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="broker-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    def describe(self) -> str:
        # Anyone may read this (/api/health): the reason, which may name hosts and ports,
        # goes to the log only.
        return "ok" if self.connected else "degraded: the broker is unreachable (see the log)"

    def _set(self, connected: bool, reason: str = "") -> None:
        self.connected, self.reason = connected, reason
        metrics.BROKER_CONNECTED.labels(self.component).set(1 if connected else 0)

    async def _watch(self) -> None:
        # Said once per outage, naming the broker and AMQP_URL; tried again after 1 s
        # doubling to 10 s (results catch up from the store meanwhile).
        # Quiet: said by another task of the process, under the same name.
        outage = Outage(
            self.amqp_url, self.component, _silent() if self.quiet else log, first=RETRY
        )
        while True:
            try:
                connection = await aio_pika.connect(self.amqp_url, timeout=5)
            except Exception as error:  # any failure means "not connected"
                self._set(False, str(error) or type(error).__name__)
                await asyncio.sleep(outage.failed(error))
                continue
            self._connection = connection  # type: ignore[assignment]
            if outage.down is None and not self.quiet:  # (after an outage: said by connected)
                log.info("%s: broker connected", self.component)
            outage.connected()
            self._set(True)
            await connection_closed(connection)
            self._set(False, "connection lost")
            outage.failed(ConnectionError("connection lost"))
            self._connection = None


def connection_closed(connection: aio_pika.abc.AbstractConnection) -> asyncio.Future[BaseException]:
    """A future done, with why, when the connection closes, for whatever reason (the
    monitor's watch and the relay's)."""
    lost: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def closed(_: object, *why: object) -> None:
        if not lost.done():
            error = why[0] if why and isinstance(why[0], BaseException) else None
            lost.set_result(error or ConnectionError("connection lost"))

    connection.close_callbacks.add(closed)
    return lost
