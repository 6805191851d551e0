"""Elections: create, open, close, issue voter tokens, list, get."""

from __future__ import annotations

import re
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlencode
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.auth import readable_election
from api.contract import Operation, Param, operation
from api.params import ELECTION_ID, POSITION
from api.problems import Forbidden, MalformedBody, Unauthorized
from api.responses import JSONResponse
from api.routes.results import MAX_WAIT, own_position
from api.schemas import ElectionIn, Strict, TokensIn
from api.views import election_view
from domain.application import VotingApplication, creation_order
from domain.election import ElectionStatus
from domain.errors import ElectionNotFound, InvalidRequest
from domain.rules import ElectionRules
from infra.runtime.voters import new_voter_token

TOKEN_ANSWER = {"Cache-Control": "no-store"}
STATUSES = ("draft", "open", "closed")
LISTING = "/api/elections"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CURSOR = re.compile(r"[0-9a-f]{32}")  # an election's id, as a listing writes it


# From an election in an answer to what can be done with it next (stateful tests follow these).
def _links(*names: str) -> dict[str, dict[str, Any]]:
    known = {
        "GetElection": "getElection",
        "OpenElection": "openElection",
        "CloseElection": "closeElection",
        "IssueTokens": "issueTokens",
        "CastBallot": "castBallot",
        "WithdrawBallot": "withdrawBallot",
        "GetResults": "getResults",
        "ElectionEvents": "electionEvents",
    }
    return {
        name: {"operationId": known[name], "parameters": {"election_id": "$response.body#/id"}}
        for name in names
    }


@operation(
    Operation(
        "createElection",
        "Create an election with its rules pinned (admin)",
        "elections",
        body=ElectionIn,
        ok=documents.ElectionChange,
        status=201,
        errors=(403,),
        ok_headers={"Location": {"schema": {"type": "string"}}},
        links=_links("GetElection", "OpenElection", "IssueTokens", "CloseElection"),
    )
)
async def create(request: Request) -> Response:
    context.auth(request).require(request, "admin")
    body = await context.body(request, ElectionIn)
    rules = ElectionRules.create(
        options=[option.model_dump() for option in body.options],
        method=body.method,
        min_score=body.min_score,
        max_score=body.max_score,
        eligibility=body.eligibility,
        allow_revote=body.allow_revote,
        results_visibility=body.results_visibility,
        tie_break=body.tie_break,
        live_results_step=body.live_results_step,
        late_tokens=body.late_tokens,
        public_results=body.public_results,
        seats=body.seats,
    )
    app = context.services(request).app
    receipt = await app.create_election(body.title, rules)
    election = await app.election(receipt.id)
    return JSONResponse(
        {**election_view(election), "position": receipt.position},
        status_code=201,
        headers={"Location": f"/api/elections/{receipt.id}"},
    )


class AtOnce(Strict):
    """No body, or {}: the election is opened (closed) at once, when the call is made.
    Nothing is scheduled (there are no opening or closing times): call it at the moment
    wanted. Any field is refused with 422, and nothing changes."""


# What open and close do, for the refusal of a body that asks them to wait.
_AT_ONCE = {
    "open": ("opens", "opening", "begin"),
    "close": ("closes", "closing", "end"),
}
SHOWN_FIELDS = 5


async def _at_once(request: Request, action: str) -> None:
    """Refuse (422, before anything is changed) a body other than none or {}. Open and
    close act at once and cannot be undone (a close least of all): a body such as
    {"closes_at": ...} asks for a schedule that does not exist, and acting on the call
    anyway would end voting there and then."""
    raw = await request.body()
    if not raw.strip():
        return
    sent = _fields(raw, request.headers.get("content-type", ""))
    if sent == []:
        return  # {}: asks for nothing (whatever Content-Type it came with)
    does, doing, moment = _AT_ONCE[action]
    why = (
        f"{doing} cannot be scheduled: POST /api/elections/{{id}}/{action} {does} the election "
        f"at once, when it is called; call it at the moment voting should {moment}, with no "
        "body (or {}). Nothing was changed"
    )
    if not sent:
        raise InvalidRequest(f"the request body is not taken here: {why}")
    shown = ", ".join(sent[:SHOWN_FIELDS]) + (", ..." if len(sent) > SHOWN_FIELDS else "")
    raise InvalidRequest(f"{shown}: {why}", field=sent[0])


