"""One table from errors to HTTP statuses, and the handlers that render problem+json."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

import psycopg
import pydantic
from eventsourcing import persistence
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from api.responses import ProblemResponse, problem, problem_body
from api.schemas import unknown_field_hint
from domain import errors
from domain.ports import HeldBack, OutcomeUnknown, Overloaded, StoreUnavailable
from infra.metrics import BALLOTS_REFUSED
from infra.runtime.settings import SettingsError
from infra.store.ratelimit import LimiterStoreDown, LimiterUnavailable
from infra.store.writer import (
    CHANGE_NOT_MADE,
    KEYED_NOT_RECORDED,
    AttemptRefused,
    LookupUnavailable,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[errors.CardinalError], int]] = [
    (errors.InvalidRequest, 422),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.NotEligible, 403),
]


# Each kind of problem's stable type URI (RFC 9457 section 3.1.1): what a client tells
# problems apart by (the titles are for people, and may be reworded). A domain refusal's
# type is its class's (the nearest in its MRO); every other problem's is its title's.
PREFIX = "urn:cardinal-vote:problem:"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
DOMAIN_TYPES: dict[type[errors.CardinalError], str] = {
    errors.InvalidRequest: PREFIX + "invalid-request",
    errors.InvalidElection: PREFIX + "invalid-election",
    errors.InvalidBallot: PREFIX + "invalid-ballot",
    errors.IdempotencyKeyReused: PREFIX + "idempotency-key-reused",
    errors.NotFound: PREFIX + "not-found",
    errors.ElectionNotFound: PREFIX + "election-not-found",
    errors.BallotNotFound: PREFIX + "ballot-not-found",
    errors.Conflict: PREFIX + "conflict",
    errors.ElectionNotOpen: PREFIX + "election-not-open",
    errors.InvalidTransition: PREFIX + "invalid-transition",
    errors.AlreadyVoted: PREFIX + "already-voted",
    errors.AlreadyWithdrawn: PREFIX + "already-withdrawn",
    errors.ConcurrentRevision: PREFIX + "concurrent-revision",
    errors.NotEligible: PREFIX + "not-eligible",
}
# Problems the API (not the domain) raises, by title; "Not found" is the domain's too.
API_TYPES: dict[str, str] = {
    "Invalid request": PREFIX + "invalid-request",  # a body or parameter breaking the schema
    "Not found": PREFIX + "not-found",  # (also: no route has this path)
    "Unauthorized": PREFIX + "unauthorized",
    "Forbidden": PREFIX + "forbidden",
    "Not published yet": PREFIX + "not-published",
    "Too many requests": QUOTA_EXCEEDED,
    "Too many streams": QUOTA_EXCEEDED,
    "Malformed JSON": PREFIX + "malformed-json",
    "Unsupported media type": PREFIX + "unsupported-media-type",
    "Payload too large": PREFIX + "payload-too-large",
    "Method not allowed": PREFIX + "method-not-allowed",
    "Bad request": PREFIX + "malformed-http",
    "Request timeout": PREFIX + "request-timeout",
    "Request header fields too large": PREFIX + "headers-too-large",
    "Client disconnected": PREFIX + "client-disconnected",
    "Busy": PREFIX + "busy",
    "Service unavailable": PREFIX + "store-not-answering",
    "Event store unavailable": PREFIX + "store-unavailable",
    "Rate limit not checked": PREFIX + "rate-limit-not-checked",
    "Database unavailable": PREFIX + "database-unavailable",
    "Held back": PREFIX + "held-back",
    "Read model not ready": PREFIX + "read-model-not-ready",
    "Not ready": PREFIX + "not-ready",
    "No audit key": PREFIX + "no-audit-key",
    "Rebuild not started": PREFIX + "rebuild-not-started",
    "Internal error": PREFIX + "internal-error",
}
TITLE_TYPES: dict[str, str] = {
    **{kind.title: uri for kind, uri in DOMAIN_TYPES.items()},
    **API_TYPES,
}


def type_of(status: int, title: str) -> str:
    """The type URI of a problem with this title: "about:blank" only for one whose title
    is its status's phrase (a plain HTTP refusal, RFC 9457 section 4.2.1)."""
    return TITLE_TYPES.get(title, "about:blank")


