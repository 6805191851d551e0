"""`cardinal ingest` against the real RabbitMQ and PostgreSQL: ballots from a queue, each
counted exactly once, refusals forwarded, never looping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
import aiormq
import orjson
import psycopg
import psycopg.conninfo
import psycopg.sql
import pytest
from prometheus_client import REGISTRY

from domain.ballot import ballot_id
from domain.election import Election
from domain.ports import StoreUnavailable
from domain.rules import VoterIds
from domain.voter import Voter
from infra.ingest import consumer as ingest_consumer
from infra.ingest.consumer import FAULT_ATTEMPTS, Ingester
from infra.ingest.publisher import publish
from infra.ingest.queues import DELIVERY_LIMIT, IngestQueues
from infra.ingest.service import consume_forever, ingester
from infra.runtime.bootstrap import Services, running_services
from infra.runtime.settings import Settings
from infra.store.migrations import migrate
from tests.databases import SERVER_URL, create_database, drop_database
from tests.e2e.stack import AMQP_URL
from tests.own_logs import ours
from tests.servers import settings_for

OPTIONS = [{"id": "yes", "label": "Yes"}, {"id": "no", "label": "No"}]
WAIT = 20.0


@dataclass
class Ingest:
    settings: Settings
    services: Services
    queue: str

    @property
    def database_url(self) -> str | None:
        return self.settings.database_url

    async def election(self, **rules: Any) -> UUID:
        from domain.rules import ElectionRules

        app = self.services.app
        created = await app.create_election(
            "Ingest", ElectionRules.create(options=OPTIONS, method="plurality", **rules)
        )
        await app.open_election(created.id)
        return created.id

    def versions(self, election_id: UUID, voters: list[str]) -> dict[str, int]:
        """Each voter's ballot events in the log (1: cast once)."""
        keys = self.services.voter_keys
        ids = {
            ballot_id(election_id, keys.for_voter_id(election_id, v, VoterIds.NFC).ballot_key): v
            for v in voters
        }
        assert self.settings.database_url is not None
        with psycopg.connect(self.settings.database_url) as conn:
            rows = conn.execute(
                "SELECT originator_id, count(*) FROM cardinal_events "
                "WHERE originator_id = ANY(%s) GROUP BY originator_id",
                (list(ids),),
            ).fetchall()
        return {ids[row[0]]: int(row[1]) for row in rows}

    async def until_counted(self, election_id: UUID, voters: list[str]) -> dict[str, int]:
        counted: dict[str, int] = await until(
            lambda: self.versions(election_id, voters), lambda v: len(v) == len(voters)
        )
        return counted


async def until(probe: Callable[[], Any], done: Callable[[Any], bool], within: float = WAIT) -> Any:
    """Poll ``probe`` until ``done`` says yes (or fail with the last value)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = probe()
        if isinstance(value, Awaitable):
            value = await value
        if done(value):
            return value
        assert loop.time() < deadline, f"still {value!r} after {within}s"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def consuming(settings: Settings) -> AsyncIterator[tuple[Services, Ingester]]:
    async with running_services(settings) as services:
        consumer = ingester(settings, services.app, services.voter_keys)
        task = asyncio.create_task(consume_forever(consumer))
        try:
            await asyncio.wait_for(consumer.ready.wait(), WAIT)
            yield services, consumer
        finally:
            task.cancel()
            # Bounded: a consumer that does not stop (its connection's close unanswered)
            # fails the test here rather than hanging the suite.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT)


@pytest.fixture
async def ingest(database_url: str) -> AsyncIterator[Ingest]:
    async with _ingesting(database_url) as found:
        yield found


@pytest.fixture
async def own_ingest() -> AsyncIterator[Ingest]:
    """An ingest on a database of this test's own: for a test that writes an entry no one
    can read, which the worker's session stack, on the shared one, would say as an ERROR
    in the middle of another test's count of what it said."""
    url = create_database("cardinal_ingest")
    migrate(url)
    try:
        async with _ingesting(url) as found:
            yield found
    finally:
        drop_database(url)


@contextlib.asynccontextmanager
async def _ingesting(url: str) -> AsyncIterator[Ingest]:
    settings = settings_for(url, amqp_url=AMQP_URL, namespace=f"test-{uuid.uuid4().hex[:8]}")
    try:
        async with consuming(settings) as (services, _):
            yield Ingest(settings, services, settings.ingest_queue_name)
    finally:
        await delete_queues(settings.ingest_queue_name)


async def delete_queues(queue: str, url: str = AMQP_URL) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        await IngestQueues(queue).delete(await connection.channel())


async def queue_depth(name: str, url: str = AMQP_URL) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        queue = await (await connection.channel()).declare_queue(name, passive=True)
        return int(queue.declaration_result.message_count or 0)


