"""The `cardinal ingest` process: the API's services without HTTP, and the consumer."""

from __future__ import annotations

import asyncio
import logging

from aio_pika.exceptions import AMQPConnectionError
from aiormq.exceptions import ProbableAuthenticationError

from domain.application import VotingApplication
from infra.ingest.consumer import Ingester
from infra.metrics import serve_worker_metrics
from infra.runtime.bootstrap import running_services
from infra.runtime.lifecycle import check_port_free
from infra.runtime.settings import Settings, SettingsError
from infra.runtime.voters import VoterKeys

log = logging.getLogger(__name__)


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
    )


async def run_ingest(settings: Settings, *, metrics_port: int | None) -> None:
    """Consume the ingest queue until cancelled, reconnecting and restarting as needed."""
    if settings.amqp_url is None:
        raise SettingsError("AMQP_URL is not set; `cardinal ingest` consumes from RabbitMQ")
    assert settings.database_url is not None
    if metrics_port:  # before connecting: a taken port is said at once, not as a traceback
        check_port_free(settings.metrics_listen_host, metrics_port, "METRICS_PORT (0: none)")
    async with running_services(settings) as services:
        consumer = ingester(settings, services.app, services.voter_keys)
        tasks = [asyncio.create_task(consume_forever(consumer))]
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
        log.info("consuming %s", settings.ingest_queue_name)
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()


async def consume_forever(consumer: Ingester) -> None:
    """Run the consumer; if it fails (the broker unreachable at start), start it again."""
    while True:
        try:
            await consumer.run()
        except asyncio.CancelledError:
            raise
        except ProbableAuthenticationError as error:
            log.warning(
                "the broker refused AMQP_URL's user and password (%s): check AMQP_URL; "
                "trying again in 2s",
                str(error).strip() or type(error).__name__,
            )
        except (AMQPConnectionError, ConnectionError) as error:
            log.warning(
                "ingest cannot reach the broker (%s); trying again in 2s",
                str(error).strip() or type(error).__name__,
            )
        except Exception:
            log.exception("ingest stopped; starting again in 2s")
        await asyncio.sleep(2)
