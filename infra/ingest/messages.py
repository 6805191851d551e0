"""A message from the ingest queue, read as ballots.

A message is one ballot, the body of ``POST /api/elections/{id}/ballots`` plus
``election_id`` (and ``voter_token`` in a token election: a message has no Authorization
header), or ``{"ballots": [...]}``, many such ballots (with an ``election_id`` for them all
or one each). The AMQP ``message_id`` is required: it is the ballot's Idempotency-Key, or,
in a multi-ballot message, ``<message_id>:<index>`` unless a ballot has its own
``idempotency_key``. The key is stored exactly as the HTTP path stores an Idempotency-Key
(``request_key``), so a message redelivered or republished is never counted twice, and a
ballot sent over HTTP and over AMQP with the same key is one ballot.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson
import pydantic
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from api.context import is_json, json_document, media_type, validate
from api.problems import MalformedBody, fault, problem_of
from api.responses import problem_body
from api.schemas import (
    BATCH_BODY_BYTES,
    KEY_RULE,
    MAX_IDEMPOTENCY_KEY,
    BallotIn,
    IdempotencyKey,
    VoterId,
    valid_key,
)
from domain.application import Receipt
from domain.election import Election
from domain.errors import CardinalError, InvalidBallot, InvalidRequest
from domain.rules import Eligibility
from domain.voter import Voter
from infra.ingest.strings import SHORT_STR
from infra.runtime.settings import Settings
from infra.runtime.voters import VoterKeys, request_key

MAX_BALLOTS = 10_000  # in one multi-ballot message
MAX_BALLOT_BYTES = Settings.max_body_bytes  # a message of one ballot, as HTTP's body
# Every reason a ballot or message is refused for (cardinal_ingest_ballots_refused_total):
# the whole message's (``_refused``, ``_too_large``, ``_body``), and one ballot's, named
# after the domain error met validating, naming the voter or casting (``_reason``), or a
# fault. The consumer shows each at 0 from its start (``Ingester``), so that the first
# refusal of each is an increase an alert sees.
REFUSAL_REASONS = (
    "missing_message_id",
    "unsupported_media_type",
    "too_large",
    "malformed_json",
    "invalid_request",
    "invalid_ballot",
    "election_not_found",
    "election_not_open",
    "already_voted",
    "idempotency_key_reused",
    "not_eligible",
    "fault",
)


class IngestBallot(BallotIn):
    """One ballot as a message carries it."""

    election_id: str | None = None
    voter_token: VoterId | None = None

    def content(self) -> dict[str, object]:
        return self.model_dump(
            exclude={"voter_id", "election_id", "voter_token", "idempotency_key"},
            exclude_none=True,
        )


class IngestBatchBallot(IngestBallot):
    """One ballot of a multi-ballot message, with its own key if it has one."""

    idempotency_key: IdempotencyKey | None = None


@dataclass(slots=True)
class Item:
    """One ballot of a message, and what became of it: a receipt or a problem."""

    raw: Any
    key: str
    within: str = ""  # where the ballot sits in its message: ballots[3]
    ballot: IngestBallot | None = None
    election_id: UUID | None = None
    voter: Voter | None = None
    receipt: Receipt | None = None
    problem: dict[str, Any] | None = None
    reason: str = ""
    faults: int = 0  # unexpected errors met so far (infra/ingest/consumer.py)

    def refuse(self, error: Exception) -> None:
        found = problem_of(error, self.within)
        assert found is not None, error
        self.problem = found
        self.reason = _reason(error)

    def refuse_as_fault(self) -> None:
        """Refuse it for an unexpected error (a bug, a row the store would not take)."""
        self.problem = fault()
        self.reason = "fault"

    @property
    def settled(self) -> bool:
        return self.receipt is not None or self.problem is not None


@dataclass(slots=True)
class Delivery:
    """A message and its ballots; ``problem`` refuses the whole message."""

    message: AbstractIncomingMessage
    items: list[Item] = field(default_factory=list)
    multi: bool = False
    problem: dict[str, Any] | None = None
    reason: str = ""

    @property
    def ballots(self) -> int:
        return len(self.items)


def parse(message: AbstractIncomingMessage, max_ballot_bytes: int = MAX_BALLOT_BYTES) -> Delivery:
    """Read a message as ballots, each validated as the HTTP path validates a ballot: its
    body as large as HTTP takes (``max_ballot_bytes`` for one ballot, BATCH_BODY_BYTES for
    many), one JSON document with unique keys."""
    delivery = Delivery(message)
    key = message.message_id
    if not key or not valid_key(key):
        return _refused(
            delivery,
            "missing_message_id",
            InvalidRequest(
                f"message_id is required and {KEY_RULE}: it is the ballot's idempotency key "
                "(a refused ballot of a multi-ballot message comes back under its own), so "
                "that a message redelivered or sent again is counted once",
                field="message_id",
            ),
        )
    body = _body(delivery, max_ballot_bytes)
    if body is None:
        return delivery
    if "ballots" not in body:
        item = Item(body, key)
        _validate(item, IngestBallot, body)
        delivery.items.append(item)
        return delivery
    delivery.multi = True
    ballots, default_election = body.get("ballots"), body.get("election_id")
    extra = set(body) - {"ballots", "election_id"}
    if extra or not isinstance(ballots, list) or not 1 <= len(ballots) <= MAX_BALLOTS:
        return _refused(
            delivery,
            "invalid_request",
            InvalidRequest(
                f"a multi-ballot message is {{ballots: [1 to {MAX_BALLOTS} ballots], "
                "election_id (optional, for them all)}}"
                + (f"; unexpected {', '.join(sorted(extra))}" if extra else ""),
                field="ballots",
            ),
        )
    derived = [i for i, raw in enumerate(ballots) if not isinstance(_own_key(raw), str)]
    if derived and not fits(f"{key}:{derived[-1]}"):
        # A key cut to fit would be another ballot's (``<id>:1`` of ``<id>:17``): the
        # whole message is refused before anything of it is recorded.
        longest = min(MAX_IDEMPOTENCY_KEY, SHORT_STR) - len(f":{derived[-1]}")
        return _refused(
            delivery,
            "invalid_request",
            InvalidRequest(
                f"message_id is {len(key.encode())} bytes: a message of {len(ballots)} "
                f"{'ballot' if len(ballots) == 1 else 'ballots'} "
                f"may carry a message_id of at most {longest} bytes (UTF-8), so that each "
                f"ballot's key, <message_id>:<index>, is at most {SHORT_STR}, as a "
                "message_id holds (or give each ballot its own idempotency_key)",
                field="message_id",
            ),
        )
    for index, raw in enumerate(ballots):
        own = _own_key(raw)
        item = Item(raw, own if isinstance(own, str) else f"{key}:{index}", f"ballots[{index}]")
        if isinstance(raw, dict) and default_election is not None and "election_id" not in raw:
            item.raw = {**raw, "election_id": default_election}
        _validate(item, IngestBatchBallot, item.raw)
        delivery.items.append(item)
    return delivery


# The content codings (HTTP's registry, and zstd) a body may come compressed in: a message
# whose content_encoding names one (alone or in a list, "gzip, identity") is refused, its
# body unreadable as JSON. Any other content_encoding (a character set, "identity") is no
# coding: the body is read as JSON.
CODINGS = frozenset({"gzip", "x-gzip", "deflate", "br", "compress", "x-compress", "zstd"})


def fits(key: str) -> bool:
    """Whether ``key`` is a key (KEY_RULE) that a message_id can carry whole (an AMQP short
    string: SHORT_STR bytes of UTF-8): the key a refused ballot is forwarded under."""
    return valid_key(key) and len(key.encode("utf-8", "surrogatepass")) <= SHORT_STR


def _own_key(raw: Any) -> Any:
    return raw.get("idempotency_key") if isinstance(raw, dict) else None


def _unsupported(delivery: Delivery) -> bool:
    """Refuse (415) a message whose ``content_type`` says it is not JSON, as HTTP refuses
    such a body, or whose ``content_encoding`` names a content coding (CODINGS: gzip and its
    kind), whose body cannot be read (HTTP ignores Content-Encoding: this rule is the
    ingest's own). One with no content_type is read as JSON. Any other ``content_encoding``
    is read as JSON too: publishers put the character set there (kombu/Celery's JSON
    serializer sends ``utf-8``, Spring AMQP's Jackson2JsonMessageConverter ``UTF-8``), and
    such messages were always cast."""
    message = delivery.message
    kind = media_type(message.content_type or "")[0]
    encoding = (message.content_encoding or "").strip().lower()
    coded = {coding.strip() for coding in encoding.split(",")} & CODINGS
    if kind and not is_json(kind):
        detail = (
            "send the body as JSON with content_type application/json (or none); "
            f"got {shortened(kind)}"
        )
    elif coded:
        detail = (
            "send the body as it is, not compressed: a message's body is not decoded; "
            f"got content_encoding {shortened(encoding)}"
        )
    else:
        return False
    delivery.problem = problem_body(415, "Unsupported media type", detail)
    delivery.reason = "unsupported_media_type"
    return True


def shortened(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _body(delivery: Delivery, max_ballot_bytes: int) -> dict[str, Any] | None:
    """The message's body, a JSON object; or None, the message refused."""
    if _unsupported(delivery):
        return None
    raw = delivery.message.body
    if len(raw) > BATCH_BODY_BYTES:
        _too_large(delivery, BATCH_BODY_BYTES, "a multi-ballot message")
        return None
    try:
        body = json_document(raw, "the message body")
    except MalformedBody as error:
        if len(raw) > max_ballot_bytes:
            _too_large(delivery, max_ballot_bytes, "a message of one ballot")
        else:
            delivery.problem = problem_body(400, "Malformed JSON", error.detail)
            delivery.reason = "malformed_json"
        return None
    if len(raw) > max_ballot_bytes and not (isinstance(body, dict) and "ballots" in body):
        _too_large(delivery, max_ballot_bytes, "a message of one ballot")
        return None
    if not isinstance(body, dict):
        _refused(
            delivery,
            "invalid_request",
            InvalidRequest("the message body must be a JSON object: a ballot, or {ballots: [...]}"),
        )
        return None
    return body


def _validate(item: Item, model: type[IngestBallot], raw: Any) -> None:
    try:
        ballot = validate(model, raw)
        if ballot.election_id is None:
            raise InvalidRequest(
                "election_id is required: the election this ballot is cast in",
                field="election_id",
            )
        try:
            item.election_id = UUID(ballot.election_id)
        except ValueError:
            raise InvalidRequest(
                "election_id must be an election's id (a UUID)", field="election_id"
            ) from None
        item.ballot = ballot
    except (ValidationError, CardinalError) as error:
        item.refuse(error)


def identify(item: Item, election: Election, keys: VoterKeys) -> None:
    """Name the ballot's voter as the HTTP path would, and derive its stored request key;
    or refuse it."""
    ballot, election_id = item.ballot, item.election_id
    assert ballot is not None
    assert election_id is not None
    try:
        if election.rules.eligibility is Eligibility.TOKENS:
            if ballot.voter_token is None:
                raise InvalidBallot(
                    "this election takes ballots only from voters holding a voter token: "
                    "put it in voter_token",
                    field="voter_token",
                )
            if ballot.voter_id is not None:
                raise InvalidBallot(
                    "voter_id is not used in token elections: the voter token identifies the voter",
                    field="voter_id",
                )
            item.voter = keys.for_token(election_id, ballot.voter_token)
        else:
            if ballot.voter_token is not None:
                raise InvalidBallot(
                    "voter_token is only for token elections; in this election the client "
                    "names each voter with voter_id",
                    field="voter_token",
                )
            if ballot.voter_id is None:
                raise InvalidBallot(
                    "voter_id is required: in this election the API client names each voter",
                    field="voter_id",
                )
            item.voter = keys.for_voter_id(election_id, ballot.voter_id, election.rules.voter_ids)
    except CardinalError as error:
        item.refuse(error)


def stored_key(item: Item) -> str:
    assert item.voter is not None
    return request_key(item.key, item.voter)


def _refused(delivery: Delivery, reason: str, error: CardinalError) -> Delivery:
    found = problem_of(error)
    assert found is not None
    delivery.problem, delivery.reason = found, reason
    return delivery


def _too_large(delivery: Delivery, limit: int, what: str) -> None:
    detail = f"the message body is larger than {limit // 1024} KiB, the most {what} may be"
    delivery.problem, delivery.reason = problem_body(413, "Payload too large", detail), "too_large"


def forwarded(item: Item) -> bytes:
    """The body a refused ballot of a multi-ballot message is forwarded with: the ballot as
    a message of its own would carry it, to be fixed and republished under the message_id
    it is forwarded with (its key, which a ballot's own ``idempotency_key`` was). An own
    key longer than a message_id holds (255 bytes of UTF-8, 255 characters of which are a
    key) is never cut, which would make it another key: the ballot is forwarded as a
    multi-ballot message of one ballot that keeps its ``idempotency_key``, under a random
    message_id (``forwarded_id``), which that key overrides when it is republished."""
    raw = item.raw
    if isinstance(raw, dict) and raw.get("idempotency_key") == item.key:
        if not fits(item.key):
            return json_bytes({"ballots": [raw]})
        raw = {name: value for name, value in raw.items() if name != "idempotency_key"}
    return json_bytes(raw)


def json_bytes(value: Any) -> bytes:
    """``value`` as JSON, where a string may hold a lone surrogate (a ``"\\ud800"`` the
    message escaped, which orjson will not write): escaped again, as it came."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def _reason(error: Exception) -> str:
    if isinstance(error, pydantic.ValidationError):
        return "invalid_request"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()