async def take_all(
    name: str, count: int, url: str = AMQP_URL
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Wait for ``count`` messages in queue ``name``; take them (acked)."""
    taken: list[aio_pika.abc.AbstractIncomingMessage] = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while len(taken) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                assert loop.time() < deadline, (
                    f"{[m.message_id for m in taken]}: not {count} in {name}"
                )
                await asyncio.sleep(0.1)
                continue
            taken.append(message)
    return taken


def ballot(election_id: UUID, voter: str, choice: str = "yes") -> dict[str, Any]:
    return {"election_id": str(election_id), "voter_id": voter, "choice": choice}


async def test_a_message_id_republished_and_redelivered_is_counted_once(
    ingest: Ingest,
) -> None:
    election_id = await ingest.election(allow_revote=False)
    voters = [f"v{n}" for n in range(300)]
    messages = [(f"m-{v}", ballot(election_id, v)) for v in voters]
    # The same ballots over HTTP's path first (same key): the queue's copies are replays.
    app, keys = ingest.services.app, ingest.services.voter_keys
    from infra.runtime.voters import request_key

    for voter in voters[:50]:
        voter_keys = keys.for_voter_id(election_id, voter, VoterIds.NFC)
        await app.cast_ballot(
            election_id, voter_keys, {"choice": "yes"}, request_key(f"m-{voter}", voter_keys)
        )
    # Redelivered: a consumer takes every message and dies without acking.
    await publish(AMQP_URL, ingest.queue, messages[:100])
    await publish(AMQP_URL, ingest.queue, messages)  # and republished: each sent twice
    await publish(AMQP_URL, ingest.queue, messages[100:200])  # a third time for some
    counted = await ingest.until_counted(election_id, voters)
    await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)
    assert counted == dict.fromkeys(voters, 1)
    assert await queue_depth(ingest.queue + ".refused") == 0  # replays are not refusals


async def test_a_message_a_dead_consumer_held_is_delivered_again_and_counted_once(
    database_url: str,
) -> None:
    settings = settings_for(database_url, amqp_url=AMQP_URL, namespace=f"t-{uuid.uuid4().hex[:8]}")
    queue = settings.ingest_queue_name
    voters = [f"r{n}" for n in range(200)]
    try:
        async with running_services(settings) as services:
            from domain.rules import ElectionRules

            created = await services.app.create_election(
                "Redelivery", ElectionRules.create(options=OPTIONS, method="plurality")
            )
            await services.app.open_election(created.id)
        election_id = created.id
        await publish(AMQP_URL, queue, [(f"m-{v}", ballot(election_id, v)) for v in voters])
        # A consumer takes them all and its connection dies before it acks any.
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        held: list[object] = []

        async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            held.append(message)

        await (await channel.declare_queue(queue, passive=True)).consume(hold)
        await until(lambda: len(held), lambda n: n == len(voters))
        await connection.close()
        async with consuming(settings) as (services, _):
            check = Ingest(settings, services, queue)
            assert await check.until_counted(election_id, voters) == dict.fromkeys(voters, 1)
            await until(lambda: queue_depth(queue), lambda depth: depth == 0)
    finally:
        await delete_queues(queue)


async def test_poison_messages_are_refused_with_the_problem_and_not_redelivered(
    ingest: Ingest,
) -> None:
    open_id = await ingest.election(allow_revote=False)
    closed_id = await ingest.election()
    await ingest.services.app.close_election(closed_id)
    poison: list[tuple[str, Any]] = [
        ("p-json", b"{not json"),
        ("p-list", [1, 2]),
        ("p-unknown", ballot(uuid.uuid4(), "x")),
        ("p-closed", ballot(closed_id, "x")),
        ("p-choice", ballot(open_id, "x", choice="maybe")),
        ("p-extra", {**ballot(open_id, "y"), "colour": "red"}),
        ("p-no-voter", {"election_id": str(open_id), "choice": "yes"}),
        ("p-again", ballot(open_id, "first", choice="no")),  # revoting is off
    ]
    await publish(AMQP_URL, ingest.queue, [("p-first", ballot(open_id, "first"))])
    await ingest.until_counted(open_id, ["first"])
    reasons = ("election_not_found", "already_voted", "malformed_json", "missing_message_id")
    before = {reason: _refused(reason) for reason in reasons}
    await publish(AMQP_URL, ingest.queue, poison)
    # And a message_id no key can be (aiormq fills in a random one where none is set).
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(orjson.dumps(ballot(open_id, "z")), message_id="bad\x01id"),
            routing_key=ingest.queue,
        )
    refused = await take_all(ingest.queue + ".refused", len(poison) + 1)
    by_id = {m.message_id: m for m in refused}
    assert set(by_id) == {key for key, _ in poison} | {"bad\x01id"}
    details = {key: str(m.headers["x-refusal"]) for key, m in by_id.items()}
    statuses = {key: m.headers["x-refusal-status"] for key, m in by_id.items()}
    assert "not valid JSON" in details["p-json"]
    assert statuses["p-unknown"] == 404
    assert statuses["p-closed"] == 409
    assert statuses["p-again"] == 409
    assert "already cast" in details["p-again"]
    assert statuses["p-choice"] == 422
    assert "colour" in details["p-extra"]
    assert "voter_id is required" in details["p-no-voter"]
    assert "message_id is required" in details["bad\x01id"]
    assert by_id["p-closed"].body == orjson.dumps(ballot(closed_id, "x"))  # as sent: fixable
    await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)
    assert ingest.versions(open_id, ["first", "x", "y", "z"]) == {"first": 1}
    assert {reason: _refused(reason) - before[reason] for reason in reasons} == dict.fromkeys(
        reasons, 1
    )


async def test_voter_ids_are_one_voter_in_either_unicode_form_and_refused_with_a_reason(
    ingest: Ingest,
) -> None:
    """The consumer names voters as the HTTP path does: in an election pinned to NFC voter
    ids, "José" precomposed and decomposed are one voter (the second a 409 where revoting
    is off), and surrounding whitespace or a bidi control is refused (422, voter_id)."""
    election_id = await ingest.election(allow_revote=False)
    nfc, zwnj = "Jos\u00e9", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    await publish(AMQP_URL, ingest.queue, [("u-nfc", ballot(election_id, nfc))])
    await ingest.until_counted(election_id, [nfc])
    refusing = [
        ("u-nfd", ballot(election_id, "Jose\u0301", "no")),
        ("u-space", ballot(election_id, "ada ")),
        ("u-bidi", ballot(election_id, "ada\u2067")),
    ]
    await publish(AMQP_URL, ingest.queue, [*refusing, ("u-zwnj", ballot(election_id, zwnj))])
    refused = {m.message_id: m for m in await take_all(ingest.queue + ".refused", 3)}
    assert set(refused) == {key for key, _ in refusing}
    assert refused["u-nfd"].headers["x-refusal-status"] == 409
    assert refused["u-space"].headers["x-refusal-status"] == 422
    assert "whitespace" in str(refused["u-space"].headers["x-refusal"])
    assert refused["u-bidi"].headers["x-refusal-status"] == 422
    assert "U+2067" in str(refused["u-bidi"].headers["x-refusal"])
    assert await ingest.until_counted(election_id, [nfc, zwnj]) == {nfc: 1, zwnj: 1}


async def test_a_ballot_meeting_an_unexpected_error_is_refused_after_a_few_tries(
    own_ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that trips on one ballot must not hold up its batch, and the queue behind it,
    for ever: the ballot is tried FAULT_ATTEMPTS times, then refused as a fault."""
    ingest = own_ingest
    election_id = await ingest.election()
    accept_vote = Election.accept_vote
    tried: list[str] = []

    def buggy(self: Election, voter: Voter, content: Mapping[str, Any]) -> Any:
        if content.get("choice") == "no":
            tried.append("no")
            raise RuntimeError("a bug that trips on this ballot")
        return accept_vote(self, voter, content)

    monkeypatch.setattr(Election, "accept_vote", buggy)
    # An election whose creation entry cannot be read: its ballots are faults too.
    unreadable = uuid.uuid4()
    assert ingest.database_url is not None
    with psycopg.connect(ingest.database_url) as conn, conn.transaction():
        conn.execute("LOCK TABLE cardinal_events IN EXCLUSIVE MODE")
        conn.execute(
            "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, 1, 'domain.election:Election.Created', %s)",
            (unreadable, b"\x00not json"),
        )
    await publish(
        AMQP_URL,
        ingest.queue,
        [
            ("f-before", ballot(election_id, "before")),
            ("f-bug", ballot(election_id, "bug", choice="no")),
            # The same voter's next ballot waits for the faulty one, then counts alone.
            ("f-bug-next", ballot(election_id, "bug", choice="yes")),
            ("f-unreadable", ballot(unreadable, "x")),
            ("f-after", ballot(election_id, "after")),
        ],
    )
    refused = await take_all(ingest.queue + ".refused", 2)
    by_id = {m.message_id: m for m in refused}
    assert set(by_id) == {"f-bug", "f-unreadable"}
    for message in refused:
        assert message.headers["x-refusal-status"] == 500
        assert "it was not recorded" in str(message.headers["x-refusal"])
    assert len(tried) == FAULT_ATTEMPTS
    assert await ingest.until_counted(election_id, ["before", "bug", "after"]) == {
        "before": 1,
        "bug": 1,  # f-bug-next, held back behind f-bug, then recorded
        "after": 1,
    }
    await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)


def _refused(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("cardinal_ingest_ballots_refused_total", {"reason": reason})
        or 0.0
    )


