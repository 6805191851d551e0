"""A thin client for the v1 API, so that tests read as use cases."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.servers import ADMIN, AUDITOR, CLIENT

PROBLEM = "application/problem+json"

STALE_FOR = 30.0  # seconds a test waits for results to reach a position


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def options(*ids: str) -> list[dict[str, str]]:
    return [{"id": i, "label": f"Option {i.upper()}"} for i in ids]


def assert_problem(response: httpx.Response, status: int, detail_contains: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and an actionable detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert detail_contains in body["detail"], body["detail"]
    return body


class VotingClient:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def create_election(self, method: str = "plurality", **rules: Any) -> dict[str, Any]:
        body = {"title": f"Test {method}", "options": options("a", "b", "c"), "method": method}
        body.update(rules)
        response = await self.http.post("/api/elections", json=body, headers=bearer(ADMIN))
        assert response.status_code == 201, response.text
        election: dict[str, Any] = response.json()
        return election

    async def open(self, election_id: str) -> dict[str, Any]:
        response = await self.http.post(f"/api/elections/{election_id}/open", headers=bearer(ADMIN))
        assert response.status_code == 200, response.text
        opened: dict[str, Any] = response.json()
        return opened

    async def close(self, election_id: str) -> dict[str, Any]:
        response = await self.http.post(
            f"/api/elections/{election_id}/close", headers=bearer(ADMIN)
        )
        assert response.status_code == 200, response.text
        closed: dict[str, Any] = response.json()
        return closed

    async def open_election(self, method: str = "plurality", **rules: Any) -> str:
        election = await self.create_election(method, **rules)
        await self.open(election["id"])
        return str(election["id"])

    async def issue_tokens(self, election_id: str, count: int) -> list[str]:
        response = await self.http.post(
            f"/api/elections/{election_id}/tokens", json={"count": count}, headers=bearer(ADMIN)
        )
        assert response.status_code == 201, response.text
        tokens: list[str] = response.json()["tokens"]
        return tokens

    async def token_election(
        self, method: str = "plurality", tokens: int = 3, **rules: Any
    ) -> tuple[str, list[str]]:
        """A token election with its electorate issued while in draft, then opened."""
        election = await self.create_election(method, eligibility="tokens", **rules)
        issued = await self.issue_tokens(election["id"], tokens)
        await self.open(election["id"])
        return str(election["id"]), issued

    async def cast(
        self,
        election_id: str,
        ballot: dict[str, Any],
        voter_id: str | None = None,
        *,
        token: str = CLIENT,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        body = dict(ballot)
        if voter_id is not None:
            body["voter_id"] = voter_id
        headers = bearer(token)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await self.http.post(
            f"/api/elections/{election_id}/ballots", json=body, headers=headers
        )

    async def results(
        self, election_id: str, token: str = AUDITOR, min_position: int = 0
    ) -> httpx.Response:
        """Results as of ``min_position`` at least. The server waits up to 2 s for the
        projection, then answers what it has with a Warning; on a busy machine the
        projection can lag longer, so a stale answer is asked again (up to STALE_FOR)."""
        deadline = asyncio.get_running_loop().time() + STALE_FOR
        while True:
            response = await self.http.get(
                f"/api/elections/{election_id}/results",
                params={"min_position": min_position},
                headers=bearer(token),
            )
            stale = "warning" in response.headers
            if not stale or asyncio.get_running_loop().time() > deadline:
                return response

    async def audit_events(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            response = await self.http.get(
                "/api/audit/events",
                params={"after": after, "limit": limit},
                headers=bearer(AUDITOR),
            )
            assert response.status_code == 200, response.text
            page = response.json()
            events.extend(page["events"])
            if not page["events"]:
                return events
            after = page["next_after"]

    @staticmethod
    def voter() -> str:
        return f"voter-{uuid.uuid4().hex[:10]}"


async def every_election(
    http: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every election GET /api/elections lists (with these filters), following ``next``."""
    found: list[dict[str, Any]] = []
    response = await http.get("/api/elections", params=params, headers=headers)
    while True:
        assert response.status_code == 200, response.text
        page = response.json()
        found += page["elections"]
        if page["next"] is None:
            return found
        response = await http.get(page["next"], headers=headers)
