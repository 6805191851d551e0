"""The `cardinal ingest` process: the API's services without HTTP, and the consumer."""

from __future__ import annotations

import asyncio
import logging
import re
import time

from aio_pika.exceptions import AMQPConnectionError
from aiormq.exceptions import ChannelPreconditionFailed, ProbableAuthenticationError

from domain.application import VotingApplication
from infra.broker.outage import Outage
from infra.broker.topology import Topology
from infra.ingest.consumer import Ingester
from infra.metrics import serve_worker_metrics
from infra.runtime.bootstrap import running_services
from infra.runtime.lifecycle import check_port_free
from infra.runtime.settings import Settings, SettingsError
from infra.runtime.voters import VoterKeys
from projections import PROJECTIONS

log = logging.getLogger(__name__)

# A declaration the broker refuses (a queue of that name made with other arguments) is said
# once, then at most once per MISMATCH_EVERY while it lasts, not a traceback per retry.
MISMATCH_EVERY = 60.0


def ingester(settings: Settings, app: VotingApplication, keys: VoterKeys) -> Ingester:
    """The consumer as the settings configure it."""
    assert settings.amqp_url is not None
    return Ingester(
        app,
        keys,
        settings.amqp_url,
        settings.ingest_queue_name,
        prefetch=settings.ingest_prefetch,
        batch=settings.ingest_batch,
        name=f"{settings.namespace} ingest",
        max_ballot_bytes=settings.max_body_bytes,
        reserved=reserved_names(settings.namespace),
    )


def reserved_names(namespace: str) -> list[str]:
    """What the broker's topology declares in ``namespace`` (``infra/broker/topology.py``):
    no reply is sent there (the consumer adds its own queues)."""
    topology = Topology(namespace)
    names = [topology.events_exchange, topology.dead_letter_exchange]
    for name in PROJECTIONS:
        names += [topology.queue(name), topology.dead_letter_queue(name)]
    return names


async def run_ingest(settings: Settings, *, metrics_port: int | None) -> None:
    """Consume the ingest queue until cancelled, reconnecting and restarting as needed."""
    if settings.amqp_url is None:
        raise SettingsError("AMQP_URL is not set; `cardinal ingest` consumes from RabbitMQ")
    assert settings.database_url is not None
    if metrics_port:  # before connecting: a taken port is said at once, not as a traceback
        check_port_free(settings.metrics_listen_host, metrics_port, "METRICS_PORT (0: none)")
    # The consumer says the broker's outages, once each, as "ingest": the services' broker
    # monitor, which keeps the gauge and state, says nothing (it said each outage twice).
    async with running_services(settings, component="ingest", quiet_broker=True) as services:
        consumer = ingester(settings, services.app, services.voter_keys)
        tasks = [
            asyncio.create_task(consume_forever(consumer)),
            # (said once consuming, not before connecting: a broker away at start is said
            # by the consumer, and "consuming" under it read as if ballots were flowing)
            asyncio.create_task(_say_consuming(consumer, settings.ingest_queue_name)),
        ]
        if metrics_port:
            tasks.append(
                asyncio.create_task(
                    serve_worker_metrics(
                        metrics_port,
                        settings.database_url,
                        "ingest",
                        settings.metrics_listen_host,
                        settings.metrics_token,
                    )
                )
            )
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()


async def consume_forever(consumer: Ingester) -> None:
    """Run the consumer; if it fails (the broker unreachable at start), start it again:
    the broker's absence said once, tried again after 1 s doubling to 10 s (the
    consumer's ``Outage``, which also says a broker lost mid-run, once)."""
    outage = consumer.outage
    mismatch = _Mismatch(consumer.queues.name)
    while True:
        back = asyncio.create_task(_said_back(consumer, outage))
        pause = 2.0
        try:
            await consumer.run()
        except asyncio.CancelledError:
            raise
        except ProbableAuthenticationError as error:
            detail = str(error).strip() or type(error).__name__
            why = f"it refused AMQP_URL's user and password ({detail}): check AMQP_URL"
            pause = outage.failed(error, why, anew=True)  # not the broker away: news
        except (AMQPConnectionError, ConnectionError, OSError) as error:
            pause = outage.failed(error)
        except ChannelPreconditionFailed as error:
            if not mismatch.said(error, pause):
                log.exception("ingest stopped; starting again in 2s")
        except Exception:
            log.exception("ingest stopped; starting again in 2s")
        finally:
            back.cancel()
        consumer.ready.clear()  # (``ready`` again: consuming again)
        await asyncio.sleep(pause)


async def _say_consuming(consumer: Ingester, queue: str) -> None:
    await consumer.ready.wait()
    log.info("consuming %s", queue)


async def _said_back(consumer: Ingester, outage: Outage) -> None:
    await consumer.ready.wait()
    outage.connected()


class _Mismatch:
    """A queue or exchange the broker holds with other arguments than the ones the consumer
    declares (a classic ``votes.aggregation`` pre-declared as a deployment guide says): the
    declare fails with PRECONDITION_FAILED "inequivalent arg", at every retry, until an
    operator acts. Said as one ERROR line naming it, what differs and what to do."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self._said: tuple[float, str] | None = None

    def said(self, error: ChannelPreconditionFailed, pause: float) -> bool:
        """Say ``error`` if it is such a refusal (once per MISMATCH_EVERY, or at once if the
        broker's words changed); False for any other PRECONDITION_FAILED."""
        reply = (str(error).strip().splitlines() or [""])[0]
        if "inequivalent arg" not in reply:
            return False
        now = time.monotonic()
        if (
            self._said is not None
            and self._said[1] == reply
            and now - self._said[0] < MISMATCH_EVERY
        ):
            return True
        self._said = (now, reply)
        named = re.search(r"for (queue|exchange) '([^']*)'", reply)
        what = f"{named[1]} {named[2]}" if named else f"queue {self.queue}"
        log.error(
            "ingest: RabbitMQ will not declare %s as the consumer needs it (%s): one of that "
            "name exists with other arguments (a classic queue, pre-declared?); delete it "
            "(once drained), or set INGEST_QUEUE to a name no queue has yet (now %s); trying "
            "again every %gs, said once a minute",
            what,
            reply,
            self.queue,
            pause,
        )
        return True