async def test_a_multi_ballot_message_counts_each_ballot_once_and_refuses_alone(
    ingest: Ingest,
) -> None:
    election_id = await ingest.election()
    voters = [f"b{n}" for n in range(500)]
    committed = REGISTRY.get_sample_value("cardinal_ingest_ballots_committed_total") or 0.0
    body = {
        "election_id": str(election_id),
        "ballots": [{"voter_id": v, "choice": "yes"} for v in voters]
        + [{"voter_id": "bad", "choice": "perhaps"}],
    }
    await publish(AMQP_URL, ingest.queue, [("multi-1", body), ("multi-1", body)])
    assert await ingest.until_counted(election_id, voters) == dict.fromkeys(voters, 1)
    refused = await take_all(ingest.queue + ".refused", 2)  # once per copy of the message
    assert {m.message_id for m in refused} == {f"multi-1:{len(voters)}"}
    assert orjson.loads(refused[0].body)["voter_id"] == "bad"
    assert refused[0].headers["x-refusal-status"] == 422
    total = REGISTRY.get_sample_value("cardinal_ingest_ballots_committed_total")
    assert total == committed + 2 * len(voters)  # each copy's ballots: recorded or replayed


async def test_reply_to_gets_the_receipt_or_the_problem(ingest: Ingest) -> None:
    election_id = await ingest.election()
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        replies = await channel.declare_queue(exclusive=True)
        for key, body in (
            ("ok-1", ballot(election_id, "a")),
            ("bad-1", ballot(election_id, "a", "x")),
        ):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(body), message_id=key, reply_to=replies.name, correlation_id=key
                ),
                routing_key=ingest.queue,
            )
        answers: dict[str, Any] = {}
        modes: list[aio_pika.DeliveryMode | None] = []
        async with replies.iterator() as stream:
            async for message in stream:
                await message.ack()
                answers[str(message.correlation_id)] = (
                    message.content_type,
                    orjson.loads(message.body),
                )
                modes.append(message.delivery_mode)
                if len(answers) == 2:
                    break
    # Persistent, as refusals are: a reply waiting in a client's durable reply queue
    # outlives a broker restart (review: sent transient, it was lost).
    assert modes == [aio_pika.DeliveryMode.PERSISTENT] * 2
    assert answers["ok-1"][0] == "application/json"
    assert answers["ok-1"][1]["status"] == "cast"
    assert answers["ok-1"][1]["election_id"] == str(election_id)
    assert answers["bad-1"][0] == "application/problem+json"
    assert answers["bad-1"][1]["status"] == 422


async def test_publish_reports_a_message_routed_nowhere_as_not_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``publish`` published mandatory on a channel that did not raise on a return, so a
    message routed to no queue was confirmed and counted as sent (review). The queue is
    left undeclared here, as if deleted between the declare and the publish."""

    async def nothing(self: IngestQueues, channel: Any) -> None:
        return None

    monkeypatch.setattr(IngestQueues, "declare", nothing)
    queue = f"test-{uuid.uuid4().hex[:8]}.nowhere"
    with pytest.raises(aiormq.exceptions.PublishError):
        await publish(AMQP_URL, queue, [("m1", {"x": 1})])


async def test_two_consumers_on_one_queue_have_no_duplicate_effect(ingest: Ingest) -> None:
    election_id = await ingest.election()
    voters = [f"c{n}" for n in range(2000)]
    messages = [(f"m-{v}", ballot(election_id, v)) for v in voters]
    async with consuming(ingest.settings):  # a second consumer, its own services
        await asyncio.gather(
            publish(AMQP_URL, ingest.queue, messages),
            publish(AMQP_URL, ingest.queue, messages[::-1]),
        )
        counted = await ingest.until_counted(election_id, voters)
        await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)
    assert counted == dict.fromkeys(voters, 1)


def test_the_queue_is_a_quorum_queue_with_a_delivery_limit_and_dead_letters() -> None:
    arguments = IngestQueues("ns.votes.aggregation").arguments()
    assert arguments["x-queue-type"] == "quorum"
    assert arguments["x-delivery-limit"] == DELIVERY_LIMIT
    assert arguments["x-dead-letter-exchange"] == "ns.votes.aggregation.dead-letter"
    assert arguments["x-overflow"] == "reject-publish"
    assert Settings(namespace="ns").ingest_queue_name == "ns.votes.aggregation"
    assert Settings(ingest_queue="votes.aggregation").ingest_queue_name == "votes.aggregation"


async def test_a_store_outage_holds_the_ballots_unacked_then_counts_each_once() -> None:
    url = create_database("cardinal_ingest_outage")
    migrate(url)
    settings = settings_for(url, amqp_url=AMQP_URL, namespace=f"t-{uuid.uuid4().hex[:8]}")
    voters = [f"o{n}" for n in range(300)]
    try:
        async with consuming(settings) as (services, _):
            check = Ingest(settings, services, settings.ingest_queue_name)
            election_id = await check.election()
            with psycopg.connect(SERVER_URL, autocommit=True) as admin:
                dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
                database = psycopg.sql.Identifier(str(dbname))
                admin.execute(
                    psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database)
                )
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (dbname,),
                )
                try:
                    messages = [(f"m-{v}", ballot(election_id, v)) for v in voters]
                    await publish(AMQP_URL, check.queue, messages)

                    # The consumer holds its window unacked (a few messages: it widens it
                    # only as batches are gathered), the rest wait in the queue, ready:
                    # none refused, none lost.
                    async def held_and_ready() -> tuple[int, int]:
                        return _unacked(check.queue), await queue_depth(check.queue)

                    held, _ = await until(
                        held_and_ready, lambda n: n[0] > 0 and sum(n) == len(voters)
                    )
                    assert held <= 6  # (a window of 2, then one of 4 as they came small)
                    assert await queue_depth(check.queue + ".refused") == 0
                finally:
                    admin.execute(
                        psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database)
                    )
            assert await check.until_counted(election_id, voters) == dict.fromkeys(voters, 1)
            await until(lambda: _unacked(check.queue), lambda n: n == 0)
            assert await queue_depth(check.queue + ".refused") == 0
    finally:
        await delete_queues(settings.ingest_queue_name)
        drop_database(url)


def _unacked(queue: str) -> int:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = dict(line.split("\t") for line in listed.splitlines() if "\t" in line)
    return int(counts.get(queue, "0"))


async def test_a_token_election_takes_the_voter_token_in_the_message(ingest: Ingest) -> None:
    from domain.rules import ElectionRules
    from infra.runtime.voters import new_voter_token

    app, keys = ingest.services.app, ingest.services.voter_keys
    rules = ElectionRules.create(options=OPTIONS, method="plurality", eligibility="tokens")
    election_id = (await app.create_election("Tokens", rules)).id
    tokens = [new_voter_token() for _ in range(3)]
    await app.issue_voter_tokens(election_id, [keys.credential(election_id, t) for t in tokens])
    await app.open_election(election_id)
    cast = [
        (f"t-{n}", {"election_id": str(election_id), "voter_token": token, "choice": "yes"})
        for n, token in enumerate(tokens)
    ]
    refused = [
        ("t-stranger", {"election_id": str(election_id), "voter_token": new_voter_token()}),
        ("t-no-token", ballot(election_id, "ada")),
    ]
    await publish(AMQP_URL, ingest.queue, [*cast, *cast, *refused])
    answers = {m.message_id: m for m in await take_all(ingest.queue + ".refused", 2)}
    assert answers["t-stranger"].headers["x-refusal-status"] == 403
    assert "voter_token" in str(answers["t-no-token"].headers["x-refusal"])
    ids = [ballot_id(election_id, keys.for_token(election_id, t).ballot_key) for t in tokens]
    assert ingest.database_url is not None
    with psycopg.connect(ingest.database_url) as conn:
        rows = conn.execute(
            "SELECT count(*), count(DISTINCT originator_id) FROM cardinal_events "
            "WHERE originator_id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert rows == (3, 3)  # each token's ballot once, though each message came twice


async def test_a_voter_token_issued_a_moment_ago_through_another_process_is_taken(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer checked a voter token against its cached election only: a token issued
    through an API process a moment before its ballot's message was consumed (before the
    feed brought it here) was refused for good, 403 into the refused queue, where the HTTP
    path looks for it in the log first. Now the batch catches up as the HTTP path does
    (the feed's read of what is new, not the election): the token's ballots are cast, in
    order; a made-up token is still refused, and reads no election."""
    from domain.ballot import Ballot
    from domain.rules import ElectionRules
    from infra.runtime.voters import new_voter_token
    from infra.store import open_application

    services, keys = ingest.services, ingest.services.voter_keys
    rules = ElectionRules.create(
        options=OPTIONS, method="plurality", eligibility="tokens", late_tokens=True
    )
    election_id = (await services.app.create_election("Late tokens", rules)).id
    await services.app.open_election(election_id)
    assert ingest.database_url is not None
    # The follower stopped: nothing but the catch-up a miss asks for brings the token here.
    await services.feed.stop()
    whole_reads = 0
    load = services.writer.load_election

    async def counted(election_id: UUID) -> Election | None:
        nonlocal whole_reads
        whole_reads += 1
        return await load(election_id)

    monkeypatch.setattr(services.writer, "load_election", counted)
    other = open_application(ingest.database_url)  # another API process, on the same store
    try:
        token = new_voter_token()
        await other.issue_voter_tokens(election_id, [keys.credential(election_id, token)])
    finally:
        other.close()
    voted = {"election_id": str(election_id), "voter_token": token}
    await publish(
        AMQP_URL,
        ingest.queue,
        [
            ("late-1", {**voted, "choice": "yes"}),
            ("late-2", {**voted, "choice": "no"}),  # the same voter's later ballot: it counts
            ("made-up", {"election_id": str(election_id), "voter_token": new_voter_token()}),
        ],
    )
    refused = await take_all(ingest.queue + ".refused", 1)
    assert [m.message_id for m in refused] == ["made-up"]
    assert refused[0].headers["x-refusal-status"] == 403
    voter = keys.for_token(election_id, token)
    ballot = await until(
        lambda: services.app.writer.load_ballot(ballot_id(election_id, voter.ballot_key)),
        lambda found: found is not None and found.version == 2,
    )
    assert isinstance(ballot, Ballot)
    assert ballot.vote == {"choice": "no"}
    assert await queue_depth(ingest.queue + ".refused") == 0
    assert whole_reads == 0  # the token was found, and the made-up one refused, by the feed


