"""The broker is trusted to carry the relay's pages, not for what they say (security
review: anyone who could publish to ``<ns>.events``, RabbitMQ's default guest say, forged
the live results). A page just past the log head, of made-up ballots, was applied: the
forged ballots counted in every served result, and the projection's position moved past
the head, so the relay's real pages for those positions were dropped as duplicates.

Here against the real RabbitMQ and PostgreSQL: pages not signed by this stack's relay
(unsigned, signed with another key, a genuine signature over an altered body) are refused
unread, and the real ballots published afterwards are all counted, once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import aio_pika
import orjson
import psycopg
import pytest
from prometheus_client import REGISTRY

from domain.ballot import Ballot
from domain.rules import ElectionRules
from domain.voter import Voter
from infra.broker.signing import HEADER, page_key, sign
from infra.broker.topology import delete_namespace
from infra.runtime.bootstrap import running_workers
from infra.store import open_application
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from projections import PROJECTIONS
from projections.queries import tally_snapshot
from tests.databases import create_database, drop_database
from tests.servers import settings_for

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BALLOT_TOPIC = f"{Ballot.__module__}:{Ballot.__qualname__}"
FORGED = 12  # ballots per forged page, as in the review's repro


@pytest.fixture
async def stack() -> AsyncIterator[tuple[str, str]]:
    """A database and a broker namespace of this test's own."""
    url = create_database("cardinal_forged_pages")
    migrate(url)
    namespace = f"t-forged-{uuid.uuid4().hex[:8]}"
    try:
        yield url, namespace
    finally:
        delete_namespace(AMQP_URL, namespace, PROJECTIONS)
        drop_database(url)


async def _until(check: Callable[[], Awaitable[Any]], patience: float = 30) -> Any:
    deadline = asyncio.get_running_loop().time() + patience
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
    return found