def domain_type(exc: errors.CardinalError) -> str:
    return next(DOMAIN_TYPES[kind] for kind in type(exc).__mro__ if kind in DOMAIN_TYPES)


class Unauthorized(Exception):
    """No credentials, or credentials we do not recognise (401)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Forbidden(Exception):
    """Credentials of a role that may not do this (403); ``title`` tells a refusal of the
    caller from one of everybody but admins and auditors (results not published yet)."""

    def __init__(self, detail: str, title: str = "Forbidden") -> None:
        super().__init__(detail)
        self.detail = detail
        self.title = title


class TooManyRequests(Exception):
    """A rate limit refused the request (429); ``headers`` carry Retry-After and RateLimit."""

    def __init__(self, detail: str, headers: dict[str, str], policies: list[str]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.policies = policies


class MalformedBody(Exception):
    """A body that is not one JSON document with unique keys (400)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TooManyValues(MalformedBody):
    """A body that holds more JSON values than any request could need (413): refused
    before it is parsed, which costs the event loop a moment per value."""


class UnsupportedMediaType(Exception):
    """A body that does not say it is JSON (415)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


BALLOT_PATHS = ("/ballots", "/withdrawals")


DATABASE_ERRORS = (
    psycopg.OperationalError,
    persistence.OperationalError,
    persistence.InterfaceError,
    PoolTimeout,
)
DATABASE_UNAVAILABLE = (
    "the database could not be reached; retry shortly (a ballot with the same "
    "Idempotency-Key is never recorded twice)"
)


def _refused(request: Request, reason: str) -> None:
    """Count a refused ballot request (other refusals are visible in the HTTP metrics)."""
    if request.method == "POST" and request.url.path.endswith(BALLOT_PATHS):
        BALLOTS_REFUSED.labels(reason).inc()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.CardinalError)
    _refused(request, _snake(type(exc).__name__))
    body = _domain(exc)
    return ProblemResponse(body, status_code=body["status"])


def _domain(exc: errors.CardinalError) -> dict[str, Any]:
    status = next(code for kind, code in STATUS if isinstance(exc, kind))
    detail = exc.detail
    if isinstance(exc, errors.InvalidRequest) and exc.field in MEANINGS:
        detail = f"{detail}: {MEANINGS[exc.field]}"
    return problem_body(status, exc.title, detail, field=exc.field, type=domain_type(exc))


# Query parameters whose name can be read as something they are not: a refusal that names
# one says what it is.
MEANINGS = {
    "at": "at is a log position (the position in receipts and results: a whole number), not a time",
}


def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, pydantic.ValidationError)
    body = _invalid(exc)
    _refused(request, "malformed_json" if body["status"] == 400 else "invalid_request")
    return ProblemResponse(body, status_code=body["status"])


# The most issues a 422 lists in ``errors``; ``more_errors`` counts the rest. Listing every
# one, a 58 KB sign-in body of 6,000 unknown keys was answered 365 KB (6,002 items), and
# cost 28 ms to describe (the DoS review). A bulk request's refused ballots share the one
# budget (each lists its first issue at least: see api/routes/ballots.py): a list of 20 per
# ballot answered 168 KB of 1,000 invalid ballots with 1.65 MB (the merge review of 350b454).
MAX_ISSUES = 20


def _invalid(
    exc: pydantic.ValidationError, within: str = "", most: int = MAX_ISSUES
) -> dict[str, Any]:
    """``within``: where the validated value sits in the request (``ballots[3]``), which
    every field named is then prefixed with; ``most``: how many issues to list (at least
    one)."""
    found = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in found):
        reason = found[0].get("ctx", {}).get("error", "it could not be parsed")
        return problem_body(400, "Malformed JSON", f"the request body is not valid JSON: {reason}")
    issues = [
        {"field": _location(e["loc"], within), "message": _message(e, exc.title)}
        for e in found[: max(1, most)]
    ]
    first = issues[0]
    if first["field"]:
        detail = f"{first['field']}: {first['message']}"
    else:
        detail = f"the request body {first['message']}"
    more = len(found) - 1
    if more:
        detail += f" (and {more} more problem{'s' if more > 1 else ''})"
    extra: dict[str, Any] = {"errors": issues}
    if len(found) > len(issues):
        extra["more_errors"] = len(found) - len(issues)
    return problem_body(422, "Invalid request", detail, field=first["field"] or None, **extra)


def problem_of(
    exc: BaseException, within: str = "", most: int = MAX_ISSUES
) -> dict[str, Any] | None:
    """The problem document for an error that one ballot of a batch met, or None if the
    error is not about that ballot (the whole request then fails as usual). ``within``:
    where the ballot sits in the request (``ballots[3]``), for the fields it names;
    ``most``: how many issues a 422 lists (at least one: what the batch has left). A 503
    (the ballot to be sent again) carries ``retry_after``: the seconds a single ballot's
    Retry-After would say, since a 200 answer's header cannot say it for one item."""
    if isinstance(exc, errors.CardinalError):
        found = _domain(exc)
        if within and "field" in found:
            # (a batch carries the key in the ballot, not in the header: name it as sent)
            name = "idempotency_key" if found["field"] == "Idempotency-Key" else found["field"]
            found["field"] = f"{within}.{name}"
        return found
    if isinstance(exc, pydantic.ValidationError):
        return _invalid(exc, within, most)
    passing = _passing(exc)
    if passing is None:
        return None
    title, detail, wait = passing
    return problem_body(503, title, detail, retry_after=wait)


