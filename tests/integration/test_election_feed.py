"""The API's election cache follows election events that other processes write: a backlog
longer than one page at start, then opens and closes as they are recorded, with ballots
in between skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from uuid import UUID

import pytest

from domain.application import VotingApplication
from domain.ballot import Ballot
from domain.election import ElectionStatus
from domain.ports import StoreUnavailable
from domain.rules import ElectionRules
from infra.store import open_application
from infra.store.election_feed import PAGE, ElectionFeed
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter

RULES = ElectionRules.create(
    options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}], method="plurality"
)


@pytest.fixture
async def writing(fresh_database_url: str) -> AsyncIterator[VotingApplication]:
    """An application that records (another API process, as the feed sees it)."""
    migrate(fresh_database_url)
    app = open_application(fresh_database_url)
    writer = GroupCommitWriter(app, fresh_database_url)
    app.writer = writer
    writer.start()
    try:
        yield app
    finally:
        await writer.stop()
        app.close()


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_the_feed_catches_up_a_long_backlog_then_follows(
    fresh_database_url: str, writing: VotingApplication
) -> None:
    created = await asyncio.gather(
        *(writing.create_election(f"e{n}", RULES) for n in range(PAGE + 50))
    )
    ids: list[UUID] = [receipt.id for receipt in created]
    await writing.open_election(ids[0])
    await writing.writer.append_events(
        [Ballot.first_cast(ids[0], "voter", {"choice": "a"}, None)], while_open=ids[0]
    )
    watching = open_application(fresh_database_url)
    # Polling once a minute: within the test's 10 s, only the writer's announcement of an
    # election's event (not a ballot's commit) can wake the feed.
    feed = ElectionFeed(watching, fresh_database_url, poll_interval=60)
    await feed.start()
    try:
        await _until(lambda: len(watching.elections) == len(ids), "the backlog was not caught up")
        assert watching.elections[ids[0]].status is ElectionStatus.OPEN
        assert watching.elections[ids[-1]].status is ElectionStatus.DRAFT
        for n in range(20):  # ballots alone: nothing for the feed
            await writing.writer.append_events(
                [Ballot.first_cast(ids[0], f"more-{n}", {"choice": "b"}, None)], while_open=ids[0]
            )
        await writing.open_election(ids[-1])
        await writing.close_election(ids[0])
        await _until(
            lambda: (
                watching.elections[ids[0]].status is ElectionStatus.CLOSED
                and watching.elections[ids[-1]].status is ElectionStatus.OPEN
            ),
            "the open and the close did not reach the feed",
        )
    finally:
        await feed.stop()
        watching.close()


async def test_a_started_feed_holds_every_election_already_recorded(
    fresh_database_url: str, writing: VotingApplication
) -> None:
    """A restarted API listed no elections until the feed's first scan ran: its start
    returned at once, and the server answered before the scan."""
    created = [await writing.create_election(f"e{n}", RULES) for n in range(3)]
    watching = open_application(fresh_database_url)
    feed = ElectionFeed(watching, fresh_database_url, poll_interval=60)
    await feed.start()
    try:
        assert set(watching.elections) == {receipt.id for receipt in created}
        await feed.complete()  # loaded: returns at once
    finally:
        await feed.stop()
        watching.close()


async def test_a_feed_that_cannot_load_answers_listings_with_503(
    fresh_database_url: str,
) -> None:
    """Where the store does not answer at start, a listing says so (503, retry) rather than
    answering that there is no election."""
    watching = open_application(fresh_database_url)
    feed = ElectionFeed(
        watching, "postgresql://127.0.0.1:1/none?connect_timeout=1", poll_interval=0.1
    )
    await feed.start(wait=0.2)
    try:
        assert not feed.loaded.is_set()
        with pytest.raises(StoreUnavailable, match="still being loaded"):
            await feed.complete()
    finally:
        await feed.stop()
        watching.close()
