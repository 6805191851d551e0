"""The API's election cache follows election events that other processes write: a backlog
longer than one page at start, then opens and closes as they are recorded, with ballots
in between skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from uuid import UUID

import pytest
from psycopg_pool import AsyncConnectionPool

from domain.application import VotingApplication
from domain.ballot import Ballot
from domain.election import ElectionStatus
from domain.errors import ElectionNotOpen, NotEligible
from domain.ports import StoreUnavailable
from domain.rules import ElectionRules
from domain.voter import Voter
from infra.store import open_application
from infra.store.election_feed import PAGE, ElectionFeed
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter

RULES = ElectionRules.create(
    options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}], method="plurality"
)
TOKEN_RULES = ElectionRules.create(
    options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
    method="plurality",
    eligibility="tokens",
    late_tokens=True,
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
                ids[0] in watching.closed  # (only closed ones are there)
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


async def test_ballots_to_a_draft_read_what_is_new_in_the_log_not_the_election(
    fresh_database_url: str, writing: VotingApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tokens are issued while an election is a draft, and every ballot to one this process
    saw as a draft read the whole election again (every token's digest) to learn of an
    open recorded by another process: any voter could make each request cost a read of the
    electorate, and its time told the electorate's size (the hostile review: 94 ms with
    100,000 tokens, 5 ms with 5). They share the token miss's floored catch-up instead: no
    election is read, and the open recorded through another process is still seen."""
    election_id = (await writing.create_election("draft", TOKEN_RULES)).id
    for issue in range(2):
        digests = [f"digest-{n}" for n in range(issue * 10_000, (issue + 1) * 10_000)]
        await writing.issue_voter_tokens(election_id, digests)
    watching = open_application(fresh_database_url)
    watching.writer = writing.writer
    reads = AsyncConnectionPool(fresh_database_url, min_size=1, max_size=2, open=False)
    await reads.open()
    feed = ElectionFeed(watching, fresh_database_url, poll_interval=60, reads=reads)
    await feed.start()
    whole_reads = 0
    load = writing.writer.load_election

    async def counted(election_id: UUID) -> object:
        nonlocal whole_reads
        whole_reads += 1
        return await load(election_id)

    monkeypatch.setattr(writing.writer, "load_election", counted)
    voters = [Voter(f"digest-{n}", f"ballot-of-{n}") for n in range(30)]
    try:
        assert watching.elections[election_id].status is ElectionStatus.DRAFT
        await feed.stop()  # the follower stopped: nothing but a sync brings news
        refused = await asyncio.gather(
            *(watching.cast_ballot(election_id, voter, {"choice": "a"}) for voter in voters),
            *(watching.withdraw_ballot(election_id, voter) for voter in voters),
            watching.cast_ballots(
                election_id, [(voter, {"choice": "a"}, None) for voter in voters]
            ),
            return_exceptions=True,
        )
        batch = refused.pop()
        assert isinstance(batch, list)
        assert all(isinstance(error, ElectionNotOpen) for error in [*refused, *batch]), refused
        for voter in voters[:3]:
            with pytest.raises(ElectionNotOpen):
                await watching.cast_ballot(election_id, voter, {"choice": "a"})
        assert whole_reads == 0
        await writing.open_election(election_id)  # through another process
        whole_reads = 0  # (the open's own)
        cast = await watching.cast_ballot(election_id, voters[0], {"choice": "a"})
        assert cast.version == 1
        (batch_cast,) = await watching.cast_ballots(
            election_id, [(voters[1], {"choice": "b"}, None)]
        )
        assert not isinstance(batch_cast, Exception), batch_cast
        assert whole_reads == 0
        assert watching.elections[election_id].status is ElectionStatus.OPEN
    finally:
        await feed.stop()
        await reads.close()
        watching.close()


async def test_a_voter_token_miss_reads_what_is_new_in_the_log_not_the_election(
    fresh_database_url: str, writing: VotingApplication, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token the cache lacks was looked for by reading its whole election again: a
    made-up token's sender cost the server a read of the electorate (a million digests)
    ten times a second per election, and the wait told the electorate's size (the merge
    review). The feed's catch-up reads what is new instead: a token issued through
    another process a moment ago is found, and no election is read for a miss."""
    election_id = (await writing.create_election("tokens", TOKEN_RULES)).id
    for batch in range(2):
        digests = [f"digest-{batch}-{n}" for n in range(10_000)]
        await writing.issue_voter_tokens(election_id, digests)
    await writing.open_election(election_id)
    watching = open_application(fresh_database_url)
    watching.writer = writing.writer
    reads = AsyncConnectionPool(fresh_database_url, min_size=1, max_size=2, open=False)
    await reads.open()
    # Polling once a minute, and the follower's wake-ups left out: only a sync can find it.
    feed = ElectionFeed(watching, fresh_database_url, poll_interval=60, reads=reads)
    await feed.start()
    whole_reads = 0
    load = writing.writer.load_election

    async def counted(election_id: UUID) -> object:
        nonlocal whole_reads
        whole_reads += 1
        return await load(election_id)

    monkeypatch.setattr(writing.writer, "load_election", counted)
    try:
        assert watching.elections[election_id].status is ElectionStatus.OPEN
        await feed.stop()  # the follower stopped: nothing but a sync brings news
        await writing.issue_voter_tokens(election_id, ["issued-a-moment-ago"])
        whole_reads = 0  # (the issue's own)
        found = await watching.token_holder_election(election_id, "issued-a-moment-ago")
        assert "issued-a-moment-ago" in found.voter_keys
        for n in range(5):
            with pytest.raises(NotEligible):
                await watching.token_holder_election(election_id, f"made-up-{n}")
        assert whole_reads == 0
    finally:
        await feed.stop()
        await reads.close()
        watching.close()