async def test_a_batchs_missed_voter_tokens_share_one_catch_up_and_its_failure_is_sent_again() -> (
    None
):
    """The bulk path's misses are looked for as the HTTP path's are: one catch-up for the
    batch (not one per ballot), then the check again. A catch-up that fails (the store
    away) is said for those ballots (503: the consumer sends them again, the voter's later
    ones held back behind them), not a 403 that would refuse them for good; the other
    voters' ballots are cast."""
    from domain.application import VotingApplication
    from domain.errors import NotEligible
    from domain.ports import HeldBack
    from domain.rules import ElectionRules

    app = VotingApplication()  # in memory
    rules = ElectionRules.create(
        options=OPTIONS, method="plurality", eligibility="tokens", late_tokens=True
    )
    election_id = (await app.create_election("Tokens", rules)).id
    await app.issue_voter_tokens(election_id, ["held"])
    await app.open_election(election_id)
    held, late = Voter("held", "held-key"), Voter("late", "late-key")
    catch_ups = 0

    async def away() -> None:
        nonlocal catch_ups
        catch_ups += 1
        raise StoreUnavailable("the event store did not answer in time")

    app.catch_up = away
    outcomes = await app.cast_ballots(
        election_id,
        [
            (late, {"choice": "yes"}, None),
            (held, {"choice": "yes"}, None),
            (late, {"choice": "no"}, None),
            (Voter("made-up", "made-up-key"), {"choice": "no"}, None),
        ],
    )
    assert catch_ups == 1
    assert isinstance(outcomes[0], StoreUnavailable)
    assert not isinstance(outcomes[1], Exception)
    assert isinstance(outcomes[2], HeldBack)
    assert isinstance(outcomes[3], StoreUnavailable)

    async def brought() -> None:  # the feed brings what another process issued
        nonlocal catch_ups
        catch_ups += 1
        (await app.election(election_id)).voter_keys.add("late")

    app.catch_up = brought
    await asyncio.sleep(0.11)  # past TOKEN_RELOAD_FLOOR
    outcomes = await app.cast_ballots(
        election_id,
        [
            (late, {"choice": "yes"}, None),
            (late, {"choice": "no"}, None),
            (Voter("made-up", "made-up-key"), {"choice": "no"}, None),
        ],
    )
    assert catch_ups == 2
    assert [type(outcome).__name__ for outcome in outcomes] == ["Receipt", "Receipt", "NotEligible"]
    assert isinstance(outcomes[2], NotEligible)


@pytest.mark.parametrize("number", [b"1.0", b"1e0", b"-0.0", b"-2.0"])
def test_a_message_takes_a_whole_number_written_with_a_fraction_as_http_does(
    number: bytes,
) -> None:
    """A score of 1.0 is the score 1 on POST .../ballots; a message (one ballot, or one of
    many) refused it as "Input should be a valid integer" (review: hostile client)."""
    from types import SimpleNamespace

    from infra.ingest.messages import parse

    election = str(uuid.uuid4())
    one = b'{"election_id": "%s", "voter_id": "v", "scores": {"a": %s}}' % (
        election.encode(),
        number,
    )
    many = b'{"election_id": "%s", "ballots": [{"voter_id": "v", "scores": {"a": %s}}]}' % (
        election.encode(),
        number,
    )

    def message(body: bytes) -> Any:  # (what parse reads of a message)
        return SimpleNamespace(message_id="m", content_type=None, content_encoding=None, body=body)

    for body in (one, many):
        delivery = parse(message(body))
        assert delivery.problem is None
        [item] = delivery.items
        assert item.problem is None, item.problem
        assert item.ballot is not None
        assert item.ballot.content() == {"scores": {"a": int(float(number))}}
    fraction = parse(message(one.replace(number, b"2.5")))
    assert fraction.items[0].problem is not None


async def _opened(settings: Settings, name: str, options: list[str]) -> UUID:
    """An open election (plurality, revoting allowed), made before any consumer."""
    from domain.rules import ElectionRules

    listed = [{"id": option, "label": option} for option in options]
    async with running_services(settings) as services:
        created = await services.app.create_election(
            name, ElectionRules.create(options=listed, method="plurality")
        )
        await services.app.open_election(created.id)
    return created.id


