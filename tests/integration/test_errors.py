"""Every refusal is an RFC 9457 problem with a status, a detail a person can act on, and,
where one field is at fault, that field's name; and a refused request records nothing."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.integration.client import VotingClient, assert_problem, bearer, options
from tests.servers import ADMIN, AUDITOR, CLIENT


async def _log_length(voting: VotingClient) -> int:
    return len(await voting.audit_events())


async def test_malformed_json_is_400(voting: VotingClient, http: httpx.AsyncClient) -> None:
    election_id = await voting.open_election()
    response = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=b'{"choice": "a", "voter_id": ',
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    assert_problem(response, 400, "not valid JSON")


@pytest.mark.parametrize(
    ("raw", "content_type", "detail"),
    [
        (
            b'\xef\xbb\xbf{"choice": "a", "voter_id": "v"}',
            "application/json",
            "it starts with a UTF-8 byte order mark: send UTF-8 without a byte order mark",
        ),
        (
            '\ufeff{"choice": "a", "voter_id": "v"}'.encode("utf-16"),
            "application/json",
            "send UTF-8 without a byte order mark",
        ),
        (
            '{"choice": "a", "voter_id": "v"}'.encode("utf-16-le"),
            "application/json",
            "the body must be UTF-8",
        ),
        (
            '{"choice": "a", "voter_id": "v"}'.encode("utf-16-le"),
            "application/json; charset=utf-16",
            "it looks like UTF-16 or UTF-32: the body must be UTF-8",
        ),
        (
            '{"choice": "\u00e9", "voter_id": "v"}'.encode("latin-1"),
            "application/json; charset=ISO-8859-1",
            "it is sent as charset=iso-8859-1: the body must be UTF-8",
        ),
    ],
)
async def test_a_body_not_in_utf8_is_told_to_be_sent_in_utf8(
    voting: VotingClient, http: httpx.AsyncClient, raw: bytes, content_type: str, detail: str
) -> None:
    """A body with a byte order mark, or in another encoding, was told "expected value at
    line 1 column 1", which says nothing of what to change."""
    election_id = await voting.open_election()
    response = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=raw,
        headers={**bearer(CLIENT), "Content-Type": content_type},
    )
    problem = assert_problem(response, 400, detail)
    assert problem["detail"].startswith("the request body is not valid JSON: ")


async def test_a_body_labelled_with_another_charset_that_reads_as_utf8_is_taken(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """(As before: a client that labels its ASCII JSON ISO-8859-1 still casts.)"""
    election_id = await voting.open_election()
    response = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=b'{"choice": "a", "voter_id": "latin"}',
        headers={**bearer(CLIENT), "Content-Type": "application/json; charset=ISO-8859-1"},
    )
    assert response.status_code == 201, response.text


