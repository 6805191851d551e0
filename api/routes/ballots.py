"""Ballots: cast or revise, and withdraw. Each answer is a receipt with the log position."""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import UUID

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, operation
from api.params import ELECTION_ID, IDEMPOTENCY_KEY
from api.problems import MAX_ISSUES, Faults, Forbidden, TooManyRequests, fault, problem_of
from api.responses import JSONResponse
from api.schemas import KEY_RULE, BallotIn, BatchBallotIn, BatchIn, WithdrawalIn, valid_key
from api.views import receipt_view
from domain.application import Receipt
from domain.errors import CardinalError, InvalidBallot, InvalidRequest
from domain.ports import HeldBack, OutcomeUnknown
from domain.rules import ElectionRules, Eligibility
from domain.voter import Voter
from infra.batched_metrics import BatchedCounter
from infra.metrics import BALLOTS_ACCEPTED, BALLOTS_REFUSED
from infra.runtime.voters import request_key

ACCEPTED = {
    kind: BatchedCounter(BALLOTS_ACCEPTED.labels(kind))
    for kind in ("cast", "revised", "withdrawn", "replayed")
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
    election_id, rules, voter_token = await _election_and_caller(request)
    body = await context.body(request, BallotIn)
    voter = _voter(request, election_id, rules, body.voter_id, voter_token)
    app = context.services(request).app
    key = _request_key(request, voter)
    try:
        limited = await context.rate_limits(request).ballot(request)
    except TooManyRequests:
        # A retry of a ballot already recorded changes nothing: its receipt, not a 429
        # (a client whose answer was lost must be able to learn what became of it).
        earlier = await app.replayed(election_id, voter, body.content(), key)
        if earlier is None:
            raise
        return _answer(earlier, election_id, _kind(earlier), None)
    receipt = await app.cast_ballot(election_id, voter, body.content(), key)
    return _answer(receipt, election_id, _kind(receipt), limited)


@operation(
    Operation(
        "castBallots",
        "Cast up to 1,000 ballots of a client election at once (the bulk path); each is "
        "recorded or refused on its own, and the answer lists, in order, each one's receipt "
        "or problem (an Idempotency-Key header is refused, 422: keys go per ballot, in "
        "ballots[i].idempotency_key)",
        "ballots",
        body=BatchIn,
        ok=documents.BatchResults,
        errors=(403, 404),
        params=(ELECTION_ID,),
        limited=True,
    )
)
async def cast_batch(request: Request) -> Response:
    """Cast up to 1,000 ballots of a client election at once, each with its own voter_id
    and optional idempotency_key; each is recorded or refused on its own, and the answer
    holds, in order, each one's receipt or problem."""
    election_id, rules, voter_token = await _election_and_caller(request)
    if voter_token is not None:
        raise Forbidden(
            "the bulk path is for API clients in client elections; a voter casts their own "
            "ballot with POST .../ballots"
        )
    if "idempotency-key" in request.headers:
        # One key cannot name a thousand ballots: ignoring it would make a batch sent
        # twice with it a second batch (revisions, or 409s), which the sender meant not.
        raise InvalidRequest(
            "Idempotency-Key is not taken on the bulk path: keys go per ballot, in "
            "ballots[i].idempotency_key; nothing was recorded",
            field="Idempotency-Key",
        )
    body = await context.body(request, BatchIn)
    services = context.services(request)
    keys = services.voter_keys
    results: list[dict[str, Any] | None] = [None] * len(body.ballots)
    accepted: list[tuple[int, Voter, dict[str, object], str | None]] = []
    # The issues the answer lists, over every refused ballot: MAX_ISSUES for the whole
    # batch, as for one request, though each refused ballot lists its first (a list of 20
    # per ballot answered 168 KB of invalid ballots with 1.65 MB: the merge review of
    # 350b454). The rest are counted in each one's more_errors.
    listed = 0
    for index, raw in enumerate(body.ballots):
        try:
            ballot = context.validate(BatchBallotIn, raw)
            if ballot.voter_id is None:
                raise InvalidBallot(
                    "voter_id is required: in this election the API client names each voter",
                    field="voter_id",
                )
            voter = keys.for_voter_id(election_id, ballot.voter_id, rules.voter_ids)
        except (ValidationError, CardinalError) as refused:
            results[index] = its = _problem(refused, index, MAX_ISSUES - listed)
            listed += len(its.get("errors", ()))
            continue
        key = None if ballot.idempotency_key is None else request_key(ballot.idempotency_key, voter)
        accepted.append((index, voter, ballot.content(), key))
    limited = await context.rate_limits(request).ballot(request, max(1, len(accepted)))
    outcomes = await services.app.cast_ballots(
        election_id, [(voter, content, key) for _, voter, content, key in accepted]
    )
    election = str(election_id)
    kinds: Counter[str] = Counter()
    faults = Faults()
    unknown = 0
    waits: dict[str, int] = {}  # each voter's longest retry_after so far (_waits)
    for (index, voter, *_), outcome in zip(accepted, outcomes, strict=True):
        if isinstance(outcome, Receipt):
            kind = _kind(outcome)
            kinds["replayed" if outcome.replayed else kind] += 1
            results[index] = receipt_view(outcome, election, kind)
        elif (found := problem_of(outcome, f"ballots[{index}]")) is not None:
            results[index] = _waits(found, outcome, voter, waits)
            unknown += isinstance(outcome, OutcomeUnknown)  # (may have been recorded)
        else:  # not a refusal of the ballot but a fault: this one alone was not recorded
            faults.add(outcome)
            results[index] = fault()
    for kind, count in kinds.items():
        ACCEPTED[kind].inc(count)
    if unknown:  # (as a single ballot's 503 is counted)
        BALLOTS_REFUSED.labels("outcome_unknown").inc(unknown)
    if faulty := faults.log("of a bulk request"):
        BALLOTS_REFUSED.labels("fault").inc(faulty)
    return JSONResponse({"results": results}, headers=limited)


def _waits(
    found: dict[str, Any], outcome: Exception, voter: Voter, waits: dict[str, int]
) -> dict[str, Any]:
    """A 503 item carries retry_after (what a single ballot's Retry-After says); one held
    back is sent again with its voter's earlier one, so it waits as long as that one.
    ``waits``: each voter's longest so far in the request."""
    if "retry_after" in found:
        so_far = waits.get(voter.ballot_key, 0)
        if isinstance(outcome, HeldBack):
            found["retry_after"] = max(found["retry_after"], so_far)
        waits[voter.ballot_key] = max(found["retry_after"], so_far)
    return found


def _problem(error: Exception, index: int, most: int) -> dict[str, Any]:
    """A ballot's refusal (it names the field, within the request), listing ``most`` issues
    at most (one at least). Not the request's."""
    found = problem_of(error, f"ballots[{index}]", most)
    assert found is not None, error
    return found


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
    election_id, rules, voter_token = await _election_and_caller(request)
    body = await context.body(request, WithdrawalIn, required=False)
    voter = _voter(request, election_id, rules, body.voter_id, voter_token)
    limited = await context.rate_limits(request).ballot(request)
    receipt = await context.services(request).app.withdraw_ballot(
        election_id, voter, _request_key(request, voter)
    )
    return _answer(receipt, election_id, "withdrawn", limited)


async def _election_and_caller(request: Request) -> tuple[UUID, ElectionRules, str | None]:
    """The election's id and rules, and the caller's voter token where the election takes
    those."""
    principal = context.auth(request).identify(request)
    election_id = context.election_id(request)
    services = context.services(request)
    if principal.voter_token is not None:
        # On the roll, before anything else is said (the body's shape, the route): a token
        # not issued here learns nothing of the election (review helper-50). One that
        # another process issued a moment ago is looked for in the store before it is
        # refused.
        credential = services.voter_keys.credential(election_id, principal.voter_token)
        election = await services.app.token_holder_election(election_id, credential)
        return election_id, election.rules, principal.voter_token
    election = await services.app.election(election_id)
    if election.rules.eligibility is Eligibility.TOKENS:
        raise Forbidden(
            "this election takes ballots only from voters holding a voter token: "
            "send Authorization: Bearer <voter token>"
        )
    if not principal.can_act_as("client"):
        raise Forbidden(
            f"the {principal.role} role may not cast ballots in this election; it needs the "
            "client role"
        )
    return election_id, election.rules, None


def _voter(
    request: Request,
    election_id: UUID,
    rules: ElectionRules,
    voter_id: str | None,
    voter_token: str | None,
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
    return keys.for_voter_id(election_id, voter_id, rules.voter_ids)


def _request_key(request: Request, voter: Voter) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not valid_key(key):  # (a batch's keys: in BatchBallotIn, by the same rule)
        raise InvalidRequest(f"Idempotency-Key {KEY_RULE}", field="Idempotency-Key")
    return request_key(key, voter)


def _kind(receipt: Receipt) -> str:
    """What a cast did: the voter's first ballot, or a revision of it."""
    return "cast" if receipt.version == 1 else "revised"


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