def _fields(raw: bytes, content_type: str) -> list[str] | None:
    """The field names a body sends (JSON, or a form), as far as they can be read; None
    if none can."""
    try:
        document = context.json_document(raw)
    except MalformedBody:
        document = None
    if isinstance(document, dict):
        return [str(name)[:64] for name in document]
    kind = content_type.partition(";")[0].strip().lower()
    if document is None and kind == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(raw.decode(), keep_blank_values=True, max_num_fields=100)
        except (UnicodeDecodeError, ValueError):
            return None
        return [name[:64] for name in form] or None
    return None


@operation(
    Operation(
        "openElection",
        "Open an election for ballots, at once (admin)",
        "elections",
        body=AtOnce,
        body_required=False,
        ok=documents.ElectionChange,
        errors=(403, 404, 409),
        params=(ELECTION_ID,),
        links=_links("CastBallot", "WithdrawBallot", "CloseElection", "GetResults"),
    )
)
async def open_election(request: Request) -> Response:
    context.auth(request).require(request, "admin")
    await _at_once(request, "open")
    app = context.services(request).app
    receipt = await app.open_election(context.election_id(request))
    election = await app.election(receipt.id)
    return JSONResponse({**election_view(election), "position": receipt.position})


@operation(
    Operation(
        "closeElection",
        "Close an election, at once: ballots after this are refused (admin)",
        "elections",
        body=AtOnce,
        body_required=False,
        ok=documents.ElectionChange,
        errors=(403, 404, 409),
        params=(ELECTION_ID,),
        links=_links("GetResults", "ElectionEvents"),
    )
)
async def close_election(request: Request) -> Response:
    context.auth(request).require(request, "admin")
    await _at_once(request, "close")
    app = context.services(request).app
    receipt = await app.close_election(context.election_id(request))
    election = await app.election(receipt.id)
    return JSONResponse({**election_view(election), "position": receipt.position})


@operation(
    Operation(
        "issueTokens",
        "Issue one-time voter tokens, shown once (admin)",
        "elections",
        body=TokensIn,
        ok=documents.IssuedTokens,
        status=201,
        errors=(403, 404, 409),
        params=(ELECTION_ID,),
        no_store=True,
    )
)
async def issue_tokens(request: Request) -> Response:
    """Issue one-time voter tokens; they are shown here once and stored only as keys."""
    context.auth(request).require(request, "admin")
    election_id = context.election_id(request)
    body = await context.body(request, TokensIn)
    services = context.services(request)
    tokens = [new_voter_token() for _ in range(body.count)]
    credentials = [services.voter_keys.credential(election_id, token) for token in tokens]
    receipt = await services.app.issue_voter_tokens(election_id, credentials)
    return JSONResponse(
        {"election_id": str(election_id), "tokens": tokens, "position": receipt.position},
        status_code=201,
        headers=TOKEN_ANSWER,
    )