def _head(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM cardinal_events")
        return int(row.fetchone()[0])  # type: ignore[index]


async def _counted(url: str, election_id: UUID) -> tuple[int, dict[str, int]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        snapshot = await tally_snapshot(conn, election_id)
    return snapshot.position, {k: v for k, v in snapshot.counters.items() if v}


def _forged_body(election_id: UUID, head: int, choice: str = "b") -> bytes:
    """The review's repro: FORGED ballots for ``choice`` just past the log head."""
    events = [
        {
            "position": head + 1 + n,
            "stream_id": str(uuid.uuid4()),
            "version": 1,
            "type": "BallotCast",
            "data": {
                "class_version": 3,
                "election_id": str(election_id),
                "nonce": "00" * 16,
                "originator_topic": BALLOT_TOPIC,
                "request_key": None,
                "timestamp": "2026-12-07T07:40:00+00:00",
                "vote": {"choice": choice},
            },
        }
        for n in range(FORGED)
    ]
    return orjson.dumps({"after": head, "last": head + FORGED, "events": events})


async def test_pages_not_signed_by_the_relay_are_refused_and_the_real_ballots_counted(
    stack: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, namespace = stack
    settings = settings_for(url, amqp_url=AMQP_URL, namespace=namespace)
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    caplog.set_level(logging.WARNING, logger="projections.worker")
    refused_before = REGISTRY.get_sample_value(
        "cardinal_projection_unsigned_pages_total", {"projection": "tally"}
    )
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "abc"], method="plurality"
        )
        election_id = (await app.create_election("Forged pages", rules)).id
        await app.open_election(election_id)
        async with running_workers(settings, relay=True, projections=("tally",)) as workers:
            worker = workers.projections[0]
            for n in range(3):
                await app.cast_ballot(election_id, Voter(f"v{n}", f"v{n}"), {"choice": "a"})
            head = _head(url)

            async def caught_up() -> bool:
                if worker.status.position < head:  # (the read model may not exist yet)
                    return False
                return (await _counted(url, election_id))[0] >= head

            await _until(caught_up)
            assert (await _counted(url, election_id))[1] == {"n": 3, "c:a": 3}

            # Forged pages for the positions the relay's next page will cover, named as
            # that page is (the decoded pages were cached by that name).
            name = f"{head}-{head + FORGED}"
            body = _forged_body(election_id, head)
            tampered = _forged_body(election_id, head, choice="c")
            forgeries = [
                aio_pika.Message(body, message_id=name),  # unsigned
                aio_pika.Message(  # signed with a key not this stack's
                    body,
                    message_id=name,
                    headers={HEADER: sign(page_key("x" * 40, namespace), name, body)},
                ),
                aio_pika.Message(  # a genuine signature, over another body
                    tampered,
                    message_id=name,
                    headers={HEADER: sign(page_key(settings.secret or "", namespace), name, body)},
                ),
            ]
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(f"{namespace}.events")
                for forged in forgeries:
                    await exchange.publish(forged, routing_key="")

            async def dealt_with() -> bool:  # (the old code: applied, past the head)
                status = worker.status
                return getattr(status, "unsigned", 0) >= len(forgeries) or status.position > head

            await _until(dealt_with)
            assert worker.status.position == head  # not moved past the head
            assert (await _counted(url, election_id))[1] == {"n": 3, "c:a": 3}

            # The real ballots for those positions, published by the relay afterwards.
            for n in range(3, 3 + FORGED):
                await app.cast_ballot(election_id, Voter(f"v{n}", f"v{n}"), {"choice": "a"})
            head = _head(url)
            await _until(caught_up)
            await asyncio.sleep(0.5)  # anything late would show now
            counters = (await _counted(url, election_id))[1]
            # every real ballot, once; no forged one
            assert counters == {"n": 3 + FORGED, "c:a": 3 + FORGED}, counters
            assert worker.status.rejected == 0
    finally:
        await writer.stop()
        app.close()
    refused_now = REGISTRY.get_sample_value(
        "cardinal_projection_unsigned_pages_total", {"projection": "tally"}
    )
    assert refused_now == (refused_before or 0) + len(forgeries)
    said = [r.getMessage() for r in caplog.records if "not signed" in r.getMessage()]
    assert len(said) == 1, said  # said once, not per page
    assert said[0].startswith("projection tally REFUSED 1 message(s) not signed")


async def test_an_old_relays_pages_are_refused_and_nothing_is_lost(
    stack: tuple[str, str],
) -> None:
    """A rolling upgrade: new workers refuse the pages a relay of the release before
    publishes (unsigned, or under a key that is not theirs: the same to them), and read
    what they held from the store."""
    from infra.broker.relay import Relay
    from infra.broker.topology import Topology

    url, namespace = stack
    settings = settings_for(url, amqp_url=AMQP_URL, namespace=namespace)
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    old = Relay(url, AMQP_URL, Topology(namespace), PROJECTIONS, page_key=b"not this stack's")
    relaying = asyncio.create_task(old.run())
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "abc"], method="plurality"
        )
        election_id = (await app.create_election("Old relay", rules)).id
        await app.open_election(election_id)
        async with running_workers(settings, relay=False, projections=("tally",)) as workers:
            worker = workers.projections[0]

            async def consuming() -> bool:
                return worker.status.broker_connected and worker.status.position > 0

            await _until(consuming)  # (from here on, entries reach it as pages)
            for n in range(20):
                await app.cast_ballot(election_id, Voter(f"v{n}", f"v{n}"), {"choice": "b"})
            head = _head(url)

            async def caught_up() -> bool:
                if worker.status.position < head or not worker.status.unsigned:
                    return False
                return (await _counted(url, election_id))[0] >= head

            await _until(caught_up)
            assert (await _counted(url, election_id))[1] == {"n": 20, "c:b": 20}
            assert old.status.position == head  # published: all of it refused, none lost
    finally:
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        await writer.stop()
        app.close()


FLOOD = 300  # unsigned messages of FLOOD_BYTES each (the review sent 3,000)
FLOOD_BYTES = 100_000
KEPT_AT_MOST = 10  # records a minute per projection (the review: "at most N")
KEPT_BYTES = 1024  # of each message's body