async def _votes(services: Services, election_id: UUID, voter: str) -> tuple[int, str]:
    """The voter's ballot: its version (entries recorded) and the choice that counts."""
    keys = services.voter_keys.for_voter_id(election_id, voter, VoterIds.NFC)
    ballot = await services.app.writer.load_ballot(ballot_id(election_id, keys.ballot_key))
    if ballot is None:
        return 0, ""
    assert ballot.vote is not None
    return ballot.version, ballot.vote["choice"]


async def test_a_voters_ballots_in_messages_of_their_own_are_never_refused_for_the_batch(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request holds at most 16 ballots of one voter (MAX_BALLOTS_PER_VOTER), but the
    consumer's batch is not a request: 41 messages of one voter in a batch were cast as one
    ``cast_ballots``, the 17th on refused (422) and acked, so an earlier choice counted
    (review: ingest, once). Each is cast now, in order, the last counting; only a message
    holding more than 16 ballots of one voter has the rest refused, as documented."""
    # Every message in one batch: all published before the consumer starts, and a linger
    # long enough for a busy machine to hand it them all.
    monkeypatch.setattr(ingest_consumer, "LINGER", 1.0)
    settings = settings_for(database_url, amqp_url=AMQP_URL, namespace=f"t-{uuid.uuid4().hex[:8]}")
    queue = settings.ingest_queue_name
    try:
        election_id = await _opened(settings, "Many ballots of a voter", ["yes", "no"])
        choices = ["yes", "no"]
        many = [(f"many-{n}", ballot(election_id, "many", choices[n % 2])) for n in range(41)]
        mixed = {  # one message of its own, then 16 in one: 17 in the batch, each cast
            "election_id": str(election_id),
            "ballots": [{"voter_id": "mixed", "choice": choices[n % 2]} for n in range(16)],
        }
        over = {  # 18 in one message: over a request's limit, the last two refused
            "election_id": str(election_id),
            "ballots": [{"voter_id": "over", "choice": "yes"} for _ in range(18)],
        }
        await publish(
            AMQP_URL,
            queue,
            [("mixed-0", ballot(election_id, "mixed")), *many, ("mixed-1", mixed), ("over", over)],
        )
        async with consuming(settings) as (services, _):
            refused = await take_all(queue + ".refused", 2)
            await until(lambda: queue_depth(queue), lambda depth: depth == 0)
            assert {m.message_id for m in refused} == {"over:16", "over:17"}
            assert all(m.headers["x-refusal-status"] == 422 for m in refused)
            assert await queue_depth(queue + ".refused") == 0
            assert await _votes(services, election_id, "many") == (41, "yes")  # the 41st
            assert await _votes(services, election_id, "mixed") == (17, "no")  # mixed-1's last
            assert await _votes(services, election_id, "over") == (16, "yes")
    finally:
        await delete_queues(queue)


def _close_connection(name: str) -> None:
    """Have the broker close the client connection named ``name``, as a lost one."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tag = f'{{"connection_name","{name}"}}'
    [pid] = [line.split("\t")[0] for line in listed.splitlines() if tag in line]
    subprocess.run(
        ["rabbitmqctl", "-q", "close_connection", pid, "test: the connection is lost"],
        capture_output=True,
        check=True,
    )


async def test_after_a_lost_connection_nothing_delivered_on_it_overtakes_the_dropped_batch(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch retried (its store away) when the connection is lost is dropped, and comes
    again on the new channel; the message held for the next batch and those waiting in the
    inbox came on the dead channel, and were cast first: a voter's later ballots recorded
    before the dropped earlier one, which then revised them (review: ingest, once). They
    are skipped now (the broker delivers them again, after the batch, in order)."""
    # Batches of at most 2 ballots, each lingering long enough to take what is waiting:
    # m1 alone, m2 (2 ballots) held for the next batch, m3 in the inbox.
    monkeypatch.setattr(ingest_consumer, "LINGER", 0.5)
    # The whole prefetch as the window: two batches' worth (4 ballots) would hold only m1
    # and m2, none waiting in the inbox.
    monkeypatch.setattr(ingest_consumer._Window, "_fitting", lambda self, largest: self.most)
    settings = settings_for(
        database_url,
        amqp_url=AMQP_URL,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        ingest_batch=2,
    )
    queue = settings.ingest_queue_name
    # m1's ballot meets the store away until the consumer gives its batch up.
    abandoned: list[int] = []
    tried: list[str] = []
    release, accept_vote = ingest_consumer._release, Election.accept_vote

    async def released(batch: list[Any]) -> None:
        abandoned.append(len(batch))
        await release(batch)

    def away(self: Election, voter: Voter, content: Mapping[str, Any]) -> Any:
        if content.get("choice") == "a" and not abandoned:
            tried.append("a")
            raise StoreUnavailable("the event store is unreachable (test)")
        return accept_vote(self, voter, content)

    monkeypatch.setattr(ingest_consumer, "_release", released)
    monkeypatch.setattr(Election, "accept_vote", away)
    try:
        election_id = await _opened(settings, "Reconnection", ["a", "b", "c"])
        both = {
            "election_id": str(election_id),
            "ballots": [{"voter_id": "v", "choice": "b"}, {"voter_id": "w", "choice": "b"}],
        }
        m1, m3 = ballot(election_id, "v", "a"), ballot(election_id, "v", "c")
        await publish(AMQP_URL, queue, [("m1", m1), ("m2", both), ("m3", m3)])
        async with consuming(settings) as (services, running):
            # m1 retried; m2 and m3 delivered on the same channel, waiting behind it.
            await until(
                lambda: (len(tried), running._inbox.qsize() + (running._held is not None)),
                lambda state: state[0] >= 1 and state[1] == 2,
            )
            _close_connection(f"{settings.namespace} ingest")
            # (connect_robust comes back after its reconnect_interval, 5 s)
            recorded = await until(
                lambda: _votes(services, election_id, "v"), lambda v: v[0] == 3, within=60
            )
            await until(lambda: _unacked(queue), lambda n: n == 0)
            await until(lambda: queue_depth(queue), lambda depth: depth == 0)
            assert abandoned
            # m1, m2, m3 in order: m3's choice counts, each recorded once.
            assert recorded == (3, "c")
            assert await _votes(services, election_id, "v") == (3, "c")
            assert await _votes(services, election_id, "w") == (1, "b")
            assert await queue_depth(queue + ".refused") == 0
    finally:
        await delete_queues(queue)


def _rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=check)


async def _refusing(queue: str, policy: str) -> None:
    """Have the broker nack every publish to ``queue``'s refused queue (a policy: at most
    0 messages, reject-publish), as it does to a full or unavailable queue. A quorum queue
    takes the message that brings it over the limit: one is published first."""
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await IngestQueues(queue).declare(channel)
        refused = IngestQueues(queue).refused
        _rabbitmqctl(
            "set_policy",
            "--apply-to",
            "queues",
            "--priority",
            "100",
            policy,
            f"^{refused}$".replace(".", r"\."),
            '{"max-length": 0, "overflow": "reject-publish"}',
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while True:
            try:
                await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=refused)
            except aio_pika.exceptions.DeliveryError:
                return
            assert loop.time() < deadline, f"{refused} still takes what is published"
            await asyncio.sleep(0.1)


async def test_a_refusal_the_refused_queue_will_not_take_holds_its_batch_until_it_does(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose refusal's publish the broker nacks (the refused queue full) was given
    up: first nacked back alone, so the voter's later ballot, already delivered and waiting
    in the inbox, was cast first and then revised by the earlier one (review: ingest, once);
    then by closing its channel, which returned every message delivered on it, each return
    counting towards the delivery limit, in a tight loop: within seconds all of them were
    dead-lettered to the refused queue, uncast (review: ingest, twice). The batch is held
    now, on its live channel, its refusal published again with backoff: nothing goes back
    to the queue, nothing is dead-lettered, nothing behind it is cast before it, and once
    the refused queue takes the refusal the batch is acked and the rest follows."""
    settings = settings_for(
        database_url,
        amqp_url=AMQP_URL,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        ingest_batch=1,  # m1 alone in its batch; m2 waits in the inbox
    )
    queue = settings.ingest_queue_name
    refused = IngestQueues(queue).refused
    policy = f"{settings.namespace}-refused-full"
    # m1 meets a bug until it is refused as a fault; its refusal's publish is nacked.
    tried: list[str] = []
    accept_vote = Election.accept_vote

    def buggy(self: Election, voter: Voter, content: Mapping[str, Any]) -> Any:
        if content.get("choice") == "a" and len(tried) < FAULT_ATTEMPTS:
            tried.append("a")
            raise RuntimeError("a bug that trips on this ballot (test)")
        return accept_vote(self, voter, content)

    monkeypatch.setattr(Election, "accept_vote", buggy)
    try:
        election_id = await _opened(settings, "Held", ["a", "c"])
        await _refusing(queue, policy)  # the refused queue holds one message, takes none
        faults = _refused("fault")
        m1, m2 = ballot(election_id, "v", "a"), ballot(election_id, "v", "c")
        await publish(AMQP_URL, queue, [("m1", m1), ("m2", m2)])
        async with consuming(settings) as (services, _):
            await until(lambda: len(tried), lambda n: n == FAULT_ATTEMPTS)
            # Giving up eleven times in a row took about 3 s: held longer than that, both
            # messages are still delivered and unacked, none back in the queue, none
            # dead-lettered, and m2 waits behind m1.
            await asyncio.sleep(5)
            assert _unacked(queue) == 2
            assert await queue_depth(queue) == 0
            assert await queue_depth(refused) == 1
            assert await _votes(services, election_id, "v") == (0, "")
            # The limit lifted (a channel whose publish the quorum queue rejected stays
            # rejected after that, on RabbitMQ 3.10: the refusal is sent on a new one).
            _rabbitmqctl("clear_policy", policy)
            # The refused queue takes m1's refusal: the batch is acked, and m2 is cast.
            recorded = await until(
                lambda: _votes(services, election_id, "v"), lambda v: v[0] == 1, within=30
            )
            await until(lambda: _unacked(queue), lambda n: n == 0)
            await until(lambda: queue_depth(queue), lambda depth: depth == 0)
            assert recorded == (1, "c")
            [forwarded] = [m for m in await take_all(refused, 2) if m.message_id == "m1"]
            assert forwarded.headers["x-refusal-status"] == 500
            assert "x-death" not in forwarded.headers
            assert len(tried) == FAULT_ATTEMPTS
            assert _refused("fault") == faults + 1  # counted once, not once per try
            assert await _votes(services, election_id, "v") == (1, "c")
    finally:
        _rabbitmqctl("clear_policy", policy, check=False)
        await delete_queues(queue)


async def test_a_refusal_with_no_queue_to_go_to_declares_it_again_and_is_forwarded(
    database_url: str,
) -> None:
    """A refusal the broker could route nowhere (the refused queue deleted, or its binding)
    was confirmed all the same, as unroutable messages are where the publisher does not ask
    for returns, so the refused ballot was acked and gone without a trace (the second merge
    review). The refusals' channel raises on a return, and the batch is held; but the
    refused queue, declared once at start, was never declared again, so the batch was held
    for ever (review: ingest). The retry declares it again: the refusal is forwarded, and
    the ballot behind it cast."""
    settings = settings_for(
        database_url,
        amqp_url=AMQP_URL,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        ingest_batch=1,  # m1 alone in its batch; m2 waits behind it
    )
    queue = settings.ingest_queue_name
    refused = IngestQueues(queue).refused
    try:
        election_id = await _opened(settings, "Nowhere", ["a", "c"])
        async with consuming(settings) as (services, _):
            connection = await aio_pika.connect(AMQP_URL)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(refused)
                m1, m2 = ballot(election_id, "v", "nope"), ballot(election_id, "w", "c")
                for message_id, body in (("m1", m1), ("m2", m2)):
                    await channel.default_exchange.publish(
                        aio_pika.Message(orjson.dumps(body), message_id=message_id),
                        routing_key=queue,
                    )
            await until(lambda: _exists(refused), bool)  # declared again by the consumer
            [forwarded] = await take_all(refused, 1)
            assert forwarded.message_id == "m1"
            assert "nope" in str(forwarded.headers["x-refusal"])
            await until(lambda: _votes(services, election_id, "w"), lambda v: v == (1, "c"))
            await until(lambda: _unacked(queue), lambda n: n == 0)
    finally:
        await delete_queues(queue)


async def test_a_refused_queue_made_again_with_other_arguments_still_takes_refusals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a failed refusal the forwarder declares the refused queue again; one an
    operator made again as a classic queue (bound as before) refuses that declare, which
    closes the channel, and every retry declared again: the batch held until the broker's
    consumer_timeout (the merge review). The mismatch is said, and the refusal goes to the
    queue as it is, on a new channel."""
    queue = f"t-{uuid.uuid4().hex[:8]}.ballots"
    queues = IngestQueues(queue)
    ingester = Ingester(None, None, AMQP_URL, queue)  # type: ignore[arg-type]
    connection = await aio_pika.connect_robust(AMQP_URL)
    try:
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            dead = await channel.declare_exchange(
                queues.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            classic = await channel.declare_queue(queues.refused, durable=True)  # not quorum
            await classic.bind(dead, routing_key=queues.refused)
            ingester._connection = connection
            exchange = await ingester._forwarder(fresh=True)
            await exchange.publish(aio_pika.Message(b"refusal"), routing_key=queues.refused)
            assert await queue_depth(queues.refused) == 1
            # (This test's: not the session API stack's, on this loop too. tests/own_logs.py)
            said = [r.getMessage() for r in ours(caplog) if r.levelno >= logging.ERROR]
            assert len(said) == 1, said
            assert f"{queues.refused} cannot be declared" in said[0]
            assert "PRECONDITION_FAILED" in said[0] or "inequivalent" in said[0], said[0]
            if ingester._forwarding is not None:
                await ingester._forwarding.close()
    finally:
        await delete_queues(queue)


async def _exists(name: str) -> bool:
    try:
        await queue_depth(name)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    return True


async def test_a_reply_to_queue_that_takes_nothing_costs_no_ballot_its_own_or_others(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply the broker nacks (the client's reply_to queue full, reject-publish) gave its
    batch up: the channel closed, every message delivered on it returned, the batch first
    again, its reply nacked again, and within seconds the delivery limit dead-lettered them
    all, other clients' ballots among them, to the refused queue, uncast (review: ingest,
    twice). A reply is best-effort now (the ballot's outcome is in the log; republishing
    with the same message_id answers again): said once for the queue, and the batch acked."""
    settings = settings_for(
        database_url,
        amqp_url=AMQP_URL,
        namespace=f"t-{uuid.uuid4().hex[:8]}",
        ingest_batch=1,  # each message its own batch: the rest wait behind the first
    )
    queue = settings.ingest_queue_name
    try:
        election_id = await _opened(settings, "Unanswered", ["yes", "no"])
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            full = await channel.declare_queue(
                exclusive=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
            )
            with pytest.raises(aio_pika.exceptions.DeliveryError):  # it takes nothing
                await channel.default_exchange.publish(aio_pika.Message(b"{}"), full.name)
            await IngestQueues(queue).declare(channel)
            # Five ballots asking for a reply to the full queue, the first one first; after
            # each, four of other clients', asking none.
            voters = [v for n in range(5) for v in (f"r{n}", *(f"o{n}-{k}" for k in range(4)))]
            for voter in voters:
                asks = voter.startswith("r")
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        orjson.dumps(ballot(election_id, voter)),
                        message_id=f"m-{voter}",
                        reply_to=full.name if asks else None,
                        correlation_id=f"c-{voter}" if asks else None,
                    ),
                    routing_key=queue,
                )
            async with consuming(settings) as (services, _):
                check = Ingest(settings, services, queue)
                counted = await check.until_counted(election_id, voters)
                await until(lambda: _unacked(queue), lambda n: n == 0)
                await until(lambda: queue_depth(queue), lambda depth: depth == 0)
                assert counted == dict.fromkeys(voters, 1)
                assert await queue_depth(queue + ".refused") == 0
                said = [
                    r
                    for r in caplog.records
                    if r.levelno >= logging.WARNING and full.name in r.getMessage()
                ]
                assert len(said) == 1, [r.getMessage() for r in said]
                assert "not taken" in said[0].getMessage()
    finally:
        await delete_queues(queue)


