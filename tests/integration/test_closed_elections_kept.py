"""Closed elections held in memory are bounded (CLOSED_ELECTIONS_CACHED): an API process
held every election it ever saw, each with its electorate, so a long-lived deployment that
ran many elections grew without bound (the soak review). One dropped for room is read from
the store again on its next use, and every answer stays the same: results, listings and
their cursors, replays of retries after the close, voter token checks, the overview. A
token election is never dropped (a token's check must not read the store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any
from uuid import UUID

import httpx
import pytest

from api.routes import streams
from domain.application import VotingApplication
from domain.election import Election
from infra.store import open_application
from infra.store.migrations import migrate
from tests.integration.client import VotingClient, bearer
from tests.servers import ADMIN, AUDITOR, running_api, settings_for

KEPT = 2  # closed elections the bounded process keeps
CLOSED = 6  # more than it keeps


@pytest.fixture
async def two_apis(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, VotingApplication, httpx.AsyncClient]]:
    """Two API processes on one database: one keeping KEPT closed elections (its client
    and application), and one with the default bound, whose answers are the reference."""
    migrate(fresh_database_url)
    apps: list[VotingApplication] = []

    def recorded(url: str) -> VotingApplication:
        apps.append(open_application(url))
        return apps[-1]

    monkeypatch.setattr("infra.runtime.bootstrap.open_application", recorded)
    async with AsyncExitStack() as stack:
        reference_url = await stack.enter_async_context(
            running_api(settings_for(fresh_database_url))
        )
        bounded_url = await stack.enter_async_context(
            running_api(
                settings_for(fresh_database_url, closed_elections_cached=KEPT), projections=()
            )
        )
        bounded = await stack.enter_async_context(httpx.AsyncClient(base_url=bounded_url))
        reference = await stack.enter_async_context(httpx.AsyncClient(base_url=reference_url))
        assert [app.closed_cached for app in apps] == [1000, KEPT]
        yield bounded, apps[1], reference


def _closed_held(app: VotingApplication) -> int:
    """The closed elections the application holds (before the bound: all, with the open)."""
    held = list(app.elections.values()) + list(getattr(app, "closed", {}).values())
    return sum(1 for e in held if e.status.value == "closed")


async def _walk(http: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every page of the listing, following next, as answered."""
    pages = []
    response = await http.get("/api/elections", params=params, headers=bearer(ADMIN))
    while True:
        assert response.status_code == 200, response.text
        pages.append(response.json())
        if pages[-1]["next"] is None:
            return pages
        response = await http.get(pages[-1]["next"], headers=bearer(ADMIN))


