"""An election has no schedule: it is opened and closed by POST .../open and .../close, at
once. A client that asks for a time is told so, and nothing changes (review: a close with
{"closes_at": ...} in 2030 closed the election there and then, for good)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import ADMIN, AUDITOR

LATER = "2030-01-01T00:00:00Z"


async def _status(http: httpx.AsyncClient, election_id: str) -> str:
    response = await http.get(f"/api/elections/{election_id}", headers=bearer(ADMIN))
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


async def _log_length(voting: VotingClient) -> int:
    return len(await voting.audit_events())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"json": {"closes_at": LATER}}, "closes_at"),
        ({"json": {"at": LATER, "reason": "end of day"}}, "at"),
        ({"data": {"closes_at": LATER}}, "closes_at"),  # a form, as curl -d sends it
        ({"json": [LATER]}, None),
        ({"content": b"null", "headers": {"Content-Type": "application/json"}}, None),
        ({"content": b'{"closes_at": ', "headers": {"Content-Type": "application/json"}}, None),
        ({"content": LATER.encode(), "headers": {"Content-Type": "text/plain"}}, None),
    ],
)
async def test_a_close_asked_for_later_is_refused_and_the_election_stays_open(
    voting: VotingClient, http: httpx.AsyncClient, body: dict[str, Any], field: str | None
) -> None:
    election_id = await voting.open_election()
    before = await _log_length(voting)
    headers = {**bearer(ADMIN), **body.pop("headers", {})}
    response = await http.post(f"/api/elections/{election_id}/close", headers=headers, **body)
    problem = assert_problem(response, 422, "closing cannot be scheduled")
    detail = problem["detail"]
    assert "closes the election at once" in detail, detail
    assert "call it at the moment voting should end" in detail, detail
    assert "Nothing was changed" in detail, detail
    if field is not None:
        assert detail.startswith(f"{field}"), detail
        assert problem["field"] == field
    else:
        assert "field" not in problem
    assert await _status(http, election_id) == "open"
    assert await _log_length(voting) == before
    # Asked at once, it closes.
    closed = await http.post(f"/api/elections/{election_id}/close", headers=bearer(ADMIN))
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed"


async def test_an_open_asked_for_later_is_refused_and_the_election_stays_a_draft(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election = await voting.create_election()
    before = await _log_length(voting)
    response = await http.post(
        f"/api/elections/{election['id']}/open",
        headers=bearer(ADMIN),
        json={"opens_at": LATER, "closes_at": LATER},
    )
    problem = assert_problem(response, 422, "opens_at, closes_at: opening cannot be scheduled")
    assert "opens the election at once" in problem["detail"]
    assert "call it at the moment voting should begin" in problem["detail"]
    assert problem["field"] == "opens_at"
    assert await _status(http, election["id"]) == "draft"
    assert await _log_length(voting) == before


async def test_open_and_close_take_no_body_or_an_empty_object(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """What the README, the CLI, the dashboards and the tests send (nothing), and {}."""
    bodies: list[dict[str, Any]] = [
        {},
        {"json": {}},
        {"content": b" {} ", "headers": {"Content-Type": "text/plain"}},
    ]
    for body in bodies:
        election = await voting.create_election()
        path = f"/api/elections/{election['id']}"
        headers = {**bearer(ADMIN), **body.pop("headers", {})}
        opened = await http.post(f"{path}/open", headers=headers, **body)
        assert opened.status_code == 200, opened.text
        assert opened.json()["status"] == "open"
        closed = await http.post(f"{path}/close", headers=headers, **body)
        assert closed.status_code == 200, closed.text
        assert closed.json()["status"] == "closed"


async def test_the_contract_says_open_and_close_act_at_once(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    for action in ("open", "close"):
        operation = document["paths"][f"/api/elections/{{election_id}}/{action}"]["post"]
        assert "at once" in operation["summary"]
        assert operation["requestBody"]["required"] is False
        assert "422" in operation["responses"]
    schema = document["components"]["schemas"]["AtOnce"]
    assert schema["additionalProperties"] is False
    assert schema["properties"] == {}
    assert "Nothing is scheduled" in schema["description"]


@pytest.mark.parametrize("name", ["opens_at", "closes_at", "starts_at", "ends_at", "deadline"])
async def test_an_election_created_with_a_time_is_told_how_to_open_and_close(
    http: httpx.AsyncClient, name: str
) -> None:
    body = {
        "title": "Scheduled",
        "method": "plurality",
        "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
        name: LATER,
    }
    response = await http.post("/api/elections", json=body, headers=bearer(ADMIN))
    problem = assert_problem(response, 422, f"{name}: Extra inputs are not permitted")
    assert "POST /api/elections/{id}/open and POST /api/elections/{id}/close" in (problem["detail"])
    assert problem["field"] == name
    # Any other unknown field is refused as before, with nothing added.
    body.pop(name)
    response = await http.post(
        "/api/elections", json={**body, "colour": "red"}, headers=bearer(ADMIN)
    )
    problem = assert_problem(response, 422, "colour: Extra inputs are not permitted")
    assert "schedule" not in problem["detail"]


async def test_results_at_a_time_are_told_at_is_a_log_position(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    response = await http.get(
        f"/api/elections/{election_id}/results",
        params={"at": "2026-12-06T20:23:00Z"},
        headers=bearer(AUDITOR),
    )
    problem = assert_problem(response, 422, "at must be a whole number")
    assert "at is a log position (the position in receipts and results" in problem["detail"]
    assert "not a time" in problem["detail"]
    assert problem["field"] == "at"
