"""Messages built to hurt `cardinal ingest` (review helper-37): each is refused on its own,
with a clear ``x-refusal``, and costs neither the consumer's connection nor a neighbour."""

from __future__ import annotations

import struct
from typing import Any

import aio_pika
import orjson
import pamqp.common
import pamqp.encode
import pytest

from infra.ingest.publisher import cast_with_receipts, publish
from infra.ingest.refusals import refusal_headers
from tests.e2e.stack import AMQP_URL
from tests.integration import test_ingest
from tests.integration.test_ingest import (
    Ingest,
    ballot,
    queue_depth,
    take_all,
    until,
)

ingest = test_ingest.ingest  # the fixture: a consumer on a queue of its own


HUGE = "x" * 200_000  # a field name: 200 KB, more than a frame (128 KiB) can carry


async def test_a_refusal_quoting_a_huge_field_fits_a_frame_and_costs_no_neighbour(
    ingest: Ingest,
) -> None:
    election_id = await ingest.election(allow_revote=False)
    voters = [f"n{n}" for n in range(100)]
    huge_item = {"voter_id": "huge", "choice": "yes", HUGE: 1}
    many = {"election_id": str(election_id), "ballots": [ballot(election_id, "m0"), huge_item]}
    await publish(
        AMQP_URL,
        ingest.queue,
        [(f"n-{v}", ballot(election_id, v)) for v in voters[:50]]
        + [("huge-many", many), ("huge-one", {**ballot(election_id, "huge"), HUGE: 1})]
        + [("too-many", {"ballots": [ballot(election_id, "t" * 1000)] * 5000})]
        + [(f"n-{v}", ballot(election_id, v)) for v in voters[50:]],
    )
    counted = await ingest.until_counted(election_id, [*voters, "m0"])
    assert counted == dict.fromkeys([*voters, "m0"], 1)
    refused = {m.message_id: m for m in await take_all(ingest.queue + ".refused", 3)}
    assert set(refused) == {"huge-many:1", "huge-one", "too-many"}
    one, item, batch = refused["huge-one"], refused["huge-many:1"], refused["too-many"]
    assert one.headers["x-refusal-status"] == 413
    assert "larger than 64 KiB" in str(one.headers["x-refusal"])
    assert batch.headers["x-refusal-status"] == 413
    assert "larger than 4096 KiB" in str(batch.headers["x-refusal"])
    assert item.headers["x-refusal-status"] == 422
    assert str(item.headers["x-refusal"]).startswith("ballots[1].xxxx")
    assert orjson.loads(item.body)[HUGE] == 1  # the ballot as sent, to be fixed
    assert one.body == orjson.dumps({**ballot(election_id, "huge"), HUGE: 1})
    await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)
    # Nothing else reached the refused queue: no neighbour dead-lettered with the poison.
    assert await queue_depth(ingest.queue + ".refused") == 0
    assert ingest.versions(election_id, ["huge", "t" * 1000]) == {}


def test_refusal_headers_stay_a_few_kilobytes_whatever_the_problem_quotes() -> None:
    issues = [{"field": f"ballots[0].{HUGE}{n}", "message": HUGE} for n in range(1000)]
    problem = {"type": "about:blank", "title": "Invalid request", "status": 422}
    problem |= {"detail": HUGE, "field": HUGE, "errors": issues, "\udcff": "\ud800"}
    headers = refusal_headers(problem)
    assert sum(len(str(value).encode()) for value in headers.values()) < 10_000
    assert headers["x-refusal-status"] == 422
    assert orjson.loads(headers["x-refusal-problem"])["title"] == "Invalid request"


def _undecodable(encoder: struct.Struct, value: str) -> bytes:
    """pamqp's string encoder, sending the bytes a surrogateescape'd str stands for."""
    raw = value.encode("utf-8", "surrogateescape")
    return encoder.pack(len(raw)) + raw


def _undecodable_names(value: dict[str, Any]) -> bytes:
    """pamqp's field-table encoder, its names sent as ``_undecodable`` sends strings."""
    fields = b"".join(
        _undecodable(pamqp.common.Struct.byte, name) + pamqp.encode.encode_table_value(item)
        for name, item in sorted(value.items())
    )
    return pamqp.common.Struct.integer.pack(len(fields)) + fields


