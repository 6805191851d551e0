"""Ballots: cast or revise, and withdraw. Each answer is a receipt with the log position."""

from __future__ import annotations

from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, operation
from api.params import ELECTION_ID, IDEMPOTENCY_KEY
from api.problems import Forbidden
from api.responses import JSONResponse
from api.schemas import BallotIn, WithdrawalIn
from api.views import receipt_view
from domain.application import Receipt
from domain.errors import InvalidBallot, InvalidRequest
from domain.rules import Eligibility
from domain.voter import Voter
from infra.metrics import BALLOTS_ACCEPTED
from infra.runtime.voters import request_key

MAX_IDEMPOTENCY_KEY = 255
ACCEPTED = {
    kind: BALLOTS_ACCEPTED.labels(kind) for kind in ("cast", "revised", "withdrawn", "replayed")
}


@operation(
    Operation(
        "castBallot",
        "Cast a ballot, or revise the voter's earlier one (client with voter_id, or a voter "
        "token); the answer is a receipt",
        "ballots",
        body=BallotIn,
        ok=documents.BallotReceipt,
        status=201,
        also=(200,),
        errors=(403, 404, 409),
        params=(ELECTION_ID, IDEMPOTENCY_KEY),
        limited=True,
        links={
            "WithdrawBallot": {
                "operationId": "withdrawBallot",
                "parameters": {"election_id": "$response.body#/election_id"},
            },
        },
    )
)
async def cast(request: Request) -> Response:
    """Cast a ballot, or revise the voter's earlier one where the election allows it."""
    election_id, voter_token = await _election_and_caller(request)
    body = await context.body(request, BallotIn)
    voter = _voter(request, election_id, body.voter_id, voter_token)
    limited = await context.rate_limits(request).ballot(request)
    receipt = await context.services(request).app.cast_ballot(
        election_id, voter, body.content(), _request_key(request, voter)
    )
    return _answer(receipt, election_id, "cast" if receipt.version == 1 else "revised", limited)


@operation(
    Operation(
        "withdrawBallot",
        "Withdraw the voter's ballot, where the election allows changing it",
        "ballots",
        body=WithdrawalIn,
        body_required=False,
        ok=documents.BallotReceipt,
        errors=(403, 404, 409),
        params=(ELECTION_ID, IDEMPOTENCY_KEY),
        limited=True,
    )
)
async def withdraw(request: Request) -> Response:
    """Withdraw the voter's ballot (where the election allows changing a cast ballot)."""
    election_id, voter_token = await _election_and_caller(request)
    body = await context.body(request, WithdrawalIn)
    voter = _voter(request, election_id, body.voter_id, voter_token)
    limited = await context.rate_limits(request).ballot(request)
    receipt = await context.services(request).app.withdraw_ballot(
        election_id, voter, _request_key(request, voter)
    )
    return _answer(receipt, election_id, "withdrawn", limited)


async def _election_and_caller(request: Request) -> tuple[UUID, str | None]:
    """The election's id, and the caller's voter token where the election takes those."""
    principal = context.auth(request).identify(request)
    election_id = context.election_id(request)
    election = await context.services(request).app.election(election_id)
    if election.rules.eligibility is Eligibility.TOKENS:
        if principal.voter_token is None:
            raise Forbidden(
                "this election takes ballots only from voters holding a voter token: "
                "send Authorization: Bearer <voter token>"
            )
        return election_id, principal.voter_token
    if not principal.can_act_as("client"):
        who = f"the {principal.role} role" if principal.role else "a voter token"
        raise Forbidden(f"{who} may not cast ballots in this election; it needs the client role")
    return election_id, None


def _voter(
    request: Request, election_id: UUID, voter_id: str | None, voter_token: str | None
) -> Voter:
    keys = context.services(request).voter_keys
    if voter_token is not None:
        if voter_id is not None:
            raise InvalidBallot(
                "voter_id is not used in token elections: the voter token identifies the voter",
                field="voter_id",
            )
        return keys.for_token(election_id, voter_token)
    if voter_id is None:
        raise InvalidBallot(
            "voter_id is required: in this election the API client names each voter",
            field="voter_id",
        )
    return keys.for_voter_id(election_id, voter_id)


def _request_key(request: Request, voter: Voter) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters",
            field="Idempotency-Key",
        )
    return request_key(key, voter)


def _answer(
    receipt: Receipt, election_id: UUID, status: str, limited: dict[str, str] | None
) -> Response:
    headers = dict(limited) if limited else {}
    if receipt.replayed:
        headers["Idempotent-Replayed"] = "true"
    ACCEPTED["replayed" if receipt.replayed else status].inc()
    code = 201 if receipt.version == 1 else 200
    return JSONResponse(
        receipt_view(receipt, str(election_id), status), status_code=code, headers=headers or None
    )
