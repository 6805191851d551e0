"""A dashboard page opened while the event store is out is the dashboards' error page, not
raw problem+json: RequestGuard cuts a read waiting on a store marked down, and its cut
answered every path with a problem document (the browser review of the dashboards, 1).
On a PostgreSQL cluster of the module's own, frozen and thawed."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.store.migrations import migrate
from tests.integration.client import VotingClient, bearer
from tests.pg_cluster import Cluster
from tests.servers import AUDITOR, running_api, settings_for

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(Path(tempfile.mkdtemp(prefix="cardinal-outage-pages-"))) as own:
        yield own


async def test_a_page_opened_while_the_store_is_down_is_the_html_error_page(
    cluster: Cluster,
) -> None:
    url = cluster.create_database("outage_pages")
    migrate(url)
    async with (
        running_api(settings_for(url), projections=("tally",)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election(public_results=True)
        assert (await voting.cast(election_id, {"choice": "a"}, "first")).status_code == 201
        await asyncio.to_thread(cluster.freeze)
        try:
            # A ballot's commit the frozen store holds: the writer marks the store down.
            in_flight = asyncio.create_task(voting.cast(election_id, {"choice": "b"}, "w"))
            frozen = time.monotonic()
            while (await http.get("/api/health")).json()["checks"]["store"] == "ok":
                assert time.monotonic() - frozen < 8, "the freeze was not seen"
                await asyncio.sleep(0.1)
            page = await http.get(f"/elections/{election_id}", headers=BROWSER)
            overview = await http.get("/", headers=BROWSER)
            scripted = await http.get(f"/elections/{election_id}")  # (no text/html)
            api = await http.get(
                f"/api/elections/{election_id}/results", headers={**BROWSER, **bearer(AUDITOR)}
            )
        finally:
            await asyncio.to_thread(cluster.freeze, True)
        await in_flight
        back = await http.get(f"/elections/{election_id}", headers=BROWSER)
    for answer in (page, overview):
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"].startswith("text/html"), answer.headers
        assert answer.headers["retry-after"] == "5"
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert 'data-kind="error"' in answer.text
        assert 'id="error" data-status="503"' in answer.text
        assert "Try again in 5 s." in answer.text
        assert "<title>Event store unavailable" in answer.text
    for answer in (scripted, api):  # not a page asked for by a browser: the problem
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "5"
    assert back.status_code == 200, back.text
