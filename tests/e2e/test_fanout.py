"""Fan-out over real RabbitMQ and PostgreSQL, with api, relay and projector as processes.

Whatever crashes, the results each election serves equal a recount of the event store.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import orjson
import psycopg
import pytest

from infra.broker.signing import HEADER, page_key, sign
from infra.store.log import decode_row
from tests.e2e.load import Load, assert_results_match_recount, create_open_elections
from tests.e2e.stack import AMQP_URL, Stack, broker_connections, close_broker_connections

BALLOTS = 3000


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path) as running:
        yield running


async def test_results_survive_sigkill_of_the_projector_then_the_relay(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http)
        load = Load(stack.url, elections)

        async def crash_on_schedule(done: int) -> None:
            if done == BALLOTS // 3:
                stack.kill("projector")
            elif done == BALLOTS // 3 + 300:
                stack.start("projector")
            elif done == 2 * BALLOTS // 3:
                stack.kill("relay")
            elif done == 2 * BALLOTS // 3 + 300:
                stack.start("relay")

        await load.run(BALLOTS, on_progress=crash_on_schedule)
        assert load.failures == 0
        assert load.accepted > BALLOTS * 0.9, load.refused
        await assert_results_match_recount(http, stack.database_url, elections)
        stack.assert_relayed()


async def test_no_ballot_answered_2xx_is_lost_when_the_api_is_killed(stack: Stack) -> None:
    """SIGKILL the API with ballots in flight: every 2xx names a ballot the log holds at
    that position; clients retry the rest with their Idempotency-Key, none is counted
    twice."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("plurality", "irv"))
        load = Load(stack.url, elections, seed=71)
        killed_after: list[int] = []

        async def crash(done: int) -> None:
            if done in (BALLOTS // 3, 2 * BALLOTS // 3):
                killed_after.append(max(load.positions))
                stack.kill("api")
                stack.start("api")

        await load.run(BALLOTS, concurrency=32, on_progress=crash)
        assert load.failures == 0
        assert len(killed_after) == 2
        assert max(load.positions) > killed_after[-1]  # the restarted API took ballots
        with psycopg.connect(stack.database_url) as conn:
            rows = conn.execute(
                "SELECT originator_id::text, originator_version, notification_id "
                "FROM cardinal_events WHERE notification_id = ANY(%s)",
                ([position for _, _, position in load.receipts],),
            ).fetchall()
        assert sorted(rows) == sorted(set(load.receipts))
        await assert_results_match_recount(http, stack.database_url, elections)
        stack.assert_relayed()


async def test_results_survive_dropped_broker_connections(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("irv", "star", "approval"))
        load = Load(stack.url, elections, seed=11)
        dropped: list[int] = []

        async def drop(done: int) -> None:
            if done in (BALLOTS // 4, BALLOTS // 2, 3 * BALLOTS // 4):
                # Wait until relay and projector are connected again (they retry after 1 s),
                # so that every drop hits live connections.
                for _ in range(100):
                    if broker_connections(stack.namespace) >= 2:
                        break
                    await asyncio.sleep(0.1)
                dropped.append(close_broker_connections(stack.namespace))

        await load.run(BALLOTS, on_progress=drop)
        assert all(n >= 2 for n in dropped), dropped  # the relay's and the projector's
        await assert_results_match_recount(http, stack.database_url, elections)
        stack.assert_relayed()
        for name in ("relay", "projector"):
            assert stack.processes[name].poll() is None, stack.log(name)


async def _publish(stack: Stack, bodies: list[bytes]) -> None:
    """Publish pages signed as the stack's relay signs them (a page signed otherwise is
    refused unread: tests/integration/test_forged_pages.py), each named by its range."""
    key = page_key(stack.env["CARDINAL_SECRET"], stack.namespace)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(f"{stack.namespace}.events")
        for n, body in enumerate(bodies):
            try:
                page = orjson.loads(body)
                name = f"{page['after']}-{page['last']}"
            except (ValueError, KeyError, TypeError):
                name = f"poison-{n}"
            await exchange.publish(
                aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=name,
                    headers={HEADER: sign(key, name, body)},
                ),
                routing_key="",
            )


async def _pages_from_store(database_url: str, rng: random.Random, count: int) -> list[bytes]:
    """Valid pages cut at random from the log: each holds every entry of its range."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM cardinal_events ORDER BY notification_id"
        )
        rows = await cursor.fetchall()
    entries = [decode_row(row) for row in rows]
    pages = []
    for _ in range(count):
        first, last = sorted(rng.sample(range(len(entries)), 2))
        chosen = entries[first : last + 1]
        after = entries[first - 1].position if first else 0
        pages.append(
            orjson.dumps(
                {
                    "after": after,
                    "last": chosen[-1].position,
                    "events": [e.to_message() for e in chosen],
                }
            )
        )
    return pages


async def test_duplicated_and_reordered_messages_change_nothing(stack: Stack) -> None:
    rng = random.Random(5)
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("schulze", "score", "plurality"))
        load = Load(stack.url, elections, seed=23)
        await load.run(BALLOTS // 2)
        pages = await _pages_from_store(stack.database_url, rng, 200)
        rng.shuffle(pages)  # out of order, overlapping, many repeated
        await _publish(stack, pages + pages[:50])
        await load.run(BALLOTS // 2)
        await _publish(stack, pages)
        await assert_results_match_recount(http, stack.database_url, elections)
        stack.assert_relayed()


async def test_a_poison_message_is_dead_lettered_with_its_reason(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("approval",))
        await Load(stack.url, elections, seed=3).run(200)
        await _publish(stack, [b"not a page", b'{"after": 5, "last": 2, "events": []}'])
        await Load(stack.url, elections, seed=4).run(200)
        await assert_results_match_recount(http, stack.database_url, elections)

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        parked = await channel.get_queue(f"{stack.namespace}.tally.dead-letter")
        reasons = []
        for _ in range(2):
            message = await parked.get(timeout=5, fail=True)
            assert message is not None
            reasons.append(str(message.headers["x-cardinal-reason"]))
            await message.ack()
    assert any("undecodable page" in reason for reason in reasons), reasons
    assert any("last (2) before after (5)" in reason for reason in reasons), reasons
    async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
        cursor = await conn.execute(
            "SELECT name, count(*) FROM projection_rejections GROUP BY name ORDER BY name"
        )
        assert await cursor.fetchall() == [("catalog", 2), ("statistics", 2), ("tally", 2)]
    assert "REFUSED a message" in stack.log("projector")


async def test_an_unreadable_entry_is_set_aside_and_nothing_is_dead_lettered(
    stack: Stack,
) -> None:
    """The relay's page holding it does not decode; the projector reads that page from the
    store, sets the one entry aside, and counts every other."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("plurality", "irv"))
        await Load(stack.url, elections, seed=51).run(300)
        with psycopg.connect(stack.database_url) as conn, conn.transaction():
            conn.execute("LOCK TABLE cardinal_events IN EXCLUSIVE MODE")
            row = conn.execute(
                "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
                "VALUES (gen_random_uuid(), 1, 'domain.ballot:Ballot.Cast', '{\"vote\": ') "
                "RETURNING notification_id"
            ).fetchone()
        assert row is not None
        await Load(stack.url, elections, seed=52).run(300)
        await assert_results_match_recount(http, stack.database_url, elections)
        stack.assert_relayed()
    async with await psycopg.AsyncConnection.connect(stack.database_url) as reader:
        cursor = await reader.execute("SELECT count(*) FROM projection_rejections")
        assert await cursor.fetchone() == (0,)
        cursor = await reader.execute(
            "SELECT name, position FROM projection_set_aside ORDER BY name"
        )
        assert await cursor.fetchall() == [
            ("catalog", row[0]),
            ("statistics", row[0]),
            ("tally", row[0]),
        ]
    assert "does not decode" in stack.log("projector")


def _terminate_backends(database_url: str) -> int:
    """Cut every connection to the stack's database, as a PostgreSQL failover would."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


async def test_results_survive_lost_database_connections(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("borda", "plurality"))
        load = Load(stack.url, elections, seed=31)
        cut: list[int] = []

        async def cut_connections(done: int) -> None:
            if done in (BALLOTS // 3, 2 * BALLOTS // 3):
                cut.append(_terminate_backends(stack.database_url))

        await load.run(BALLOTS, on_progress=cut_connections)
        assert all(n >= 5 for n in cut), cut  # writer, feeds, pools, relay, workers
        assert load.failures == 0, load.refused
        await assert_results_match_recount(http, stack.database_url, elections)
        for name in ("api", "relay", "projector"):
            assert stack.processes[name].poll() is None, stack.log(name)


async def test_a_standby_relay_takes_over_when_the_active_one_dies(stack: Stack) -> None:
    stack.start("relay-standby")
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("copeland",))
        await Load(stack.url, elections, seed=41).run(300)
        stack.kill("relay")
        await Load(stack.url, elections, seed=42).run(300)
        await assert_results_match_recount(http, stack.database_url, elections)
    # The projections catch up from the store while no relay publishes, so the results can
    # match before the standby has taken the lock and published (a busy machine: 330 of
    # 668 at that moment): the standby must get there, within a deadline.
    deadline = time.monotonic() + 60
    async with await psycopg.AsyncConnection.connect(stack.database_url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT (SELECT position FROM relay_positions), "
                "(SELECT max(notification_id) FROM cardinal_events)"
            )
            relayed, head = await cursor.fetchone() or (0, 0)
            if relayed == head or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert relayed == head  # the standby published everything after the leader died
    assert "relay is the leader" in stack.log("relay-standby")
