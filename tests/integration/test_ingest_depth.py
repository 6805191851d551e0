"""The ingest queues' depth gauges follow the broker (the backlog and refusal alerts read
them), on the real RabbitMQ, a queue of this test's own."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from infra.ingest.publisher import publish
from tests.e2e.stack import AMQP_URL
from tests.integration import test_ingest
from tests.integration.test_ingest import Ingest, ballot, queue_depth, until

ingest = test_ingest.ingest  # the fixture: a consumer on a queue of its own
# The watcher sweeps every DEPTH_EVERY (5 s): a few sweeps' time.
WITHIN = 30.0


def _gauge(queue: str) -> float | None:
    return REGISTRY.get_sample_value("cardinal_ingest_queue_messages", {"queue": queue})


async def test_the_refused_queue_gauge_counts_the_refused_messages_waiting(
    ingest: Ingest,
) -> None:
    refused = ingest.queue + ".refused"
    open_id = await ingest.election()
    bad: list[tuple[str, object]] = [
        ("d-option", ballot(open_id, "a", choice="maybe")),
        ("d-unknown", ballot(uuid.uuid4(), "b")),
        ("d-extra", {**ballot(open_id, "c"), "colour": "red"}),
        ("d-json", b"{not json"),
    ]
    await publish(AMQP_URL, ingest.queue, bad)
    # The broker holds them (nobody consumes the refused queue) ...
    await until(lambda: queue_depth(refused), lambda depth: depth == len(bad), WITHIN)
    # ... and the gauge says so within a few sweeps (it stayed 0 when the robust channel
    # answered the passive declare from its cache).
    await until(lambda: _gauge(refused), lambda value: value == len(bad), WITHIN)
    assert _gauge(ingest.queue) == 0