async def test_a_batch_given_up_on_a_live_channel_is_released_only_after_a_backoff(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Giving a batch up on a channel still open closes it, returning every message
    delivered on it, each return spending a delivery: given up again at once, again and
    again, the window was dead-lettered in seconds (review: ingest, twice). No path of ours
    does so any more; should one, the consumer backs off (0.1 s doubling) before each."""
    settings = settings_for(database_url, amqp_url=AMQP_URL, namespace=f"t-{uuid.uuid4().hex[:8]}")
    queue = settings.ingest_queue_name
    loop = asyncio.get_running_loop()
    released: list[float] = []
    failed: list[float] = []
    ack, release = ingest_consumer._ack, ingest_consumer._release

    async def failing(batch: list[Any]) -> None:
        if len(failed) < 3:  # an ack that fails on a live channel, three times
            failed.append(loop.time())
            raise ingest_consumer.Abandoned("the ack failed (test)")
        await ack(batch)

    async def releasing(batch: list[Any]) -> None:
        released.append(loop.time())
        await release(batch)

    monkeypatch.setattr(ingest_consumer, "_ack", failing)
    monkeypatch.setattr(ingest_consumer, "_release", releasing)
    try:
        election_id = await _opened(settings, "Backoff", ["a", "b"])
        await publish(AMQP_URL, queue, [("m1", ballot(election_id, "v", "a"))])
        async with consuming(settings) as (services, _):
            await until(lambda: len(released), lambda n: n == 3)
            await until(lambda: _unacked(queue), lambda n: n == 0)
            await until(lambda: queue_depth(queue), lambda depth: depth == 0)
            assert await _votes(services, election_id, "v") == (1, "a")
            # Each closing after its pause (0.1 s, 0.2 s, 0.4 s), none at once.
            waits = [closed - given for given, closed in zip(failed, released, strict=True)]
            assert waits[0] >= 0.1, waits
            assert waits[1] >= 0.2, waits
            assert waits[2] >= 0.4, waits
            assert await queue_depth(queue + ".refused") == 0
    finally:
        await delete_queues(queue)


async def test_a_message_id_too_long_for_its_ballots_keys_refuses_the_message_whole(
    ingest: Ingest,
) -> None:
    """A ballot's key is <message_id>:<index>; one past 255 characters was cut where the
    refusal was forwarded, to another ballot's key (<id>:1 of <id>:16): republished under
    it, the refused ballot was a replay of that one, never recorded (review). Such a
    message is refused whole, before anything of it is recorded, under its own message_id;
    and a ballot's own key too long for a message_id is forwarded whole, never cut."""
    election_id = await ingest.election()
    long_id = uuid.uuid4().hex[:8] + "X" * 245  # 253 characters: <id>:16 is 256
    ballots = [{"voter_id": "seventeen", "choice": "yes" if n % 2 else "no"} for n in range(17)]
    await publish(
        AMQP_URL,
        ingest.queue,
        [(long_id, {"election_id": str(election_id), "ballots": ballots})],
    )
    [refused] = await take_all(ingest.queue + ".refused", 1)
    assert refused.message_id == long_id  # whole, its own
    assert refused.headers["x-refusal-status"] == 422
    problem = orjson.loads(str(refused.headers["x-refusal-problem"]))
    assert problem["field"] == "message_id"
    assert (
        "a message of 17 ballots may carry a message_id of at most 252 bytes" in (problem["detail"])
    )
    await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)
    assert ingest.versions(election_id, ["seventeen"]) == {}  # nothing of it recorded
    # 252 characters: every key of 17 ballots fits, the 17th (over 16 of a voter) refused
    # under <id>:16 whole.
    fitting = long_id[:252]
    await publish(
        AMQP_URL,
        ingest.queue,
        [(fitting, {"election_id": str(election_id), "ballots": ballots})],
    )
    [seventeenth] = await take_all(ingest.queue + ".refused", 1)
    assert seventeenth.message_id == f"{fitting}:16"
    assert "more than 16 ballots" in str(seventeenth.headers["x-refusal"])
    # An own key of 255 characters, 510 bytes: no message_id holds it, nor a part of it.
    own = "\u00e9" * 255
    await publish(
        AMQP_URL,
        ingest.queue,
        [
            (
                "own-key",
                {
                    "election_id": str(election_id),
                    "ballots": [{"voter_id": "own", "choice": "maybe", "idempotency_key": own}],
                },
            )
        ],
    )
    [own_refused] = await take_all(ingest.queue + ".refused", 1)
    assert own_refused.message_id is not None
    assert own_refused.message_id not in own  # a random one, no part of the key
    assert orjson.loads(own_refused.body)["ballots"][0]["idempotency_key"] == own
    # Republished as it came, fixed: recorded under its own key.
    fixed = orjson.loads(own_refused.body)
    fixed["ballots"][0]["choice"] = "yes"
    await publish(AMQP_URL, ingest.queue, [(own_refused.message_id, fixed)])
    assert await ingest.until_counted(election_id, ["own"]) == {"own": 1}


