"""What endpoints take from a request: the running services, the caller, the ids, the body."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, TypeVar
from uuid import UUID

import jiter
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.types import Message, Receive

from api.auth import Authenticator
from api.edge import Edge
from api.problems import MalformedBody, TooManyValues, UnsupportedMediaType, shown
from api.ratelimit import RateLimits
from domain.errors import ElectionNotFound, InvalidRequest
from infra.audit.chain import Signer
from infra.runtime.bootstrap import Services

M = TypeVar("M", bound=BaseModel)
OFF_LOOP_BYTES = 64 * 1024  # a body larger than this is parsed off the event loop


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def auth(request: Request) -> Authenticator:
    return request.app.state.auth  # type: ignore[no-any-return]


def signer(request: Request) -> Signer | None:
    return request.app.state.signer  # type: ignore[no-any-return]


def edge(request: Request) -> Edge:
    return request.app.state.edge  # type: ignore[no-any-return]


def rate_limits(request: Request) -> RateLimits:
    return edge(request).limits


def election_id(request: Request) -> UUID:
    raw: str = request.path_params["election_id"]
    known = _ELECTION_IDS.get(raw)
    if known is not None:
        return known
    try:
        parsed = UUID(raw)
    except ValueError:  # (named as sent, within bounds: SHOWN characters, escaped)
        raise ElectionNotFound(shown(raw)) from None
    # The ballot hot path parses the same few ids: each is remembered once its election is
    # known to this process, and only as written canonically. Unknown ids (404s, ids made
    # up at random to fill it) and other spellings of a known one (upper case, braces) are
    # parsed each time, so they never take the room of a real election's (the soak review).
    if (
        len(_ELECTION_IDS) < KNOWN_IDS
        and parsed in services(request).app.known
        and raw == str(parsed)
    ):
        _ELECTION_IDS[raw] = parsed
    return parsed


# At most one entry per election this process knows of; past this many elections, the
# later ones are parsed each time.
KNOWN_IDS = 4096
_ELECTION_IDS: dict[str, UUID] = {}


async def body(request: Request, model: type[M], *, required: bool = True) -> M:
    """The request body validated as ``model``: 415 unless it says it is JSON, 400 if it is
    not one JSON document with unique keys in UTF-8, 422 if the wrong shape. An empty body
    is 400 where the operation requires one (``required``: its contract's body_required),
    and reads as {} where it does not (a withdrawal by a voter token has nothing to say)."""
    raw = await _read(request)
    if not raw:
        if required:
            raise MalformedBody(EMPTY_BODY)
        return model.model_validate({})
    content_type = request.headers.get("content-type", "")
    kind, parameters = media_type(content_type)
    if not is_json(kind):
        raise UnsupportedMediaType(
            f"send the body as JSON with Content-Type: application/json; got {kind or 'none'}"
        )
    try:
        if len(raw) <= OFF_LOOP_BYTES:
            document = json_document(raw, max_commas=MAX_COMMAS)
        else:
            # A bulk body is parsed on a worker thread: where the fast parser cannot read
            # it (an escaped lone surrogate), the lenient parse runs Python code for every
            # object, and the event loop takes its turns meanwhile. (MAX_COMMAS bounds what
            # either parse holds the loop for.)
            document = await asyncio.to_thread(json_document, raw, max_commas=MAX_COMMAS)
    except TooManyValues:
        raise
    except MalformedBody as refused:
        said = _not_utf8(raw, parameters)
        if said is None:
            raise
        raise MalformedBody(f"{refused.detail} ({said})") from None
    return validate(model, document)


def media_type(content_type: str) -> tuple[str, str]:
    """A Content-Type's media type (lower case) and its parameters (as sent)."""
    kind, _, parameters = content_type.partition(";")
    return kind.strip().lower(), parameters


def is_json(kind: str) -> bool:
    """Whether a media type (``media_type``'s) says JSON: what a body must say, else 415
    (the ingest queue's ``content_type`` is judged by the same rule)."""
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


EMPTY_BODY = "the body is empty: this operation takes a JSON object (see /openapi.json)"
# Byte order marks: JSON is UTF-8 without one (RFC 8259 section 8.1). UTF-32's before
# UTF-16's, whose marks begin theirs.
BYTE_ORDER_MARKS = (
    (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
CHARSET = re.compile(r"(?:^|;)\s*charset\s*=\s*\"?([^\";\s]*)", re.IGNORECASE)


def _not_utf8(raw: bytes, parameters: str) -> str | None:
    """Why a body that could not be parsed may be no UTF-8 JSON, in words that say what to
    send instead (None: nothing says so). Said only once it failed: a body labelled with
    another charset that parses as UTF-8 is taken, as it always was."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            return (
                f"it starts with a {encoding} byte order mark: send UTF-8 without a byte order mark"
            )
    if b"\x00" in raw[:4]:  # (no JSON text in UTF-8 starts with a NUL)
        return "it looks like UTF-16 or UTF-32: the body must be UTF-8"
    found = CHARSET.search(parameters)
    charset = found.group(1).lower() if found else ""
    if charset and charset.replace("-", "").replace("_", "") != "utf8":
        return f"it is sent as charset={charset[:40]}: the body must be UTF-8"
    return None


def validate(model: type[M], data: Any) -> M:
    """``data`` (parsed JSON) validated as ``model``, with a whole number written with a
    fraction (5.0, 1e0, -0.0) taken as the integer it is. Every path that takes a ballot
    or a body (one ballot, a batch's ballots, the ingest queue's messages) validates
    through this, so each answers the same for the same JSON."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        if not any(_integral_float(e) for e in error.errors(include_url=False)):
            raise
    # JSON has one number type: 5.0 is the integer 5 to JSON Schema, and so to us.
    return model.model_validate(_whole_numbers(data))


async def _read(request: Request) -> bytes:
    """The request's body. One that came whole in one message (as uvicorn hands over a
    ballot) is taken as it is, without Starlette's stream around it (the ballot hot path);
    anything else is read by Starlette, with the message taken put back in front."""
    message = await request.receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        body: bytes = message.get("body", b"")
        request._body = body  # what Request.body() returns once read
        return body
    request._receive = _replaying(message, request.receive)
    return await request.body()


def _replaying(first: Message, receive: Receive) -> Receive:
    """``receive`` with a message already taken from it put back in front."""
    pending: list[Message] = [first]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _integral_float(error: Any) -> bool:
    value = error.get("input")
    return error["type"] == "int_type" and isinstance(value, float) and value.is_integer()


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


# The most commas a body may hold. Parsing (and validating) a body costs the event loop a
# moment per JSON value, and values need commas between them: a 4 MiB bulk body of a
# million empty objects held every request of the process for 1.3 s (the hostile review).
# The fullest batch holds 1,000 ballots of at most 100 options each (a score ballot: a
# comma between each two of its scores, and between its fields): 128 a ballot leaves room
# for commas in voter ids. Counting costs a millisecond for 4 MiB; any body within the
# 64 KiB limit of the other paths is under it. (The ingest queue's messages, of up to
# 10,000 ballots, are not held to it: its consumer serves no requests.)
MAX_COMMAS = 128_000


def json_document(raw: bytes, what: str = "the request body", max_commas: int | None = None) -> Any:
    """``raw`` read as one JSON document with unique keys, or MalformedBody saying what
    ``what`` is not (the ingest queue reads its messages with it too); with
    ``max_commas``, TooManyValues (a MalformedBody, 413) if it holds more commas than
    that, before it is parsed."""
    if max_commas is not None and (commas := raw.count(b",")) > max_commas:
        raise TooManyValues(
            f"{what} holds {commas:,} commas, more than the {max_commas:,} that any request "
            "may hold (1,000 ballots of 100 options each); send fewer ballots at a time"
        )
    # Duplicate keys are refused: parsers disagree on which one wins, so a body that names
    # a field twice could mean one thing to a proxy or a log reader and another to us.
    try:
        return jiter.from_json(raw, catch_duplicate_keys=True, allow_inf_nan=False)
    except ValueError as error:
        if b"\\ud" not in raw.lower():
            raise MalformedBody(f"{what} is not valid JSON: {error}") from None
    # JSON that escapes a lone UTF-16 surrogate ("\ud800") is well-formed, but the fast
    # parser stops at it. Parsed leniently, validation names the field; as strictly as the
    # fast parser otherwise (no NaN or Infinity, no nesting deeper than Python's stack).
    try:
        return json.loads(raw, object_pairs_hook=_unique, parse_constant=_not_a_number)
    except RecursionError:
        raise MalformedBody(f"{what} is not valid JSON: nested too deeply") from None
    except ValueError as error:
        raise MalformedBody(f"{what} is not valid JSON: {error}") from None


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate key {key!r}")
        found[key] = value
    return found


# Log positions and checkpoint ids are PostgreSQL bigints.
MAX_POSITION = 2**63 - 1
WHOLE_NUMBER = re.compile(r"-?[0-9]{1,20}")


def int_param(
    request: Request,
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int = MAX_POSITION,
) -> int:
    """A whole-number query parameter within bounds (422 naming it otherwise)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw):
        raise InvalidRequest(f"{name} must be a whole number; got {raw[:40]!r}", field=name)
    value = int(raw)
    if value < minimum or value > maximum:
        raise InvalidRequest(
            f"{name} must be from {minimum} to {maximum}; got {raw[:40]}", field=name
        )
    return value