# Retry-After, in seconds, of each 503 a ballot meets (and a bulk item's ``retry_after``).
BUSY_WAIT = 1
STORE_WAIT = 5
DATABASE_WAIT = 2
STORE_TITLE = "Event store unavailable"


def _passing(exc: BaseException) -> tuple[str, str, int] | None:
    """The title, detail and Retry-After seconds of an error that says nothing about the
    ballot (retry it). A ballot held back behind its voter's earlier one is to be sent
    again after a second at least (the bulk path waits as long as for that earlier one)."""
    if isinstance(exc, Overloaded):
        return "Busy", OVERLOADED, BUSY_WAIT
    if isinstance(exc, StoreUnavailable):
        return _store_title(exc), str(exc), STORE_WAIT
    if isinstance(exc, HeldBack):
        return "Held back", str(exc), BUSY_WAIT
    if isinstance(exc, DATABASE_ERRORS):
        return "Database unavailable", DATABASE_UNAVAILABLE, DATABASE_WAIT
    return None


def _store_title(exc: BaseException) -> str:
    """A rate-limit check the database did not answer in time is the limiter's refusal, not
    the event store's (which may well be up); while the writer has the store marked down
    (LimiterStoreDown), the store is what is away."""
    if isinstance(exc, LimiterUnavailable) and not isinstance(exc, LimiterStoreDown):
        return "Rate limit not checked"
    return STORE_TITLE


def fault() -> dict[str, Any]:
    """The problem document for an unexpected error one ballot of a batch met (logged with
    Faults): that ballot was not recorded, and its neighbours' outcomes stand."""
    return problem_body(
        500,
        "Internal error",
        "an unexpected error occurred with this ballot; it was not recorded (the error has "
        "been logged)",
    )


class Faults:
    """The unexpected errors the ballots of one batch met: a batch-wide one meets them
    all, and is logged once, with how many it met."""

    def __init__(self) -> None:
        self._met: dict[int, tuple[BaseException, int]] = {}

    def add(self, error: BaseException) -> None:
        _, count = self._met.get(id(error), (error, 0))
        self._met[id(error)] = (error, count + 1)

    def log(self, where: str) -> int:
        """Log each error once; how many ballots they met in all."""
        for error, count in self._met.values():
            log.error("unexpected error with %d ballot(s) %s", count, where, exc_info=error)
        return sum(count for _, count in self._met.values())


def _message(error: Any, model: str = "") -> str:
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
        hint = unknown_field_hint(model, str(error["loc"][0]))
        if hint is not None:
            return f"{error['msg']}: {hint}"
    if error["type"] == "string_unicode":
        return "contains a lone surrogate (an unpaired UTF-16 escape); use valid Unicode text"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object"  # not pydantic's words, which name our classes
    return str(error["msg"]).removeprefix("Value error, ")