async def test_an_empty_body_where_one_is_required_is_400(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """An empty body was read as {} and answered with the first field {} lacks ("voter_id
    is required"): it is said to be empty. Where the body is optional (open, close, a
    withdrawal) none is still none."""
    election_id = await voting.open_election()
    draft = (await voting.create_election(eligibility="tokens"))["id"]
    required = [
        ("/api/elections", ADMIN),
        (f"/api/elections/{election_id}/ballots", CLIENT),
        (f"/api/elections/{election_id}/ballots/batch", CLIENT),
        (f"/api/elections/{draft}/tokens", ADMIN),
        ("/api/auth/login", None),
        ("/api/auth/refresh", None),
        ("/api/auth/logout", None),
    ]
    for path, token in required:
        for content_type in ("application/json", None):
            headers = bearer(token) if token else {}
            if content_type:
                headers["Content-Type"] = content_type
            response = await http.post(path, content=b"", headers=headers)
            problem = assert_problem(response, 400, "the body is empty")
            assert problem["title"] == "Malformed JSON", path
    # Optional bodies: open and close with none, and a voter's withdrawal with none.
    tokens_election, tokens = await voting.token_election()
    cast = await voting.cast(tokens_election, {"choice": "a"}, token=tokens[0])
    assert cast.status_code == 201, cast.text
    withdrawn = await http.post(
        f"/api/elections/{tokens_election}/withdrawals",
        content=b"",
        headers={**bearer(tokens[0]), "Content-Type": "application/json"},
    )
    assert withdrawn.status_code == 200, withdrawn.text
    closed = await http.post(
        f"/api/elections/{election_id}/close",
        content=b"",
        headers={**bearer(ADMIN), "Content-Type": "application/json"},
    )
    assert closed.status_code == 200, closed.text


@pytest.mark.parametrize(
    ("body", "field", "detail"),
    [
        ({"title": "x", "method": "plurality"}, "options", "Field required"),
        (
            {"title": "x", "options": options("a", "b"), "method": "plurality", "extra": 1},
            "extra",
            "Extra inputs are not permitted",
        ),
        (
            {"title": "x", "options": options("a", "b"), "method": "score", "max_score": "5"},
            "max_score",
            "valid integer",
        ),
        (
            {"title": "x", "options": options("a", "b"), "method": "sortition"},
            "method",
            "method must be one of plurality, approval",
        ),
        (
            {"title": "x", "options": options("a"), "method": "plurality"},
            "options",
            "between 2 and 100 options",
        ),
        (
            {"title": "x", "options": options("a", "a"), "method": "plurality"},
            "options[1].id",
            "appears more than once",
        ),
        (
            {"title": " ", "options": options("a", "b"), "method": "plurality"},
            "title",
            "non-empty",
        ),
        (
            {
                "title": "x",
                "options": options("a", "b"),
                "method": "score",
                "min_score": 3,
                "max_score": 1,
            },
            "max_score",
            "must be lower than max_score",
        ),
        (
            {"title": "x", "options": options("a", "b"), "method": "irv", "min_score": 0},
            "min_score",
            "applies to score and STAR elections only",
        ),
    ],
)
async def test_an_invalid_election_is_422_naming_the_field(
    http: httpx.AsyncClient, body: dict[str, object], field: str, detail: str
) -> None:
    response = await http.post("/api/elections", json=body, headers=bearer(ADMIN))
    problem = assert_problem(response, 422, detail)
    assert problem["field"] == field


@pytest.mark.parametrize(
    ("method", "rules", "ballot", "field", "detail"),
    [
        ("plurality", {}, {"choice": "z"}, "choice", "'z' is not an option of this election"),
        ("plurality", {}, {}, "choice", "the ballot is empty"),
        ("plurality", {}, {"ranking": ["a"]}, "ranking", "marked with 'choice', not 'ranking'"),
        ("approval", {}, {"approve": []}, "approve", "approve at least one option"),
        ("approval", {}, {"approve": ["a", "a"]}, "approve[1]", "approved twice"),
        ("score", {}, {"scores": {"a": 3}}, "scores.a", "outside the allowed range -2..2"),
        ("score", {}, {"scores": {"a": "2"}}, "scores.a", "valid integer"),
        ("star", {}, {"scores": {"q": 3}}, "scores.q", "'q' is not an option"),
        ("star", {}, {"scores": {}}, "scores", "score at least one option (0..5)"),
        ("irv", {}, {"ranking": ["a", "b", "a"]}, "ranking[2]", "ranked twice (positions 1"),
        ("schulze", {}, {"ranking": []}, "ranking", "rank at least one option"),
        ("borda", {}, {"choice": "a"}, "choice", "marked with 'ranking', not 'choice'"),
    ],
)
async def test_a_ballot_that_breaks_the_rules_is_422_naming_the_field(
    voting: VotingClient,
    method: str,
    rules: dict[str, object],
    ballot: dict[str, object],
    field: str,
    detail: str,
) -> None:
    election_id = await voting.open_election(method, **rules)
    before = await _log_length(voting)
    response = await voting.cast(election_id, ballot, voting.voter())
    problem = assert_problem(response, 422, detail)
    assert problem["field"] == field
    assert await _log_length(voting) == before  # nothing half-written


async def test_a_client_election_needs_a_voter_id(voting: VotingClient) -> None:
    election_id = await voting.open_election()
    problem = assert_problem(
        await voting.cast(election_id, {"choice": "a"}), 422, "voter_id is required"
    )
    assert problem["field"] == "voter_id"


async def test_an_unknown_election_is_404(voting: VotingClient, http: httpx.AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await voting.cast(str(missing), {"choice": "a"}, "v")
    assert_problem(response, 404, f"there is no election with id {missing}")
    response = await http.get("/api/elections/not-a-uuid", headers=bearer(CLIENT))
    assert_problem(response, 404, "there is no election with id not-a-uuid")
    response = await http.post(f"/api/elections/{missing}/open", headers=bearer(ADMIN))
    assert_problem(response, 404, "there is no election")
    # An id that is no id is named within bounds, its control characters seen, not sent
    # on raw (a 20,000-character id was echoed whole, a NUL as a NUL).
    long = await http.get("/api/elections/" + "x" * 20_000, headers=bearer(CLIENT))
    detail = assert_problem(long, 404, "there is no election with id xxx")["detail"]
    assert detail == f"there is no election with id {'x' * 40}…"
    odd = await http.get("/api/elections/a%00b%1B%C3%A9", headers=bearer(CLIENT))
    detail = assert_problem(odd, 404, "there is no election with id")["detail"]
    assert detail == "there is no election with id a\\x00b\\x1bé"


async def test_an_unknown_route_is_a_404_problem(http: httpx.AsyncClient) -> None:
    """Starlette's "Not Found" told a client nothing it could act on (review: hostile
    client): the answer names the request and where the routes are listed."""
    assert_problem(
        await http.get("/api/nowhere"),
        404,
        "no route GET /api/nowhere: see /docs (or /openapi.json) for the API's routes",
    )
    long = await http.post("/api/" + "x" * 5000, headers=bearer(ADMIN))
    assert len(assert_problem(long, 404, "no route POST /api/xxx")["detail"]) < 300
    nul = await http.get("/api/no%00where")
    assert_problem(nul, 404, "no route GET /api/no\\x00where: see /docs")


async def test_a_trailing_slash_404_names_the_path_without_it(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    response = await http.get(f"/api/elections/{election_id}/ballots/", headers=bearer(CLIENT))
    assert_problem(
        response,
        404,
        f"no route GET /api/elections/{election_id}/ballots/: "
        f"/api/elections/{election_id}/ballots (without the trailing slash) is a route",
    )
    assert_problem(await http.get("/api/elections//"), 404, "/api/elections (without")
    assert_problem(await http.get("/api/nowhere/"), 404, "see /docs")
    # A path that is a route, with a method it does not take, is still a 405.
    wrong = await http.delete(f"/api/elections/{election_id}/ballots", headers=bearer(CLIENT))
    assert_problem(wrong, 405, "use POST")
    assert wrong.headers["allow"] == "POST"


async def test_a_second_ballot_where_revoting_is_off_is_409(voting: VotingClient) -> None:
    election_id = await voting.open_election(allow_revote=False)
    voter = voting.voter()
    assert (await voting.cast(election_id, {"choice": "a"}, voter)).status_code == 201
    before = await _log_length(voting)
    response = await voting.cast(election_id, {"choice": "b"}, voter)
    assert_problem(response, 409, "already cast a ballot, and this election does not allow")
    assert await _log_length(voting) == before


async def test_withdrawing_a_ballot_already_withdrawn_is_409_already_withdrawn(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """The ballot is in the log, withdrawn: not "Ballot not found" (404), which a client
    reads as "this voter never voted". Its own key again is a retry: the first receipt."""
    election_id = await voting.open_election()
    path = f"/api/elections/{election_id}/withdrawals"
    voter = voting.voter()
    assert (await voting.cast(election_id, {"choice": "a"}, voter)).status_code == 201
    keyed = {**bearer(CLIENT), "Idempotency-Key": "leave-1"}
    gone = await http.post(path, json={"voter_id": voter}, headers=keyed)
    assert gone.status_code == 200, gone.text
    before = await _log_length(voting)
    for headers in (bearer(CLIENT), {**bearer(CLIENT), "Idempotency-Key": "leave-2"}):
        again = await http.post(path, json={"voter_id": voter}, headers=headers)
        body = assert_problem(again, 409, "already withdrawn")
        assert (body["type"], body["title"]) == (
            "urn:cardinal-vote:problem:already-withdrawn",
            "Already withdrawn",
        )
    retry = await http.post(path, json={"voter_id": voter}, headers=keyed)
    assert retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json()["position"] == gone.json()["position"]
    assert await _log_length(voting) == before
    never = await http.post(path, json={"voter_id": voting.voter()}, headers=bearer(CLIENT))
    body = assert_problem(never, 404, "has not cast a ballot")
    assert body["type"] == "urn:cardinal-vote:problem:ballot-not-found"
    # And the voter may vote again: the withdrawn ballot is revised.
    assert (await voting.cast(election_id, {"choice": "b"}, voter)).status_code == 200


async def test_a_ballot_before_opening_or_after_closing_is_409(voting: VotingClient) -> None:
    draft = await voting.create_election()
    response = await voting.cast(draft["id"], {"choice": "a"}, voting.voter())
    assert_problem(response, 409, "has not opened yet")
    await voting.open(draft["id"])
    await voting.close(draft["id"])
    response = await voting.cast(draft["id"], {"choice": "a"}, voting.voter())
    assert_problem(response, 409, "the election is closed")


async def test_lifecycle_steps_out_of_order_are_409(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    draft = await voting.create_election()
    response = await http.post(f"/api/elections/{draft['id']}/close", headers=bearer(ADMIN))
    assert_problem(response, 409, "only an open election can be closed")
    await voting.open(draft["id"])
    response = await http.post(f"/api/elections/{draft['id']}/open", headers=bearer(ADMIN))
    assert_problem(response, 409, "only a draft election can be opened")


async def test_concurrent_revisions_of_one_ballot_are_409_for_all_but_one(
    voting: VotingClient,
) -> None:
    election_id = await voting.open_election(allow_revote=True)
    for _ in range(5):  # a race is needed; each round makes it near certain
        voter = voting.voter()
        assert (await voting.cast(election_id, {"choice": "a"}, voter)).status_code == 201
        results = await asyncio.gather(
            *(voting.cast(election_id, {"choice": c}, voter) for c in "bcbcbcbcbcbcbcbcbcbc")
        )
        conflicts = [r for r in results if r.status_code == 409]
        assert all(r.status_code in (200, 409) for r in results)
        if conflicts:
            assert_problem(conflicts[0], 409, "another change to this ballot was recorded")
            return
    pytest.fail("twenty concurrent revisions never raced in five rounds")


async def test_missing_or_unknown_credentials_are_401(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    response = await http.get("/api/elections")
    problem = assert_problem(response, 401, "send an Authorization: Bearer <token> header")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert problem["title"] == "Unauthorized"
    response = await http.get("/api/elections", headers=bearer("nobody-knows-me"))
    assert_problem(response, 401, "this token is not recognised")
    response = await http.get("/api/elections", headers={"Authorization": "Basic abc"})
    assert_problem(response, 401, "must be 'Bearer <token>'")


async def test_the_wrong_role_is_403(voting: VotingClient, http: httpx.AsyncClient) -> None:
    body = {"title": "x", "options": options("a", "b"), "method": "plurality"}
    response = await http.post("/api/elections", json=body, headers=bearer(CLIENT))
    assert_problem(response, 403, "the client role may not do this; it needs the admin role")
    election_id = await voting.open_election()
    response = await voting.cast(election_id, {"choice": "a"}, "v1", token=ADMIN)
    assert_problem(response, 403, "the admin role may not cast ballots")
    response = await http.get("/api/audit/events", headers=bearer(CLIENT))
    assert_problem(response, 403, "it needs the auditor role")


async def test_a_voter_token_not_issued_for_the_election_is_403(voting: VotingClient) -> None:
    election_id = await voting.open_election(eligibility="tokens")
    response = await voting.cast(election_id, {"choice": "a"}, token="cvt_made-up-token")
    assert_problem(response, 403, "this voter token was not issued for this election")
    response = await voting.cast(election_id, {"choice": "a"}, "v1", token=CLIENT)
    assert_problem(response, 403, "takes ballots only from voters holding a voter token")


async def test_a_voter_token_reads_only_the_election_it_was_issued_for(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    token_election, (token,) = await voting.token_election(tokens=1)
    for path in (f"/api/elections/{token_election}", f"/api/elections/{token_election}/results"):
        assert (await http.get(path, headers=bearer(token))).status_code == 200
        response = await http.get(path, headers=bearer("cvt_made-up-token"))
        assert_problem(response, 403, "this voter token was not issued for this election")
    client_election = await voting.open_election()
    for path in (f"/api/elections/{client_election}", f"/api/elections/{client_election}/results"):
        response = await http.get(path, headers=bearer(token))
        assert_problem(response, 403, "this voter token was not issued for this election")
    response = await http.get("/api/elections", headers=bearer(token))
    assert_problem(response, 403, "a voter token reads only the election it was issued for")


async def test_a_body_over_64_kib_is_413(voting: VotingClient, http: httpx.AsyncClient) -> None:
    election_id = await voting.open_election()
    huge = b'{"choice": "a", "voter_id": "' + b"x" * (65 * 1024) + b'"}'
    response = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=huge,
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "larger than 64 KiB")

    async def chunked() -> object:
        for _ in range(70):
            yield b"x" * 1024

    response = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=chunked(),  # type: ignore[arg-type]
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    assert_problem(response, 413, "larger than 64 KiB")


async def test_a_retry_with_the_same_idempotency_key_gets_the_first_response(
    voting: VotingClient,
) -> None:
    election_id = await voting.open_election(allow_revote=False)
    voter = voting.voter()
    first = await voting.cast(election_id, {"choice": "a"}, voter, idempotency_key="k-1")
    assert first.status_code == 201
    before = await _log_length(voting)
    retry = await voting.cast(election_id, {"choice": "a"}, voter, idempotency_key="k-1")
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert {k: v for k, v in retry.json().items() if k != "replayed"} == {
        k: v for k, v in first.json().items() if k != "replayed"
    }
    assert await _log_length(voting) == before
    reused = await voting.cast(election_id, {"choice": "b"}, voter, idempotency_key="k-1")
    problem = assert_problem(reused, 422, "already used for a different ballot")
    assert problem["field"] == "Idempotency-Key"
    other_key = await voting.cast(election_id, {"choice": "a"}, voter, idempotency_key="k-2")
    assert_problem(other_key, 409, "already cast a ballot")


async def test_bad_audit_paging_parameters_are_422(http: httpx.AsyncClient) -> None:
    response = await http.get("/api/audit/events", params={"limit": 0}, headers=bearer(AUDITOR))
    problem = assert_problem(response, 422, "limit must be from 1 to 1000")
    assert problem["field"] == "limit"
    response = await http.get("/api/audit/events", params={"after": "x"}, headers=bearer(AUDITOR))
    assert_problem(response, 422, "after must be a whole number")


async def test_each_kind_of_problem_has_a_stable_type(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """Every problem was "about:blank" with a custom title: a client could tell "Already
    voted" from "Election not open" only by English titles (and RFC 9457 wants an
    about:blank title to be the status phrase). Each kind now has its own type URI."""
    urn = "urn:cardinal-vote:problem:"
    election_id = await voting.open_election(allow_revote=False)
    voter = voting.voter()
    assert (await voting.cast(election_id, {"choice": "a"}, voter)).status_code == 201
    again = assert_problem(await voting.cast(election_id, {"choice": "b"}, voter), 409, "")
    assert (again["type"], again["title"]) == (urn + "already-voted", "Already voted")
    draft = await voting.create_election()
    closed = await http.post(f"/api/elections/{draft['id']}/close", headers=bearer(ADMIN))
    assert assert_problem(closed, 409, "")["type"] == urn + "invalid-transition"
    early = await voting.cast(draft["id"], {"choice": "a"}, voting.voter())
    assert assert_problem(early, 409, "")["type"] == urn + "election-not-open"
    missing = await voting.cast(str(uuid.uuid4()), {"choice": "a"}, "v")
    assert assert_problem(missing, 404, "")["type"] == urn + "election-not-found"
    bad = await voting.cast(election_id, {"choice": "zzz"}, voting.voter())
    assert assert_problem(bad, 422, "")["type"] == urn + "invalid-ballot"
    found = {
        (await http.get("/api/nowhere")).json()["type"],
        (await http.get("/api/elections")).json()["type"],
        (await http.post("/api/elections", json={}, headers=bearer(ADMIN))).json()["type"],
    }
    assert found == {urn + "not-found", urn + "unauthorized", urn + "invalid-request"}
    malformed = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=b"{",
        headers={**bearer(CLIENT), "Content-Type": "application/json"},
    )
    assert assert_problem(malformed, 400, "")["type"] == urn + "malformed-json"
