from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from api import recounts
from api.routes import streams
from infra.store.migrations import migrate
from tests.databases import create_database, drop_database
from tests.integration.client import VotingClient
from tests.servers import running_api, settings_for


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """This test run's own database, migrated."""
    url = create_database()
    migrate(url)
    yield url
    drop_database(url)


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    """An empty database, not migrated, for one test."""
    url = create_database("cardinal_fresh")
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
async def api_url(database_url: str) -> AsyncIterator[str]:
    async with running_api(settings_for(database_url)) as url:
        yield url


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        yield client


@pytest.fixture
def voting(http: httpx.AsyncClient) -> VotingClient:
    return VotingClient(http)


@pytest.fixture(autouse=True)
def every_election_in_the_overview(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overview shows at most OVERVIEW_LIMIT elections, the open ones first; this
    run's database holds the elections of every test before, hundreds of them open, so a
    test's closed election would be left out. Tests of the limit set their own."""
    monkeypatch.setattr(streams, "OVERVIEW_LIMIT", 1_000_000)


@pytest.fixture(autouse=True)
def recounts_do_not_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recounts for readers other than auditors and admins owe their turn a rest of
    REST_FACTOR times as long as they took, and past BURST seconds owed it starts none
    (api/recounts.py); the session's API serves every test, and a test's recounts would
    leave what they owe to the next one's ``?at=``. Tests of the rest set both themselves."""
    monkeypatch.setattr(recounts, "REST_FACTOR", 0.0)
    monkeypatch.setattr(recounts, "BURST", float("inf"))