def _location(loc: tuple[int | str, ...], within: str = "") -> str:
    parts: list[str] = [within] if within else []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts)


def unauthorized(request: Request, exc: Exception) -> Response:
    _refused(request, "unauthorized")
    assert isinstance(exc, Unauthorized)
    return problem(
        401, "Unauthorized", exc.detail, headers={"WWW-Authenticate": 'Bearer realm="cardinal"'}
    )


def forbidden(request: Request, exc: Exception) -> Response:
    _refused(request, "forbidden")
    assert isinstance(exc, Forbidden)
    return problem(403, exc.title, exc.detail)


OVERLOADED = "the server is taking more ballots than it can record right now; retry after a second"


def overloaded(request: Request, exc: Exception) -> Response:
    _refused(request, "overloaded")
    return problem(503, "Busy", OVERLOADED, headers={"Retry-After": str(BUSY_WAIT)})


# A lookup on the request's path (an election read before its change, say) that found the
# store away is said in a ballot's words by the writer; any other request gets its own
# (review exhaust L4: an election's open was told "this ballot was not recorded now ... retry
# with the same Idempotency-Key").
READ_UNAVAILABLE = "the event store is unreachable: retry shortly"


# A withdrawal refused for certain: the writer's ballot words ("the ballot was not
# recorded") read to a voter as if their ballot were gone, when it stays as it was (merge
# review F3).
WITHDRAWAL_NOT_RECORDED = (
    "the event store is unreachable; the withdrawal was not recorded, and the voter's "
    "ballot stays as it was: retry shortly, with the same Idempotency-Key if it had one"
)


def store_unavailable(request: Request, exc: Exception) -> Response:
    # (outcome_unknown: may have been recorded, not a refusal for certain)
    unknown = isinstance(exc, OutcomeUnknown)
    title = _store_title(exc)
    if unknown:
        _refused(request, "outcome_unknown")
    else:
        _refused(request, "store_unavailable" if title == STORE_TITLE else "rate_limit_unchecked")
    detail = str(exc)
    if isinstance(exc, LookupUnavailable) and not _ballot_request(request):
        detail = READ_UNAVAILABLE if request.method in ("GET", "HEAD") else CHANGE_NOT_MADE
    elif (
        not unknown
        and not isinstance(exc, LimiterUnavailable)  # (its own words: api/ratelimit.py)
        and request.method == "POST"
        and request.url.path.endswith("/withdrawals")
    ):
        detail = _withdrawal_refused(request, exc, detail)
    return problem(503, title, detail, headers={"Retry-After": str(STORE_WAIT)})


def _withdrawal_refused(request: Request, exc: Exception, detail: str) -> str:
    """A withdrawal refused for certain: one without a key was not recorded, and the
    voter's ballot stays as it was; one with an Idempotency-Key may be the retry of one
    that was recorded (review D1), so it is told that this attempt recorded nothing, in
    the writer's words (AttemptRefused's, else KEYED_NOT_RECORDED: a lookup refused it)."""
    if request.headers.get("idempotency-key") is None:
        return WITHDRAWAL_NOT_RECORDED
    return detail if isinstance(exc, AttemptRefused) else KEYED_NOT_RECORDED


def _ballot_request(request: Request) -> bool:
    """A ballot, a batch of them, or a withdrawal: what the writer's ballot words are for."""
    return request.method == "POST" and request.url.path.endswith((*BALLOT_PATHS, "/batch"))


def database_unavailable(request: Request, exc: Exception) -> Response:
    _refused(request, "database_unavailable")
    log.warning("database error while serving a request: %s", exc)
    return problem(
        503,
        "Database unavailable",
        DATABASE_UNAVAILABLE,
        headers={"Retry-After": str(DATABASE_WAIT)},
    )


def too_many(request: Request, exc: Exception) -> Response:
    _refused(request, "rate_limited")
    assert isinstance(exc, TooManyRequests)
    extra: dict[str, Any] = {"type": QUOTA_EXCEEDED, "violated-policies": exc.policies}
    return problem(429, "Too many requests", exc.detail, headers=exc.headers, **extra)


