"""What every answer carries and what every request must be: security headers, no caching
of tokens, JSON bodies with unique keys, bounded numbers, and a 405 that names every method."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import ADMIN, AUDITOR, CLIENT, running_api, settings_for

SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def _assert_secure(response: httpx.Response) -> None:
    for name, value in SECURITY.items():
        assert response.headers.get(name) == value, (response.request.url, name)
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def test_every_answer_carries_the_security_headers(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    answers = [
        await http.get("/api/health"),
        await http.get("/api/elections", headers=bearer(ADMIN)),
        await http.get("/api/elections"),  # 401
        await http.get("/nowhere"),  # 404 from the router
        await http.delete("/api/elections"),  # 405
        await voting.cast(election_id, {"choice": "a"}, "hygiene"),  # the hot path
        await voting.cast(election_id, {"choice": "zz"}, "hygiene-2"),  # a refusal on it
        await http.get("/metrics"),
        await http.get("/openapi.json"),
    ]
    for response in answers:
        _assert_secure(response)
    assert "strict-transport-security" not in answers[0].headers  # not in development


async def test_production_answers_ask_for_https_only(database_url: str) -> None:
    settings = settings_for(database_url, env="production")
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        response = await http.get("/api/health")
    assert response.headers["strict-transport-security"].startswith("max-age=")
    _assert_secure(response)


async def test_answers_that_carry_tokens_are_never_stored(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election = await voting.create_election(eligibility="tokens")
    issued = await http.post(
        f"/api/elections/{election['id']}/tokens", json={"count": 3}, headers=bearer(ADMIN)
    )
    assert issued.status_code == 201
    assert issued.headers["cache-control"] == "no-store"
    # Sign-in and refresh: tests/integration/test_admin_login.py.


async def test_a_body_that_is_not_json_is_415(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    for kind in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = bearer(CLIENT)
        if kind is not None:
            headers["Content-Type"] = kind
        response = await http.post(
            f"/api/elections/{election_id}/ballots",
            content=b'{"choice": "a", "voter_id": "plain"}',
            headers=headers,
        )
        assert_problem(response, 415, "Content-Type: application/json")
    fine = await http.post(
        f"/api/elections/{election_id}/ballots",
        content=b'{"choice": "a", "voter_id": "plain"}',
        headers={**bearer(CLIENT), "Content-Type": "application/json; charset=utf-8"},
    )
    assert fine.status_code == 201, fine.text


async def test_duplicate_keys_are_refused(voting: VotingClient, http: httpx.AsyncClient) -> None:
    election_id = await voting.open_election()
    for body in (
        b'{"choice": "a", "choice": "b", "voter_id": "twice"}',
        b'{"voter_id": "twice", "scores": {"a": 1, "a": 2}}',
        b'{"voter_id": "tw\\ud800ice", "voter_id": "x"}',  # the lenient path too
    ):
        response = await http.post(
            f"/api/elections/{election_id}/ballots",
            content=body,
            headers={**bearer(CLIENT), "Content-Type": "application/json"},
        )
        assert_problem(response, 400, "duplicate key")
    assert len(await voting.audit_events()) > 0
    results = await voting.results(election_id)
    assert results.json()["ballots"] == 0


@pytest.mark.parametrize("path", ["/api/audit/events", "/api/audit/checkpoints"])
@pytest.mark.parametrize("value", ["18446744073709551616", "9223372036854775808", "1e3", " 5"])
async def test_every_integer_parameter_is_bounded(
    http: httpx.AsyncClient, path: str, value: str
) -> None:
    response = await http.get(path, params={"after": value}, headers=bearer(AUDITOR))
    problem = assert_problem(response, 422, "after must be")
    assert problem["field"] == "after"


async def test_out_of_range_positions_on_results_are_422(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    for name in ("at", "min_position"):
        response = await http.get(
            f"/api/elections/{election_id}/results",
            params={name: "18446744073709551616"},
            headers=bearer(AUDITOR),
        )
        assert_problem(response, 422, f"{name} must be from")
    largest = await http.get(
        "/api/audit/events", params={"after": str(2**63 - 1)}, headers=bearer(AUDITOR)
    )
    assert largest.status_code == 200
    assert largest.json()["events"] == []


async def test_a_method_a_path_does_not_take_is_405_naming_every_one_it_does(
    http: httpx.AsyncClient,
) -> None:
    response = await http.delete("/api/elections", headers=bearer(ADMIN))
    assert_problem(response, 405, "use GET, HEAD, POST")
    assert response.headers["allow"] == "GET, HEAD, POST"  # two routes share the path


async def test_a_status_filter_outside_the_lifecycle_is_422(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/api/elections", params={"status": "archived"}, headers=bearer(ADMIN)
    )
    assert_problem(response, 422, "status must be one of draft, open, closed")


async def test_an_unexpected_error_is_answered_with_the_security_headers() -> None:
    """A 500 off the ballot path came from Starlette's outermost error middleware, around
    the guard that adds the headers: no nosniff, no frame policy, no HSTS (review
    helper-38)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.routing import Route

    from api.middleware import RequestGuard
    from api.problems import HANDLERS

    async def boom(request: Request) -> None:
        raise RuntimeError("a bug")

    app = Starlette(
        routes=[Route("/boom", boom, methods=["GET", "POST"])],
        middleware=[Middleware(RequestGuard, max_bytes=1024, handlers=HANDLERS, production=True)],
        exception_handlers=HANDLERS,
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for response in (await client.get("/boom"), await client.post("/boom", json={})):
            assert_problem(response, 500, "unexpected error")
            _assert_secure(response)
            assert "strict-transport-security" in response.headers


async def test_a_trailing_slash_is_not_redirected(http: httpx.AsyncClient) -> None:
    """Starlette redirected /api/elections/ to an absolute URL built from the Host header
    (review helper-41)."""
    response = await http.get("/api/elections/", headers={"Host": "evil.example"})
    assert_problem(response, 404, "")
    assert "location" not in response.headers


async def test_a_query_parameter_given_twice_is_422(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """?at=1&at=2 used the last one, silently (review helper-41)."""
    election_id = await voting.open_election()
    response = await http.get(
        f"/api/elections/{election_id}/results?at=1&at=2", headers=bearer(AUDITOR)
    )
    assert_problem(response, 422, "given more than once")
    listing = await http.get("/api/elections?status=open&status=closed", headers=bearer(ADMIN))
    assert_problem(listing, 422, "given more than once")
