"""Elections: create, open, close, issue voter tokens, list, get."""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.auth import check_reader
from api.contract import Operation, Param, operation
from api.params import ELECTION_ID
from api.problems import Forbidden
from api.responses import JSONResponse
from api.schemas import ElectionIn, TokensIn
from api.views import election_view
from domain.errors import InvalidRequest
from domain.rules import ElectionRules
from infra.runtime.voters import new_voter_token

TOKEN_ANSWER = {"Cache-Control": "no-store"}
STATUSES = ("draft", "open", "closed")


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


@operation(
    Operation(
        "openElection",
        "Open an election for ballots (admin)",
        "elections",
        ok=documents.ElectionChange,
        errors=(403, 404, 409),
        params=(ELECTION_ID,),
        links=_links("CastBallot", "WithdrawBallot", "CloseElection", "GetResults"),
    )
)
async def open_election(request: Request) -> Response:
    context.auth(request).require(request, "admin")
    app = context.services(request).app
    receipt = await app.open_election(context.election_id(request))
    election = await app.election(receipt.id)
    return JSONResponse({**election_view(election), "position": receipt.position})


@operation(
    Operation(
        "closeElection",
        "Close an election: ballots after this are refused (admin)",
        "elections",
        ok=documents.ElectionChange,
        errors=(403, 404, 409),
        params=(ELECTION_ID,),
        links=_links("GetResults", "ElectionEvents"),
    )
)
async def close_election(request: Request) -> Response:
    context.auth(request).require(request, "admin")
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
        "Every election, oldest first (any role)",
        "elections",
        ok=documents.Elections,
        errors=(403,),
        params=(
            Param("status", "query", {"type": "string", "enum": list(STATUSES)}, required=False),
        ),
    )
)
async def list_elections(request: Request) -> Response:
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
    services = context.services(request)
    await services.feed.complete()
    elections = await services.app.every_election()
    views = [election_view(e) for e in elections if status is None or e.status.value == status]
    return JSONResponse({"elections": views})


@operation(
    Operation(
        "getElection",
        "One election (any role, or its own voter token)",
        "elections",
        ok=documents.Election,
        errors=(403, 404),
        params=(ELECTION_ID,),
        links=_links("GetResults"),
    )
)
async def get_election(request: Request) -> Response:
    principal = context.auth(request).identify(request)
    election_id = context.election_id(request)
    services = context.services(request)
    election = await services.app.election(election_id)
    check_reader(principal, election, partial(services.voter_keys.credential, election_id))
    return JSONResponse(election_view(election))