async def test_a_flood_of_forged_pages_keeps_a_few_small_records_and_counts_them_all(
    stack: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of forged pages was copied, body and all, into every projection's
    dead-letter queue, with no bound (merge review: 3,000 pages of 100 KB, 300 MB sent,
    900 MB kept for good, until the broker's alarm blocked the workers' publishes and the
    read models stalled); and the operator's status said 0 refused all the while. Now each
    worker keeps at most RECORDS_PER_MINUTE records a minute, each its headers, size and
    first RECORD_BODY_BYTES; the status counts every refused message; and every real
    ballot, cast before, during and after the flood, is counted. (So with a message that
    does not decode and names no range: dead-lettered as a bounded record too.)"""
    from api import documents
    from infra.broker.topology import Topology
    from projections import strangers
    from projections.status import projection_status

    # (said, and written for the status, every 0.2 s rather than every minute)
    monkeypatch.setattr(strangers, "UNSIGNED_SAID_EVERY", 0.2)
    url, namespace = stack
    settings = settings_for(url, amqp_url=AMQP_URL, namespace=namespace)
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    names = tuple(PROJECTIONS)
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "abc"], method="plurality"
        )
        election_id = (await app.create_election("Flood", rules)).id
        await app.open_election(election_id)
        async with running_workers(settings, relay=True, projections=names) as workers:

            async def consuming() -> bool:
                return all(w.status.broker_connected for w in workers.projections)

            await _until(consuming)
            for n in range(5):
                await app.cast_ballot(election_id, Voter(f"v{n}", f"v{n}"), {"choice": "a"})
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(f"{namespace}.events")
                body = b"x" * FLOOD_BYTES
                # First a message signed (as by the relay) that does not decode and names no
                # range: dead-lettered as a bounded record too, and counted as a poison page.
                key = page_key(settings.secret or "", namespace)
                await exchange.publish(
                    aio_pika.Message(
                        body, message_id="junk", headers={HEADER: sign(key, "junk", body)}
                    ),
                    routing_key="",
                )
                for n in range(FLOOD):
                    await exchange.publish(
                        aio_pika.Message(
                            body,
                            message_id=f"f{n}",
                            headers={"forged-by": "someone with a broker account"},
                        ),
                        routing_key="",
                    )
                    if n % 50 == 0:  # real ballots in the middle of the flood
                        voter = Voter(f"w{n}", f"w{n}")
                        await app.cast_ballot(election_id, voter, {"choice": "b"})
                for n in range(5):
                    await app.cast_ballot(election_id, Voter(f"z{n}", f"z{n}"), {"choice": "c"})
                head = _head(url)

                async def settled() -> bool:
                    if any(
                        w.status.unsigned < FLOOD or w.status.position < head
                        for w in workers.projections
                    ):
                        return False
                    return (await _counted(url, election_id))[0] >= head

                await _until(settled, patience=60)
                counted = (await _counted(url, election_id))[1]
                assert counted == {"n": 16, "c:a": 5, "c:b": 6, "c:c": 5}, counted

                # The dead-letter queues hold a few small records, not the flood.
                topology = Topology(namespace)
                for name in names:
                    parked = await channel.declare_queue(
                        topology.dead_letter_queue(name), passive=True
                    )
                    held = parked.declaration_result.message_count
                    assert held is not None
                    assert 1 <= held <= KEPT_AT_MOST, (name, held)
                    junk = await parked.get(no_ack=True)
                    assert junk is not None
                    assert len(junk.body) == KEPT_BYTES
                    assert junk.headers["x-cardinal-size"] == FLOOD_BYTES
                    assert str(junk.headers["x-cardinal-reason"]).startswith("undecodable page")
                    record = await parked.get(no_ack=True)
                    assert record is not None
                    assert len(record.body) == KEPT_BYTES
                    said = record.headers
                    assert said["x-cardinal-size"] == FLOOD_BYTES
                    assert said["x-cardinal-reason"] == strangers.UNSIGNED_REASON
                    assert said["x-cardinal-original-message_id"] == "f0"
                    forged_by = said["x-cardinal-header-forged-by"]
                    assert forged_by in (
                        "someone with a broker account",
                        b"someone with a broker account",
                    )

            # The operator's status counts every refused message (rows written at most
            # every UNSIGNED_SAID_EVERY, the last once the queue is quiet), none of them
            # as a dead-lettered page.
            async def status() -> dict[str, dict[str, Any]]:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    return {entry["name"]: entry for entry in await projection_status(conn)}

            async def all_counted() -> bool:
                found = await status()
                return all(found[name]["unsigned"] >= FLOOD for name in names)

            await _until(all_counted)
            found = await status()
            documents.Projections.model_validate({"projections": list(found.values())})
            for name in names:
                assert found[name]["unsigned"] == FLOOD, found[name]
                assert found[name]["dead_lettered"] == 1, found[name]  # (the junk)
    finally:
        await writer.stop()
        app.close()