async def test_a_message_that_says_it_is_not_json_or_compressed_is_refused_415(
    ingest: Ingest,
) -> None:
    """A content_type other than JSON is 415 as over HTTP, and so is a content coding (a
    gzipped body was 400 'malformed JSON'); a message with no content_type is read as JSON,
    as it always was (review). A character set in content_encoding, as kombu/Celery
    ('utf-8') and Spring AMQP's Jackson2JsonMessageConverter ('UTF-8') send it, is no
    coding: such a ballot is cast, as before the 415 rule (it refused them; review)."""
    election_id = await ingest.election()
    sent = {
        "c-text": ("text/plain", None, "text/plain"),
        "c-xml-gzip": ("application/xml", "gzip", "application/xml"),
        "c-gzip": ("application/json", "gzip", "content_encoding gzip"),
        "c-br": ("application/json", "BR", "content_encoding br"),
        "c-none": (None, None, None),
        "c-json": ("application/json; charset=utf-8", None, None),
        "c-identity": ("application/json", "identity", None),
        "c-problem": ("application/problem+json", None, None),
        "c-celery": ("application/json", "utf-8", None),
        "c-spring": ("application/json", "UTF-8", None),
    }
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for key, (content_type, encoding, _) in sent.items():
            await channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(ballot(election_id, key)),
                    message_id=key,
                    content_type=content_type,
                    content_encoding=encoding,
                ),
                routing_key=ingest.queue,
            )
    refusing = {key: said for key, (_, _, said) in sent.items() if said is not None}
    refused = {m.message_id: m for m in await take_all(ingest.queue + ".refused", 4)}
    assert set(refused) == set(refusing)
    for key, said in refusing.items():
        assert refused[key].headers["x-refusal-status"] == 415
        problem = orjson.loads(str(refused[key].headers["x-refusal-problem"]))
        assert problem["title"] == "Unsupported media type"
        assert problem["type"].endswith("unsupported-media-type")
        assert said in problem["detail"], problem
        # Forwarded as it came: what it said it was, for the operator to see.
        assert refused[key].content_type == sent[key][0]
        assert refused[key].content_encoding == sent[key][1]
    taken = [key for key, (_, _, said) in sent.items() if said is None]
    assert await ingest.until_counted(election_id, taken) == dict.fromkeys(taken, 1)
    assert ingest.versions(election_id, list(refusing)) == {}