def malformed_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, MalformedBody)
    if isinstance(exc, TooManyValues):
        _refused(request, "too_large")
        return problem(413, "Payload too large", exc.detail)
    _refused(request, "malformed_json")
    return problem(400, "Malformed JSON", exc.detail)


def unsupported_media_type(request: Request, exc: Exception) -> Response:
    _refused(request, "unsupported_media_type")
    assert isinstance(exc, UnsupportedMediaType)
    return problem(415, "Unsupported media type", exc.detail)


def read_model_missing(request: Request, exc: Exception) -> Response:
    """A read model whose first version is still being set up (a fresh database, right
    after start): its tables appear within a second or so."""
    log.info("a read model is not there yet: %s", exc)
    return problem(
        503,
        "Read model not ready",
        "the read models are still being set up; retry in a second",
        headers={"Retry-After": "1"},
    )


def client_gone(_: Request, __: Exception) -> Response:
    """The client hung up (or was cut off for reading too slowly): no one hears this."""
    return problem(400, "Client disconnected", "the client closed the connection")


def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 413:
        _refused(request, "too_large")
    titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large", 503: "Busy"}
    # (any other: its status phrase, as an about:blank problem's title is)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    headers = dict(exc.headers) if exc.headers else {}
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the path only; a
        # path served by several routes (GET and POST /api/elections) allows them all.
        headers["Allow"] = ", ".join(_allowed(request))
        detail = f"{request.method} is not allowed here; use {headers['Allow']}"
    elif exc.status_code == 404 and exc.detail == NO_ROUTE:
        detail = _no_route(request)
    return problem(
        exc.status_code,
        titles.get(exc.status_code, HTTPStatus(exc.status_code).phrase),
        detail,
        headers=headers or None,
    )


def _allowed(request: Request, path: str | None = None) -> list[str]:
    """The methods the app's routes take at ``path`` (the request's, by default)."""
    methods: set[str] = set()
    path = request.scope["path"] if path is None else path
    for route in getattr(request.app, "routes", ()):
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


# The detail of the 404 Starlette's router raises where no route matches the path.
NO_ROUTE = HTTPStatus.NOT_FOUND.phrase
SHOWN_PATH = 200  # characters of an unknown path named in the answer


SHOWN = 40  # characters of a path segment or parameter named in a detail


def shown(text: str, limit: int = SHOWN) -> str:
    """``text`` as a detail names what the client sent: its first ``limit`` characters
    (an ellipsis past them: a 20,000-character id is not echoed whole), each control
    character or lone surrogate written as Python writes it (``\\x00``, ``\\ud800``) so
    that it is seen, not sent on raw."""
    head = text[:limit]
    if not head.isprintable():
        head = "".join(c if c.isprintable() else repr(c)[1:-1] for c in head)
    return head if len(text) <= limit else f"{head}…"


def _no_route(request: Request) -> str:
    """What a person can act on, for a path no route serves: where the routes are listed,
    and, for a trailing slash, that the path without it is one."""
    path = request.scope["path"]
    detail = f"no route {request.method} {shown(path, SHOWN_PATH)}"
    bare = path.rstrip("/")
    if bare != path and bare and _allowed(request, bare):
        return f"{detail}: {bare} (without the trailing slash) is a route; use that"
    return f"{detail}: see /docs (or /openapi.json) for the API's routes"


def unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


HANDLERS = {
    errors.CardinalError: domain_error,
    pydantic.ValidationError: validation_error,
    Unauthorized: unauthorized,
    Forbidden: forbidden,
    Overloaded: overloaded,
    StoreUnavailable: store_unavailable,
    psycopg.OperationalError: database_unavailable,
    persistence.OperationalError: database_unavailable,
    persistence.InterfaceError: database_unavailable,
    PoolTimeout: database_unavailable,
    psycopg.errors.UndefinedTable: read_model_missing,
    TooManyRequests: too_many,
    MalformedBody: malformed_body,
    UnsupportedMediaType: unsupported_media_type,
    ClientDisconnect: client_gone,
    HTTPException: http_error,
    SettingsError: unexpected,
    Exception: unexpected,
}