async def test_closed_elections_past_the_bound_are_dropped_and_answer_the_same(
    two_apis: tuple[httpx.AsyncClient, VotingApplication, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bounded, app, reference = two_apis
    voting = VotingClient(bounded)
    ballot = {"choice": "a"}
    made: list[tuple[str, dict[str, Any]]] = []
    for n in range(CLOSED):
        election_id = await voting.open_election(public_results=n % 2 == 0)
        cast = await voting.cast(election_id, ballot, "v1", idempotency_key="k")
        assert cast.status_code == 201, cast.text
        closed = await voting.close(election_id)
        # Its retry after the close, answered while the election is held: its receipt.
        retried = await voting.cast(election_id, ballot, "v1", idempotency_key="k")
        assert retried.status_code in (200, 201), retried.text
        tallied = await VotingClient(reference).results(
            election_id, min_position=closed["position"]
        )
        assert tallied.status_code == 200, tallied.text
        made.append((election_id, retried.json()))
    # A token election is kept closed or not: a token's check never reads the store.
    with_tokens, tokens = await voting.token_election(tokens=2)
    await voting.close(with_tokens)
    still_open = await voting.open_election()
    created = await voting.create_election()
    draft, head = created["id"], created["position"]  # the last entry of the log

    # Bounded: the open and the draft election are held, and KEPT of the closed ones;
    # every election is still known (listed).
    assert _closed_held(app) <= KEPT + 1
    assert {UUID(still_open), UUID(draft), UUID(with_tokens)} <= set(app.elections)
    assert len(app.known) == CLOSED + 3

    loads: list[UUID] = []
    load = app.writer.load_election

    async def counted(election_id: UUID) -> Election | None:
        loads.append(election_id)
        return await load(election_id)

    app.writer.load_election = counted  # type: ignore[method-assign]

    # Each closed election in turn, oldest first: with KEPT held, each was dropped for
    # room by the time it is asked again, and is read from the store.
    for _ in range(2):
        for election_id, receipt in made:
            # As the reference answers it now (its position is the tally's, and the chain's
            # checkpoint after the close comes later: not as answered at the close).
            assert (await _results(bounded, election_id, head)) == await _results(
                reference, election_id, head
            )
            retried = await voting.cast(election_id, ballot, "v1", idempotency_key="k")
            assert retried.json() == receipt
            for token in (tokens[0], "cvt_" + "x" * 32):  # (not this election's)
                mine = await bounded.get(f"/api/elections/{election_id}", headers=bearer(token))
                theirs = await reference.get(f"/api/elections/{election_id}", headers=bearer(token))
                assert (mine.status_code, mine.json()) == (theirs.status_code, theirs.json())
            for token in (tokens[0], tokens[1], "cvt_" + "x" * 32):
                mine = await bounded.get(f"/api/elections/{with_tokens}", headers=bearer(token))
                theirs = await reference.get(f"/api/elections/{with_tokens}", headers=bearer(token))
                assert (mine.status_code, mine.json()) == (theirs.status_code, theirs.json())
            assert _closed_held(app) <= KEPT + 1
    assert set(loads) == {UUID(election_id) for election_id, _ in made}
    assert {UUID(still_open), UUID(draft), UUID(with_tokens)}.isdisjoint(loads)

    # The listing, a page at a time, with its cursors, and by status: as the reference
    # answers it, every election in creation order.
    for params in ({"limit": 1}, {"limit": 2}, {"limit": 3, "status": "closed"}, {}):
        assert await _walk(bounded, **params) == await _walk(reference, **params)
    listed = [e["id"] for page in await _walk(bounded, limit=2) for e in page["elections"]]
    assert listed == [election_id for election_id, _ in made] + [with_tokens, still_open, draft]
    # The overview, for a role and for the public.
    for headers in (bearer(ADMIN), {}):
        mine = await bounded.get("/overview/panel", headers=headers)
        theirs = await reference.get("/overview/panel", headers=headers)
        assert (mine.status_code, mine.text) == (theirs.status_code, theirs.text)
    assert _closed_held(app) <= KEPT + 1
    assert len(app.known) == CLOSED + 3

    # A listing of open or draft elections reads no closed one dropped for room, and the
    # overview reads only those it shows (it read every election for each document).
    loads.clear()
    for status in ("open", "draft"):
        assert await _walk(bounded, status=status) == await _walk(reference, status=status)
    assert loads == []
    monkeypatch.setattr(streams, "OVERVIEW_LIMIT", 3)
    for headers in (bearer(ADMIN), {}):
        loads.clear()
        mine = await bounded.get("/overview/panel", headers=headers)
        theirs = await reference.get("/overview/panel", headers=headers)
        assert (mine.status_code, mine.text) == (theirs.status_code, theirs.text)
        assert len(loads) <= 3
        assert all(str(election_id) in mine.text for election_id in loads)
    assert _closed_held(app) <= KEPT + 1


async def _results(http: httpx.AsyncClient, election_id: str, head: int) -> dict[str, Any]:
    """The results, counted up to the log's last entry (the tally's position is the
    document's: two reads compared are of one position)."""
    response = await VotingClient(http).results(election_id, AUDITOR, min_position=head)
    assert response.status_code == 200, response.text
    assert "warning" not in response.headers
    document: dict[str, Any] = response.json()
    return document
