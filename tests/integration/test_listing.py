"""GET /api/elections a page at a time, and the overview bounded: the listing and the
overview held every election in one answer (2,000 elections of 20 options: 8 MB)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.routes import streams
from infra.store.migrations import migrate
from tests.integration.client import VotingClient, assert_problem, bearer, every_election
from tests.servers import ADMIN, CLIENT, running_api, settings_for


@pytest.fixture
async def alone(fresh_database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An API of its own on an empty database: the listing holds this test's elections
    only."""
    migrate(fresh_database_url)
    async with (
        running_api(settings_for(fresh_database_url)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield http


async def _create(http: httpx.AsyncClient, count: int, **rules: Any) -> list[str]:
    """``count`` elections, one after another (creation order is the listing's)."""
    voting = VotingClient(http)
    return [str((await voting.create_election(**rules))["id"]) for _ in range(count)]


async def _page(http: httpx.AsyncClient, url: str, **params: Any) -> dict[str, Any]:
    response = await http.get(url, params=params or None, headers=bearer(CLIENT))
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    if document["next"] is None:
        assert "link" not in response.headers
    else:
        assert response.headers["link"] == f'<{document["next"]}>; rel="next"'
    return document


def _ids(document: dict[str, Any]) -> list[str]:
    return [e["id"] for e in document["elections"]]


async def test_the_listing_comes_a_page_at_a_time_oldest_first(
    alone: httpx.AsyncClient,
) -> None:
    created = await _create(alone, 5)
    first = await _page(alone, "/api/elections", limit=2)
    assert _ids(first) == created[:2]
    assert first["next"].startswith("/api/elections?")
    assert "limit=2" in first["next"]
    second = await _page(alone, first["next"])
    assert _ids(second) == created[2:4]
    last = await _page(alone, second["next"])
    assert _ids(last) == created[4:]
    assert last["next"] is None
    # One page holds them all: no next.
    whole = await _page(alone, "/api/elections", limit=5)
    assert _ids(whole) == created
    assert whole["next"] is None


async def test_a_listing_without_a_limit_has_a_hundred_a_page(alone: httpx.AsyncClient) -> None:
    voting = VotingClient(alone)
    for _ in range(0, 101, 20):  # 120, a few at a time
        await asyncio.gather(*(voting.create_election() for _ in range(20)))
    first = await _page(alone, "/api/elections")
    assert len(first["elections"]) == 100
    assert "limit=100" in first["next"]
    second = await _page(alone, first["next"])
    assert len(second["elections"]) == 20
    assert second["next"] is None
    assert len(set(_ids(first)) | set(_ids(second))) == 120


async def test_a_status_filter_pages_through_its_elections_only_and_keeps_them_in_order(
    alone: httpx.AsyncClient,
) -> None:
    voting = VotingClient(alone)
    opened = []
    for _ in range(5):
        await _create(alone, 1)  # a draft between each two open ones
        opened.append(await voting.open_election())
    first = await _page(alone, "/api/elections", status="open", limit=2)
    assert _ids(first) == opened[:2]
    assert "status=open" in first["next"]
    # An election of the first page closes, one left as a draft opens: an offset would now
    # skip the third open election; the cursor stands where the first page ended.
    await voting.close(opened[0])
    draft = next(
        e for e in (await _page(alone, "/api/elections"))["elections"] if e["status"] == "draft"
    )
    await voting.open(draft["id"])
    second = await _page(alone, first["next"])
    assert _ids(second) == opened[2:4]
    third = await _page(alone, second["next"])
    assert _ids(third) == opened[4:]
    assert third["next"] is None
    assert all(e["status"] == "open" for e in second["elections"] + third["elections"])
    closed = await _page(alone, "/api/elections", status="closed", limit=1)
    assert _ids(closed) == opened[:1]
    assert closed["next"] is None


async def test_elections_created_while_a_client_pages_neither_skip_nor_repeat_older_ones(
    alone: httpx.AsyncClient,
) -> None:
    before = await _create(alone, 7)
    seen: list[str] = []
    url: str | None = "/api/elections?limit=2"
    while url is not None:
        # Each page is read while another election is being created (one a page, of two:
        # the listing gains on them, and ends).
        document, _ = await asyncio.gather(_page(alone, url), _create(alone, 1))
        seen += _ids(document)
        url = document["next"]
        if len(seen) > 100:
            break
    assert len(seen) == len(set(seen)), "an election was listed twice"
    assert [i for i in seen if i in before] == before
    assert seen[: len(before)] == before
    # The listing ends: the ones created meanwhile are newer, and come after.
    assert len(seen) < 100


async def test_a_helper_following_next_finds_every_election(alone: httpx.AsyncClient) -> None:
    created = await _create(alone, 3)
    listed = await every_election(alone, bearer(ADMIN), limit=1)
    assert [e["id"] for e in listed] == created


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"limit": "0"}, "limit must be from 1 to 1000; got 0"),
        ({"limit": "1001"}, "limit must be from 1 to 1000; got 1001"),
        ({"limit": "ten"}, "limit must be a whole number; got 'ten'"),
        ({"limit": ""}, "limit must be a whole number"),
        ({"after": "the-third-page"}, "after is not a cursor from a listing"),
        ({"after": ""}, "after is not a cursor from a listing"),
        ({"after": uuid.uuid4().hex}, "after names no election this API knows"),
        ({"after": str(uuid.uuid4())}, "after is not a cursor from a listing"),
    ],
)
async def test_a_bad_limit_or_cursor_is_422_saying_what_to_send(
    http: httpx.AsyncClient, params: dict[str, str], detail: str
) -> None:
    response = await http.get("/api/elections", params=params, headers=bearer(ADMIN))
    body = assert_problem(response, 422, detail)
    assert body.get("field") == next(iter(params)) or next(iter(params)) in body["detail"]
    if "after" in params:
        assert "next link" in body["detail"]