async def test_a_message_id_that_is_not_utf8_is_refused_and_costs_no_connection(
    ingest: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pamqp reads short strings and header names as UTF-8: a 0xff byte in one failed the
    frame, and aiormq closed the connection, again on each redelivery, until the delivery
    limit dead-lettered the message with the batch around it."""
    election_id = await ingest.election(allow_revote=False)
    voters = [f"u{n}" for n in range(40)]
    good = [(f"u-{v}", ballot(election_id, v)) for v in voters]
    await publish(AMQP_URL, ingest.queue, good[:20])
    monkeypatch.setattr(pamqp.encode, "_string", _undecodable)
    monkeypatch.setitem(pamqp.encode.METHODS, "table", _undecodable_names)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for key, voter in (("bad\udcffid", "bad"), ("odd-reply", "odd")):
            await channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(ballot(election_id, voter)),
                    message_id=key,
                    correlation_id="corr\udcfe",
                    reply_to=None if key.startswith("bad") else "nowhere\udcff",
                    headers={"name\udcff": 1},
                ),
                routing_key=ingest.queue,
            )
    monkeypatch.undo()
    await publish(AMQP_URL, ingest.queue, good[20:])
    assert await ingest.until_counted(election_id, [*voters, "odd"]) == dict.fromkeys(
        [*voters, "odd"], 1
    )
    (refused,) = await take_all(ingest.queue + ".refused", 1)
    assert refused.message_id == "bad\\udcffid"  # the byte spelt out, readable
    assert refused.correlation_id == "corr\\udcfe"
    assert "message_id is required" in str(refused.headers["x-refusal"])
    await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)
    assert await queue_depth(ingest.queue + ".refused") == 0
    assert ingest.versions(election_id, ["bad"]) == {}


async def test_a_message_naming_a_field_twice_is_refused_as_malformed(ingest: Ingest) -> None:
    """As HTTP refuses it: parsers disagree on which value wins."""
    election_id = await ingest.election(allow_revote=False)
    twice = (
        b'{"election_id": "%s", "voter_id": "a", "voter_id": "b", "choice": "yes"}'
        % str(election_id).encode()
    )
    in_many = (
        b'{"election_id": "%s", "ballots": [{"voter_id": "c", "choice": "yes", "choice": "no"}]}'
        % str(election_id).encode()
    )
    await publish(AMQP_URL, ingest.queue, [("dup-1", twice), ("dup-2", in_many)])
    await publish(AMQP_URL, ingest.queue, [("after", ballot(election_id, "after"))])
    await ingest.until_counted(election_id, ["after"])
    refused = {m.message_id: m for m in await take_all(ingest.queue + ".refused", 2)}
    assert set(refused) == {"dup-1", "dup-2"}
    for message in refused.values():
        assert message.headers["x-refusal-status"] == 400
        assert "duplicate key" in str(message.headers["x-refusal"])
    assert refused["dup-1"].body == twice  # as sent, to be fixed
    assert ingest.versions(election_id, ["a", "b", "c"]) == {}


async def test_a_ballot_escaping_a_lone_surrogate_is_refused_and_forwarded_as_it_came(
    ingest: Ingest,
) -> None:
    """Read as HTTP reads it (well-formed JSON, then refused by validation), a lone
    surrogate cannot be written by orjson nor sent in a header as it is."""
    election_id = await ingest.election(allow_revote=False)
    body = (
        b'{"election_id": "%s", "ballots": [{"voter_id": "s1", "choice": "yes"}, '
        b'{"voter_id": "s\\ud800", "choice": "yes", "\\udc00": 1}]}' % str(election_id).encode()
    )
    await publish(AMQP_URL, ingest.queue, [("sur", body)])
    (refused,) = await take_all(ingest.queue + ".refused", 1)
    assert refused.message_id == "sur:1"
    assert refused.headers["x-refusal-status"] == 422
    assert "lone surrogate" in str(refused.headers["x-refusal"])
    assert orjson.loads(str(refused.headers["x-refusal-problem"]))["status"] == 422
    assert orjson.loads(refused.body.replace(b"\\ud800", b"?").replace(b"\\udc00", b"?")) == {
        "voter_id": "s?",
        "choice": "yes",
        "?": 1,
        "election_id": str(election_id),
    }
    assert await ingest.until_counted(election_id, ["s1"]) == {"s1": 1}
    await until(lambda: queue_depth(ingest.queue), lambda depth: depth == 0)


async def test_a_refused_ballot_fixed_and_republished_under_its_message_id_is_cast(
    ingest: Ingest,
) -> None:
    """The documented repair, for a ballot of a multi-ballot message too, its own
    idempotency_key included."""
    election_id = await ingest.election(allow_revote=False)
    many: dict[str, Any] = {
        "election_id": str(election_id),
        "ballots": [
            {"voter_id": "f2", "choice": "maybe"},
            {"voter_id": "f3", "choice": "maybe", "idempotency_key": "own-f3"},
            {"voter_id": "f4", "choice": "yes"},
        ],
    }
    await publish(
        AMQP_URL, ingest.queue, [("fix-1", ballot(election_id, "f1", "maybe")), ("fix-m", many)]
    )
    refused = await take_all(ingest.queue + ".refused", 3)
    assert {m.message_id for m in refused} == {"fix-1", "fix-m:0", "own-f3"}
    fixed = [(str(m.message_id), {**orjson.loads(m.body), "choice": "yes"}) for m in refused]
    answers = await cast_with_receipts(AMQP_URL, ingest.queue, fixed, within=20)
    assert {key: answer.get("status") for key, answer in answers.items()} == dict.fromkeys(
        ["fix-1", "fix-m:0", "own-f3"], "cast"
    )
    assert ingest.versions(election_id, ["f1", "f2", "f3", "f4"]) == dict.fromkeys(
        ["f1", "f2", "f3", "f4"], 1
    )


def _short(value: bytes) -> bytes:
    return bytes([len(value)]) + value


def _table(fields: bytes) -> bytes:
    return struct.pack(">I", len(fields)) + fields


def _nested(depth: int) -> bytes:
    inner = _table(b"")
    for _ in range(depth):
        inner = _table(b"\x01aF" + inner)
    return inner


def _properties(message_id: bytes, *, headers: bytes | None, timestamp: int | None) -> bytes:
    """A content header's properties as raw bytes (what pamqp would refuse to encode)."""
    flags, out = 0, b""
    if headers is not None:
        flags |= 1 << 13
        out += headers
    flags |= 1 << 12
    out += b"\x02"  # persistent
    flags |= 1 << 7
    out += _short(message_id)
    if timestamp is not None:
        flags |= 1 << 6
        out += struct.pack(">Q", timestamp)
    return struct.pack(">H", flags) + out


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("timestamp", _properties(b"p-ts", headers=None, timestamp=2**64 - 1)),
        (
            "header-timestamp",
            _properties(
                b"p-hts", headers=_table(b"\x01tT" + struct.pack(">Q", 2**64 - 1)), timestamp=None
            ),
        ),
        ("nested-headers", _properties(b"p-nest", headers=_nested(1500), timestamp=None)),
    ],
)
async def test_a_header_pamqp_cannot_decode_costs_no_connection(
    ingest: Ingest, case: str, raw: bytes
) -> None:
    """A timestamp past year 9999, or headers nested 1,500 deep, made pamqp fail the content
    header (ValueError, RecursionError): the connection dropped at every delivery, ingest
    stalled for a minute and counted neighbours went to .refused (review helper-49)."""
    import aiormq
    from pamqp import commands

    class Raw(commands.Basic.Properties):
        def marshal(self) -> bytes:
            return raw

    election_id = await ingest.election(allow_revote=False)
    voters = [f"g{n}" for n in range(20)]
    await publish(AMQP_URL, ingest.queue, [(f"g-{v}", ballot(election_id, v)) for v in voters[:10]])
    connection = await aiormq.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.confirm_delivery()
        body = orjson.dumps(ballot(election_id, f"poison-{case}"))
        await channel.basic_publish(body, routing_key=ingest.queue, properties=Raw())
    finally:
        await connection.close()
    await publish(AMQP_URL, ingest.queue, [(f"g-{v}", ballot(election_id, v)) for v in voters[10:]])
    everyone = [*voters, f"poison-{case}"]
    counted = await until(
        lambda: ingest.versions(election_id, everyone), lambda v: len(v) == len(everyone), within=20
    )
    assert counted == dict.fromkeys(everyone, 1)  # (it is a ballot like any other)
    assert await queue_depth(ingest.queue + ".refused") == 0