@pytest.mark.parametrize(
    ("encoding", "refused"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("utf-8", False),  # kombu/Celery's JSON serializer
        ("UTF-8", False),  # Spring AMQP's Jackson2JsonMessageConverter
        ("utf8", False),
        ("us-ascii", False),
        ("binary", False),  # kombu, bytes published with content_type application/json
        (" Utf-8 ", False),
        ("gzip", True),
        ("GZIP", True),
        ("x-gzip", True),
        ("deflate", True),
        ("br", True),
        ("compress", True),
        ("zstd", True),
        ("gzip, identity", True),
    ],
)
def test_a_json_message_is_refused_415_only_for_a_content_coding(
    encoding: str | None, refused: bool
) -> None:
    """Only a content coding (gzip and its kind: the body cannot be read) is 415; a
    character set in content_encoding, which kombu/Celery and Spring AMQP send, was 415 too
    (review) and is read as JSON, as before the 415 rule."""
    from types import SimpleNamespace

    from infra.ingest.messages import parse

    body = orjson.dumps(ballot(uuid.uuid4(), "v"))
    message: Any = SimpleNamespace(  # (what parse reads of a message)
        message_id="m", content_type="application/json", content_encoding=encoding, body=body
    )
    delivery = parse(message)
    if refused:
        assert delivery.problem is not None
        assert delivery.problem["status"] == 415, delivery.problem
        assert encoding is not None
        assert f"content_encoding {encoding.lower()}" in delivery.problem["detail"]
        assert delivery.items == []
    else:
        assert delivery.problem is None, delivery.problem
        [item] = delivery.items
        assert item.problem is None, item.problem


def test_a_message_id_too_long_for_one_ballot_says_one_ballot() -> None:
    """The 422 said 'a message of 1 ballots' (review)."""
    from types import SimpleNamespace

    from infra.ingest.messages import parse

    body = orjson.dumps({"election_id": str(uuid.uuid4()), "ballots": [{"voter_id": "v"}]})
    message: Any = SimpleNamespace(
        message_id="X" * 254, content_type=None, content_encoding=None, body=body
    )
    delivery = parse(message)
    assert delivery.problem is not None
    assert (
        "a message of 1 ballot may carry a message_id of at most 253 bytes"
        in (delivery.problem["detail"])
    )


async def test_no_reply_is_sent_to_the_ingests_own_queues(
    ingest: Ingest, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply_to naming the ingest queue put a receipt back into it (then refused), and
    one naming <queue>.refused left a receipt there with no x-refusal (review): no reply
    goes to either; said once at WARNING, counted, and the ballots cast as usual."""
    election_id = await ingest.election()
    withheld = REGISTRY.get_sample_value("cardinal_ingest_replies_withheld_total") or 0.0
    own = [ingest.queue, ingest.queue + ".refused", ingest.queue + ".dead-letter"]
    with caplog.at_level(logging.WARNING, logger="infra.ingest.consumer"):
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            replies = await channel.declare_queue(exclusive=True)
            for n, reply_to in enumerate([*own, replies.name]):
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        orjson.dumps(ballot(election_id, f"r{n}")),
                        message_id=f"reply-{n}",
                        reply_to=reply_to,
                        correlation_id=f"c{n}",
                    ),
                    routing_key=ingest.queue,
                )
            async with replies.iterator() as stream:
                async for message in stream:
                    await message.ack()
                    assert message.correlation_id == f"c{len(own)}"
                    break
        voters = [f"r{n}" for n in range(len(own) + 1)]
        assert await ingest.until_counted(election_id, voters) == dict.fromkeys(voters, 1)
        await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)
    assert await queue_depth(ingest.queue + ".refused") == 0
    assert REGISTRY.get_sample_value("cardinal_ingest_replies_withheld_total") == withheld + 3
    said = [r for r in caplog.records if "one of the ingest's own queues" in r.getMessage()]
    assert len(said) == 1  # once a minute, not once a message


async def test_a_batchs_elections_are_looked_up_a_few_at_a_time(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message naming many elections had them read one after another: 10 messages of
    10,000 ballots, each naming another unknown election, held the queue 7.9 s (review).
    They are read concurrently, at most ELECTION_LOOKUPS at a time."""
    app = ingest.services.app
    looking, most = 0, 0
    read = app.election

    async def counted(election_id: UUID) -> Election:
        nonlocal looking, most
        looking += 1
        most = max(most, looking)
        try:
            await asyncio.sleep(0.01)  # (a read of the store, made to last)
            return await read(election_id)
        finally:
            looking -= 1

    monkeypatch.setattr(app, "election", counted)
    unknown = [uuid.uuid4() for _ in range(40)]
    body = {"ballots": [ballot(e, f"u{n}") for n, e in enumerate(unknown)]}
    await publish(AMQP_URL, ingest.queue, [("many-elections", body)])
    refused = await take_all(ingest.queue + ".refused", len(unknown))
    assert {m.headers["x-refusal-status"] for m in refused} == {404}
    assert most > 1  # (one after another: 1)
    assert most <= ingest_consumer.ELECTION_LOOKUPS