async def test_the_overview_shows_open_elections_first_then_the_newest_and_counts_the_rest(
    alone: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "OVERVIEW_LIMIT", 3)
    voting = VotingClient(alone)
    oldest_open = await voting.open_election(public_results=True)
    drafts = await _create(alone, 3, public_results=True)
    newest_open = await voting.open_election()
    private_draft = (await voting.create_election())["id"]
    panel = await alone.get("/overview/panel", headers=bearer(ADMIN))
    assert panel.status_code == 200, panel.text
    html = panel.text
    order = [newest_open, oldest_open, private_draft]
    assert [html.index(f'data-election="{i}"') for i in order] == sorted(
        html.index(f'data-election="{i}"') for i in order
    )
    assert not any(f'data-election="{i}"' in html for i in drafts)
    assert (
        '<p id="more">3 more elections are not shown here: <a href="/api/elections" '
        'data-json="elections.json">' in html
    )
    # Without a token: the public ones only, and no link a token would be needed for.
    public = await alone.get("/overview/panel")
    assert public.status_code == 200, public.text
    shown = sorted(
        (public.text.index(f'data-election="{i}"'), i)
        for i in (oldest_open, *drafts)
        if f'data-election="{i}"' in public.text
    )
    assert [i for _, i in shown] == [oldest_open, drafts[2], drafts[1]]
    assert "1 more election with public results is not shown here." in public.text
    assert "/api/elections" not in public.text


async def test_the_overview_stream_document_is_bounded_too(
    alone: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "OVERVIEW_LIMIT", 2)
    created = await _create(alone, 3)
    async with alone.stream(
        "GET", "/api/elections/stream", headers=bearer(ADMIN), timeout=10
    ) as response:
        assert response.status_code == 200
        data = None
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                break
    assert data is not None
    document = json.loads(data)
    assert [e["id"] for e in document["elections"]] == created[:0:-1]
    assert document["more"] == 1
    assert document["listing"] == "/api/elections"