@operation(
    Operation(
        "listElections",
        "The elections, oldest first, a page at a time: follow next (any role)",
        "elections",
        ok=documents.Elections,
        errors=(403,),
        params=(
            Param("status", "query", {"type": "string", "enum": list(STATUSES)}, required=False),
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
                required=False,
                description=f"elections per page, {DEFAULT_LIMIT} unless given",
            ),
            Param(
                "after",
                "query",
                {"type": "string", "minLength": 1, "maxLength": 64},
                required=False,
                description="where the page starts: an opaque cursor, taken from the previous "
                "page's next (or its Link header), never built by hand",
            ),
        ),
        ok_headers={
            "Link": {
                "description": 'the next page, as <URL>; rel="next" (absent on the last page)',
                "schema": {"type": "string"},
            }
        },
    )
)
async def list_elections(request: Request) -> Response:
    """A page of elections in creation order. The cursor is the last election's place in
    that order, not an offset: elections created meanwhile come after every one that was
    already there (they are newer), and a status that changes meanwhile moves nothing, so
    a client following ``next`` sees each older election once."""
    if context.auth(request).identify(request).voter_token is not None:
        raise Forbidden(
            "a voter token reads only the election it was issued for: "
            "GET /api/elections/{election_id}"
        )
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(
            f"status must be one of {', '.join(STATUSES)}; got {status[:40]!r}", field="status"
        )
    limit = context.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    services = context.services(request)
    await services.feed.complete()
    after = await _cursor(services.app, request.query_params.get("after"))
    # One more than the page: whether there is a next one.
    wanted = await services.app.elections_after(
        after, limit=limit + 1, status=None if status is None else ElectionStatus(status)
    )
    page = wanted[:limit]
    headers: dict[str, str] = {}
    next_page: str | None = None
    if len(wanted) > limit:
        query = {**({"status": status} if status else {}), "limit": str(limit)}
        next_page = f"{LISTING}?{urlencode({**query, 'after': page[-1].id.hex})}"
        headers["Link"] = f'<{next_page}>; rel="next"'
    return JSONResponse(
        {"elections": [election_view(e) for e in page], "next": next_page}, headers=headers
    )


async def _cursor(app: VotingApplication, raw: str | None) -> tuple[datetime, UUID] | None:
    """The place in creation order a cursor stands for (a 422 for one no listing gave)."""
    if raw is None:
        return None
    hint = "start again without after, or use the next link of the page before"
    if not CURSOR.fullmatch(raw):
        raise InvalidRequest(f"after is not a cursor from a listing: {hint}", field="after")
    try:
        election = await app.election(UUID(hex=raw))
    except ElectionNotFound:
        raise InvalidRequest(
            f"after names no election this API knows: {hint}", field="after"
        ) from None
    return creation_order(election)


@operation(
    Operation(
        "getElection",
        "One election (any role, or its own voter token; public_results or not)",
        "elections",
        ok=documents.Election,
        errors=(403, 404),
        params=(
            ELECTION_ID,
            Param(
                "min_position",
                "query",
                POSITION,
                required=False,
                description="wait up to 2 s for this process's view of the election to "
                "reach this position (a receipt's: a close's, an open's); not reached, the "
                "answer says so in a Warning header (a voter token: at most its own "
                "ballot's or its election's last entry)",
            ),
        ),
        links=_links("GetResults"),
    )
)
async def get_election(request: Request) -> Response:
    """The election as this process holds it; ``min_position`` waits (up to 2 s) for this
    process's elections to have caught up with the log up to it: a close answered by
    another process is otherwise seen here only when the election feed next catches up."""
    if "authorization" not in request.headers:
        # public_results opens the results to all, not the election document: say so,
        # since that is what a reader of a public election asks here.
        raise Unauthorized(
            "send an Authorization: Bearer <token> header, with a role's token or a voter "
            "token issued for this election: reading an election always needs one "
            "(public_results makes only its results, GET .../results, readable without)"
        )
    principal = context.auth(request).identify(request)
    election_id = context.election_id(request)
    wanted = context.int_param(request, "min_position", 0, minimum=0)
    services = context.services(request)
    election = await readable_election(
        principal, services.app, election_id, partial(services.voter_keys.credential, election_id)
    )
    if not wanted:
        return JSONResponse(election_view(election))
    if principal.voter_token is not None:
        # As for results: a voter waits for its own entries or its election's, never for
        # the log's head, whose moves would time every election's ballots.
        wanted = await own_position(services, election_id, principal.voter_token, wanted)
    reached = await services.feed.reached(wanted, MAX_WAIT)
    election = await services.app.election(election_id)  # (authorised above)
    headers = {} if reached else {"Warning": f'199 - "position {wanted} not reached yet"'}
    return JSONResponse(election_view(election), headers=headers)
