"""While the event store is down or slow, every ballot is answered fast and honestly:
refused with 503 (and then certainly not recorded), or recorded. On a PostgreSQL cluster
of the module's own, stopped and started again."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest
from eventsourcing import persistence
from psycopg_pool import PoolTimeout

from api import middleware
from api.ratelimit import BALLOT_UNCHECKED
from domain.ballot import Ballot, ballot_id
from domain.ports import Recorded, StoreUnavailable
from infra.metrics import BALLOTS_REFUSED
from infra.runtime.bootstrap import _pool
from infra.store import open_application
from infra.store.migrations import migrate
from infra.store.names import connection_name
from infra.store.ratelimit import (
    CHECK_WAIT,
    GIVE_BACK_WITHIN,
    STOP_WITHIN,
    Decision,
    LimiterUnavailable,
    Quota,
    SharedRateLimiter,
)
from infra.store.writer import (
    KEYED_NOT_RECORDED,
    LOOKUP_RETRIES,
    NOT_RECORDED,
    OUTCOME_WITHIN,
    GroupCommitWriter,
)
from tests.cut_as_lent import Conn, CutAsLent
from tests.integration.client import VotingClient, bearer, options
from tests.pg_cluster import Cluster
from tests.servers import ADMIN, AUDITOR, CLIENT, running_api, settings_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(Path(tempfile.mkdtemp(prefix="cardinal-outage-"))) as own:
        yield own


@pytest.fixture
def url(cluster: Cluster) -> Iterator[str]:
    database = cluster.create_database(f"outage_{uuid4().hex[:8]}")
    migrate(database)
    yield database
    if not (cluster.data / "postmaster.pid").exists():  # a failed test left it stopped
        cluster.start()


@pytest.fixture
async def writer(url: str) -> AsyncIterator[GroupCommitWriter]:
    app = open_application(url)
    writer = GroupCommitWriter(app, url, answer_within=1.0)
    writer.start()
    try:
        yield writer
    finally:
        await writer.stop()
        app.close()


def _ballot(election: UUID, voter: str) -> list[Ballot.Cast]:
    return [Ballot.first_cast(election, voter, {"choice": "a"}, None)]


def _up(writer: GroupCommitWriter) -> bool:
    return writer.health.up


def _waiting_for_a_lock(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return row is not None and int(row[0]) > 0


def _casts(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM cardinal_events").fetchone()
    assert row is not None
    return int(row[0])


async def _timed(
    writer: GroupCommitWriter, election: UUID, voter: str
) -> tuple[Recorded | BaseException, float]:
    started = time.monotonic()
    try:
        outcome: Recorded | BaseException = await writer.append_events(_ballot(election, voter))
    except Exception as error:
        outcome = error
    return outcome, time.monotonic() - started


async def test_while_the_store_is_down_appends_are_refused_fast_and_none_is_recorded(
    cluster: Cluster, url: str, writer: GroupCommitWriter
) -> None:
    election = uuid4()
    await writer.append_events(_ballot(election, "before"))
    # A session holds the table lock, so the next batch waits in LOCK and the rest queue.
    blocker = psycopg.connect(url, autocommit=True)
    blocker.execute("BEGIN; LOCK TABLE cardinal_events IN EXCLUSIVE MODE")
    # One append first, until its batch (of one) waits for the lock; the rest then queue.
    tasks = [asyncio.create_task(_timed(writer, election, "v0"))]
    deadline = time.monotonic() + 5
    while not _waiting_for_a_lock(url):
        assert time.monotonic() < deadline, "the first batch never waited for the lock"
        await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(_timed(writer, election, f"v{n}")) for n in range(1, 200)]
    await asyncio.sleep(0.3)
    stopped = time.monotonic()
    await asyncio.to_thread(cluster.stop, "fast")  # ends every session, the blocker's too
    results = await asyncio.gather(*tasks)
    answered = time.monotonic()
    late = [await _timed(writer, election, f"late{n}") for n in range(20)]
    blocker.close()

    # The batch waiting in LOCK (v0 alone) may still commit: the shutdown ends the blocker's
    # session, and the lock can reach the batch before the shutdown reaches the writer's
    # backend (which then answers before it goes); on a busy machine the signal can come
    # later still, after the next batch (the queue behind v0) committed too. Such appends
    # are answered Recorded and are in the log; every other one is refused, and leaves
    # nothing (counted below).
    committed = [o for o, _ in results if isinstance(o, Recorded)]
    refused = [o for o, _ in results + late if not isinstance(o, Recorded)]
    assert all(isinstance(o, StoreUnavailable) for o in refused), {
        type(o).__name__ for o in refused
    }
    assert all(isinstance(o, StoreUnavailable) for o, _ in late)
    assert answered - stopped < 2.0  # the queue was refused, not tried batch after batch
    assert max(seconds for _, seconds in late) < 0.5  # refused at the door, not after a try
    assert not _up(writer)
    await asyncio.to_thread(cluster.start)
    deadline = time.monotonic() + 5
    while not _up(writer):  # the writer finds out by itself
        assert time.monotonic() < deadline, "the writer did not see the store come back"
        await asyncio.sleep(0.05)
    recorded = await writer.append_events(_ballot(election, "after"))
    assert recorded.position > 0
    # "before", "after" and what was answered Recorded: every refused append left nothing
    assert _casts(url) == 2 + len(committed)


async def test_an_append_still_queued_at_its_deadline_is_withdrawn_never_recorded(
    url: str, writer: GroupCommitWriter
) -> None:
    election = uuid4()
    await writer.append_events(_ballot(election, "warm-up"))
    blocker = psycopg.connect(url, autocommit=True)
    blocker.execute("BEGIN; LOCK TABLE cardinal_events IN EXCLUSIVE MODE")
    first = asyncio.create_task(_timed(writer, election, "in-flight"))
    deadline = time.monotonic() + 10
    while not await asyncio.to_thread(_waiting_for_a_lock, url):  # taken into a batch
        assert time.monotonic() < deadline, "the first batch never waited for the lock"
        await asyncio.sleep(0.01)
    queued = [asyncio.create_task(_timed(writer, election, f"q{n}")) for n in range(50)]
    cancelled = asyncio.create_task(writer.append_events(_ballot(election, "gone")))
    # The bulk path's appends: queued together, one deadline, withdrawn together.
    grouped = asyncio.create_task(
        writer.append_each([_ballot(election, f"g{n}") for n in range(20)])
    )
    cancelled_group = asyncio.create_task(
        writer.append_each([_ballot(election, f"cg{n}") for n in range(5)])
    )
    await asyncio.sleep(0.1)
    cancelled.cancel()
    cancelled_group.cancel()
    refused = await asyncio.gather(*queued)
    grouped_outcomes = await grouped
    blocker.execute("COMMIT")  # the batch in flight may commit now
    (outcome, _) = await first
    blocker.close()

    assert all(isinstance(o, StoreUnavailable) for o, _ in refused)
    assert all(0.9 < seconds < 3.0 for _, seconds in refused)  # answer_within is 1 s
    # (unguarded, these appends are a change's to the writer: CHANGE_TOO_SLOW's words)
    assert "it was not made" in str(refused[0][0])
    assert all(isinstance(o, StoreUnavailable) for o in grouped_outcomes)
    assert cancelled_group.cancelled()
    assert isinstance(outcome, Recorded)  # in a batch already: answered by its commit
    await writer.append_events(_ballot(election, "after"))
    assert _casts(url) == 3  # warm-up, the one in flight, after; no queued nor cancelled
    assert writer.queued == 0


async def test_a_scrape_with_the_store_away_says_the_api_cannot_reach_it(
    cluster: Cluster, url: str
) -> None:
    """The API's cardinal_database_connected stayed 1 through an outage: a scrape that got
    no connection in time (PoolTimeout) set nothing (observability review), and
    CardinalDatabaseDown saw every API process connected."""
    line = 'cardinal_database_connected{component="api"}'

    async def scraped() -> str:
        got = await http.get("/metrics")
        assert got.status_code == 200, got.text
        return next(row for row in got.text.splitlines() if row.startswith(line))

    settings = settings_for(url)
    async with (
        running_api(settings, projections=()) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        assert await scraped() == f"{line} 1.0"
        await asyncio.to_thread(cluster.stop, "fast")
        try:
            away = await scraped()
        finally:
            await asyncio.to_thread(cluster.start)
        assert away == f"{line} 0.0"
        deadline = time.monotonic() + 10
        while (back := await scraped()) != f"{line} 1.0":
            assert time.monotonic() < deadline, back
            await asyncio.sleep(0.2)


async def test_ballots_and_results_over_http_are_503_within_a_second_while_down(
    cluster: Cluster, url: str
) -> None:
    settings = settings_for(url)
    async with (
        running_api(settings, projections=("tally",)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        cast = await voting.cast(election_id, {"voter_id": "first", "choice": "a"})
        assert cast.status_code == 201, cast.text
        await asyncio.to_thread(cluster.stop, "fast")
        answers = []
        for n in range(5):
            started = time.monotonic()
            ballot = await http.post(
                f"/api/elections/{election_id}/ballots",
                json={"voter_id": f"down-{n}", "choice": "a"},
                headers=bearer(CLIENT),
            )
            results = await http.get(
                f"/api/elections/{election_id}/results", headers=bearer(AUDITOR)
            )
            answers.append((ballot, results, time.monotonic() - started))
        unready = await http.get("/api/ready")
        await asyncio.to_thread(cluster.start)
        assert unready.status_code == 503, unready.text
        assert unready.headers["Retry-After"] == "2"  # as every 503 (review exhaust L3)
        assert unready.json()["checks"]["database"].startswith("unreachable")
        for ballot, results, seconds in answers:
            assert ballot.status_code == 503, ballot.text
            assert ballot.headers["content-type"] == "application/problem+json"
            assert int(ballot.headers["retry-after"]) > 0
            assert results.status_code == 503, results.text
            assert seconds < 2.0  # both answers, together
        deadline = time.monotonic() + 10
        while True:  # the service recovers by itself
            again = await voting.cast(election_id, {"voter_id": "after", "choice": "a"})
            if again.status_code == 201:
                break
            assert again.status_code == 503, again.text
            assert time.monotonic() < deadline, "ballots still refused 10 s after the return"
            await asyncio.sleep(0.2)
    assert _casts(url) == 4  # created, opened, "first", "after": no refused ballot recorded


async def test_a_frozen_store_costs_clients_a_503_not_a_wait_as_long_as_the_freeze(
    cluster: Cluster, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL stopped with SIGSTOP (or cut off without a reset) answers nothing, and
    the kernel still acknowledges what is sent: reads hung for as long as the freeze, and
    ballots got their 503 only at their 5 s deadline, while /api/health said the store was
    ok (review helper-28). The ballot whose commit is under way waits for the store's
    answer, this freeze being shorter than OUTCOME_WITHIN: its 2xx comes when the store's
    answer does (for a longer one, see the test after the next)."""
    monkeypatch.setattr(middleware, "READ_DEADLINE", 2.0, raising=False)
    settings = settings_for(url)
    async with (
        running_api(settings, projections=("tally",)) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        assert (await voting.cast(election_id, {"choice": "a"}, "first")).status_code == 201

        async def timed(call: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            answer = await call
            return answer, time.monotonic() - started

        await asyncio.to_thread(cluster.freeze)
        frozen = time.monotonic()
        try:
            in_flight = asyncio.create_task(
                timed(voting.cast(election_id, {"choice": "a"}, "in-flight"))
            )
            await asyncio.sleep(0.3)
            read, read_took = await timed(
                http.get(f"/api/elections/{election_id}/results", headers=bearer(AUDITOR))
            )
            ready, ready_took = await timed(http.get("/api/ready"))
            later = []
            while time.monotonic() - frozen < 6.0:
                later.append(await timed(voting.cast(election_id, {"choice": "a"}, voting.voter())))
            health = (await http.get("/api/health")).json()
        finally:
            await asyncio.to_thread(cluster.freeze, True)
        thawed = time.monotonic()
        ballot, _ = await in_flight
        assert ballot.status_code == 201, ballot.text  # answered by its commit, after the thaw
        assert time.monotonic() - thawed < 10
        assert (read.status_code, read.headers.get("retry-after")) == (503, "5"), read.text
        assert read_took < 4.0
        assert ready.status_code == 503
        assert ready_took < 4.0
        assert health["checks"]["store"] != "ok"
        assert all(answer.status_code == 503 for answer, _ in later), [a.text for a, _ in later]
        # Once the store has hung for STALLED_AFTER, ballots are refused at the door.
        assert max(took for _, took in later[-3:]) < 1.0, [took for _, took in later]
        recovered = time.monotonic() + 10
        while (await voting.cast(election_id, {"choice": "a"}, "after")).status_code != 201:
            assert time.monotonic() < recovered, "ballots still refused 10 s after the thaw"
            await asyncio.sleep(0.2)
    assert _casts(url) == 5  # created, opened, "first", "in-flight", "after"


def _unknown_answers() -> float:
    return float(BALLOTS_REFUSED.labels("outcome_unknown")._value.get())


async def test_a_commit_the_frozen_store_never_answers_costs_its_callers_a_bounded_wait(
    cluster: Cluster, url: str
) -> None:
    """The ballots of a commit in flight when the store froze waited for its outcome for as
    long as the freeze, minutes or for good; a bulk request with one of them, its whole
    answer, refusals included (the brief's "a fast 503, never a hang"). Past OUTCOME_WITHIN
    from the commit they are answered 503: the outcome is not known yet, retry with the
    same Idempotency-Key. The writer learns the outcome at the thaw, and a retry answers
    the receipt: each ballot recorded once."""
    slack = 3.0  # the sweeper's 0.1 s, the request's own way, a shared machine
    settings = settings_for(url)
    async with (
        running_api(settings, projections=()) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        assert (await voting.cast(election_id, {"choice": "a"}, "warm-up")).status_code == 201
        ballots = f"/api/elections/{election_id}/ballots"
        before = _unknown_answers()

        async def frozen(call: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
            """The answer while the store is frozen (never one that waited for the thaw)."""
            await asyncio.to_thread(cluster.freeze)
            try:
                started = time.monotonic()
                answer = await asyncio.wait_for(call, OUTCOME_WITHIN + slack)
                return answer, time.monotonic() - started
            finally:
                await asyncio.to_thread(cluster.freeze, True)

        async def until_taken(call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
            """The first answer other than 503 (the store is marked down until the frozen
            commit's answer comes)."""
            deadline = time.monotonic() + 15
            while (answer := await call()).status_code == 503:
                assert time.monotonic() < deadline, answer.text
                await asyncio.sleep(0.2)
            return answer

        single = {"voter_id": "frozen", "choice": "a"}
        key = {**bearer(CLIENT), "Idempotency-Key": "frozen-1"}
        answer, took = await frozen(http.post(ballots, json=single, headers=key))
        assert answer.status_code == 503, answer.text
        assert int(answer.headers["retry-after"]) > 0
        detail = answer.json()["detail"]
        assert "may have been recorded" in detail, detail
        assert "same Idempotency-Key" in detail, detail
        assert OUTCOME_WITHIN - 0.5 < took < OUTCOME_WITHIN + slack, took
        retry = await until_taken(lambda: http.post(ballots, json=single, headers=key))
        assert retry.status_code == 201, retry.text
        # Recorded by the commit that froze (then the retry is its replay), or not (then
        # by the retry): once, either way.
        assert _casts(url) == 4  # created, opened, warm-up, frozen

        batch = {
            "ballots": [
                {"voter_id": "bulk-1", "choice": "a", "idempotency_key": "b-1"},
                {"voter_id": "bulk-2", "choice": "nobody", "idempotency_key": "b-2"},
                {"voter_id": "bulk-3", "choice": "a", "idempotency_key": "b-3"},
            ]
        }
        answer, took = await frozen(
            http.post(f"{ballots}/batch", json=batch, headers=bearer(CLIENT))
        )
        assert answer.status_code == 200, answer.text
        first, invalid, third = answer.json()["results"]
        assert invalid["status"] == 422, invalid  # answered as ever
        for item in (first, third):
            assert item["status"] == 503, item
            assert "may have been recorded" in item["detail"], item
        assert took < OUTCOME_WITHIN + slack, took
        again = await until_taken(
            lambda: http.post(f"{ballots}/batch", json=batch, headers=bearer(CLIENT))
        )
        first, invalid, third = again.json()["results"]
        assert invalid["status"] == 422
        assert first["version"] == third["version"] == 1, (first, third)
        assert _casts(url) == 6  # bulk-1 and bulk-3, once each
        assert _unknown_answers() - before == 3  # counted: the single ballot, two of the bulk


async def test_a_commit_waiting_for_a_lock_is_not_an_outage(
    url: str, writer: GroupCommitWriter
) -> None:
    """A migration's lock keeps commits waiting while the store is well: the store was
    marked down after 3 s, ballots refused as if it were unreachable, and the alert on it
    fired (review helper-33). The stall is now probed on a connection of its own."""
    election = uuid4()
    await writer.append_events(_ballot(election, "warm-up"))
    blocker = psycopg.connect(url, autocommit=True)
    blocker.execute("BEGIN; LOCK TABLE cardinal_events IN SHARE MODE")
    first = asyncio.create_task(_timed(writer, election, "in-flight"))
    seen_down = False
    started = time.monotonic()
    later: list[asyncio.Task[tuple[Recorded | BaseException, float]]] = []
    while time.monotonic() - started < 4.5:  # past STALLED_AFTER and its probe
        later.append(asyncio.create_task(_timed(writer, election, f"v{len(later)}")))
        seen_down = seen_down or not _up(writer)
        await asyncio.sleep(0.1)
    blocker.execute("COMMIT")
    blocker.close()
    outcome, _ = await first
    await asyncio.gather(*later)
    assert isinstance(outcome, Recorded)
    assert not seen_down
    assert _up(writer)


async def test_a_store_marked_down_while_the_writer_idles_comes_back_by_itself(
    writer: GroupCommitWriter,
) -> None:
    """Marked down with nothing queued (ballots are then refused at the door, so none
    wakes the writer), it used to stay down until a restart (review helper-33)."""
    await writer.append_events(_ballot(uuid4(), "warm-up"))
    thread = writer._thread  # where the writer thread is
    assert thread is not None
    assert thread.ident is not None
    deadline = time.monotonic() + 5
    while sys._current_frames()[thread.ident].f_code.co_name != "wait":
        assert time.monotonic() < deadline, "the writer never went idle"
        await asyncio.sleep(0.01)
    writer.health.down("marked down from elsewhere")
    deadline = time.monotonic() + 5
    while not _up(writer):
        assert time.monotonic() < deadline, "still down 5 s later"
        await asyncio.sleep(0.05)


async def test_a_freeze_is_seen_with_one_ballot_in_flight_and_lookups_answer(
    cluster: Cluster, url: str
) -> None:
    """With no ballot behind the one whose commit hangs, nothing looked at the stall: the
    store stayed 'ok' for the whole freeze; and a withdrawal (a lookup on the request's
    path) hung for as long as the freeze (review helper-35)."""
    settings = settings_for(url)
    async with (
        running_api(settings, projections=("tally",)) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        assert (await voting.cast(election_id, {"choice": "a"}, "leaver")).status_code == 201
        await asyncio.to_thread(cluster.freeze)
        try:
            in_flight = asyncio.create_task(voting.cast(election_id, {"choice": "a"}, "alone"))
            frozen = time.monotonic()
            withdrawal = await http.post(  # before the store is known to hang
                f"/api/elections/{election_id}/withdrawals",
                json={"voter_id": "leaver"},
                headers={**bearer(CLIENT), "Idempotency-Key": "w-1"},
            )
            took = time.monotonic() - frozen
            while (await http.get("/api/health")).json()["checks"]["store"] == "ok":
                assert time.monotonic() - frozen < 8, "the freeze was not seen"
                await asyncio.sleep(0.2)
        finally:
            await asyncio.to_thread(cluster.freeze, True)
        assert (await in_flight).status_code == 201
        assert withdrawal.status_code == 503, withdrawal.text
        # (with its key, it may be a retry of one recorded: this attempt's words, review D1)
        assert withdrawal.json()["detail"] == KEYED_NOT_RECORDED
        assert took < 5.0


async def test_a_retry_refused_while_the_store_is_down_is_not_told_the_ballot_was_not_recorded(
    cluster: Cluster, url: str
) -> None:
    """A ballot whose commit the frozen store holds may be recorded; its retry with the
    same Idempotency-Key, refused at the door while the store is marked down, was told
    "the ballot was not recorded": a client gave up on a ballot that was counted (review
    D1). A request with a key (a ballot, a withdrawal, a batch's item) is told that this
    attempt recorded nothing and an earlier one may have been recorded; one without keeps
    its words (it cannot be a retry the server could recognise)."""
    settings = settings_for(url)
    async with (
        running_api(settings, projections=()) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        ballot = {"voter_id": "held", "choice": "a"}
        leaver = await voting.cast(election_id, {"choice": "a"}, "leaver", idempotency_key="l")
        assert leaver.status_code == 201, leaver.text
        await asyncio.to_thread(cluster.freeze)
        try:
            first = asyncio.create_task(voting.cast(election_id, ballot, idempotency_key="k-1"))
            frozen = time.monotonic()
            while (await http.get("/api/health")).json()["checks"]["store"] == "ok":
                assert time.monotonic() - frozen < 8, "the freeze was not seen"
                await asyncio.sleep(0.1)
            retry = await voting.cast(election_id, ballot, idempotency_key="k-1")
            keyless = await voting.cast(election_id, {"voter_id": "other", "choice": "a"})
            withdrawal = await http.post(
                f"/api/elections/{election_id}/withdrawals",
                json={"voter_id": "leaver"},
                headers={**bearer(CLIENT), "Idempotency-Key": "w-1"},
            )
            batch = await http.post(
                f"/api/elections/{election_id}/ballots/batch",
                json={
                    "ballots": [
                        {"voter_id": "b-keyed", "choice": "a", "idempotency_key": "bk"},
                        {"voter_id": "b-keyless", "choice": "a"},
                    ]
                },
                headers=bearer(CLIENT),
            )
        finally:
            await asyncio.to_thread(cluster.freeze, True)
        answered = await first
        assert answered.status_code in (201, 503), answered.text
        for keyed in (retry, withdrawal):
            assert keyed.status_code == 503, keyed.text
            assert keyed.headers["retry-after"], keyed.headers
            assert keyed.json()["detail"] == KEYED_NOT_RECORDED, keyed.text
        assert keyless.status_code == 503, keyless.text
        assert keyless.json()["detail"] == NOT_RECORDED
        assert batch.status_code == 200, batch.text
        items = batch.json()["results"]
        said = [item["detail"] for item in items]
        assert said == [KEYED_NOT_RECORDED, NOT_RECORDED], items
        # Each says when to send it again, as the single ballot's Retry-After does.
        waits = [item.get("retry_after") for item in items]
        assert waits == [int(keyless.headers["retry-after"])] * 2, items
        # The first attempt's ballot, whatever it was told: the retry finds it or records it.
        again = await voting.cast(election_id, ballot, idempotency_key="k-1")
        assert again.status_code in (200, 201), again.text
        assert again.status_code == 201 or again.headers.get("idempotent-replayed") == "true"


async def test_reads_waiting_on_a_store_marked_down_are_answered_503_at_once(
    cluster: Cluster, url: str
) -> None:
    """During a freeze, ballots were refused within about 3.5 s (the writer's stall probe
    marks the store down), but a read waiting on the store waited out RequestGuard's 15 s
    for its 503 (review D3). A read still waiting once the store is marked down is answered
    503 with Retry-After then; one that waits on a store nobody has suspected yet has the
    writer probe it; a read served without the store (the elections' listing, from the
    cache) is served."""
    settings = settings_for(url)
    async with (
        running_api(settings, projections=("tally",)) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        voting = VotingClient(http)
        seen = await voting.open_election()
        unseen = await voting.open_election()
        for election_id in (seen, unseen):
            cast = await voting.cast(election_id, {"choice": "a"}, "v", idempotency_key="k")
            assert cast.status_code == 201, cast.text

        async def timed(path: str) -> tuple[httpx.Response, float]:
            started = time.monotonic()
            got = await http.get(path, headers=bearer(AUDITOR))
            return got, time.monotonic() - started

        await asyncio.to_thread(cluster.freeze)
        try:
            # Reads alone: nothing else waits on the store, nobody has suspected it.
            alone, alone_took = await timed(f"/api/elections/{unseen}/results")
            # A ballot's commit the frozen store holds: the writer marks it down.
            in_flight = asyncio.create_task(voting.cast(seen, {"choice": "b"}, "w"))
            frozen = time.monotonic()
            while (await http.get("/api/health")).json()["checks"]["store"] == "ok":
                assert time.monotonic() - frozen < 8, "the freeze was not seen"
                await asyncio.sleep(0.1)
            down, down_took = await timed(f"/api/elections/{unseen}/events")
            kept, kept_took = await timed("/api/elections")
            # Metrics answer without the store (the process's own counters): an outage
            # is when operators need them (merge review: they were cut with a 503).
            scraped, scraped_took = await timed("/metrics")
        finally:
            await asyncio.to_thread(cluster.freeze, True)
        await in_flight
    print(
        f"alone {alone.status_code} {alone_took:.2f}s, down {down.status_code} "
        f"{down_took:.2f}s, cached {kept.status_code} {kept_took:.2f}s"
    )
    for refused in (alone, down):
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"], refused.headers
    assert alone_took < 5.0  # STALLED_AFTER, then the probe (1.5 s), not 15 s
    assert down_took < 1.0
    assert kept.status_code == 200, kept.text
    assert kept_took < 1.0
    assert scraped.status_code == 200, scraped.text
    assert "cardinal_ballots_refused_total" in scraped.text
    assert scraped_took < 5.0


async def test_a_freeze_during_an_election_announcement_is_seen_and_ballots_refused_at_once(
    cluster: Cluster, url: str, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a commit holding an election's event, the writer thread announces it with a
    statement of its own. A store that froze during it held the thread for the whole freeze
    with no commit in flight, so nothing probed it: never marked down, /api/health and
    cardinal_store_up said up, and every ballot waited its full deadline for a 503 (review
    of the writer, announce_freeze). The freeze is struck right as the announcement goes."""
    announce = writer._announce_elections
    struck = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()

    def freeze_then_announce() -> None:
        if not struck.done():
            cluster.freeze()
            loop.call_soon_threadsafe(struck.set_result, None)
        announce()

    monkeypatch.setattr(writer, "_announce_elections", freeze_then_announce)
    election = uuid4()
    try:
        # No guard: an election change's append, announced after its commit.
        change = await writer.append_events(_ballot(election, "change"))
        assert isinstance(change, Recorded)
        await asyncio.wait_for(struck, 10)
        frozen = time.monotonic()
        waiting = asyncio.create_task(_timed(writer, election, "queued"))
        while _up(writer):
            assert time.monotonic() - frozen < 8, "the freeze was never seen"
            await asyncio.sleep(0.05)
        refused, took = await _timed(writer, election, "at the door")
        queued, _ = await waiting
    finally:
        await asyncio.to_thread(cluster.freeze, True)
    assert isinstance(refused, StoreUnavailable), refused
    assert took < 0.5, took
    assert isinstance(queued, StoreUnavailable), queued
    deadline = time.monotonic() + 10
    while True:
        after, _ = await _timed(writer, election, "after")
        if isinstance(after, Recorded):
            break
        assert time.monotonic() < deadline, f"still refused 10 s after the thaw: {after}"
        await asyncio.sleep(0.2)
    assert _casts(url) == 2  # the change and "after"


def test_operator_commands_give_up_on_a_frozen_database_with_a_message(
    cluster: Cluster, url: str
) -> None:
    """A server that accepts connections and never answers hung `projections`, `migrate`
    and `rebuild` for good (review helper-40): each now says it cannot reach the database
    once CONNECT_TIMEOUT (10 s) has passed."""
    env = {**os.environ, "DATABASE_URL": url}
    started = time.monotonic()
    cluster.freeze()
    try:
        running = [
            subprocess.Popen(
                [sys.executable, "-m", "infra.cli", *command],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for command in (["projections"], ["migrate"], ["rebuild", "tally"])
        ]
        outcomes = [(process.wait(timeout=60), process.communicate()[1]) for process in running]
    finally:
        cluster.freeze(thaw=True)
    took = time.monotonic() - started
    for code, err in outcomes:
        assert code == 2, err
        assert "cannot reach the database" in " ".join(err.split()), err
        assert "Traceback" not in err
    assert took < 30, took  # 10 s, and the interpreters' start on a shared machine


async def test_a_rate_limiter_stopping_on_a_frozen_store_gives_up_its_give_back_in_time(
    cluster: Cluster, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The final give-back of a stop (its leases' unspent units) is bounded: a store that
    hangs costs those units (logged), never the shutdown, and nothing is raised."""
    limiter = SharedRateLimiter(url)
    await limiter.start()
    assert (await limiter.hit("test:frozen", Quota(1000, 3600.0))).allowed  # (a lease of 10)
    await asyncio.to_thread(cluster.freeze)
    try:
        started = time.monotonic()
        await limiter.stop()
        took = time.monotonic() - started
    finally:
        await asyncio.to_thread(cluster.freeze, True)
    assert took < STOP_WITHIN + GIVE_BACK_WITHIN + 0.5, took
    assert "10 leased rate-limit units not given back" in caplog.text


async def _takeable(limiter: SharedRateLimiter, key: str, quota: Quota) -> int:
    taken = 0
    while (await limiter.hit(key, quota)).allowed:
        taken += 1
    return taken


async def test_rate_limit_checks_on_a_frozen_store_are_given_up_and_the_counts_stay_right(
    cluster: Cluster, url: str
) -> None:
    """A check waited for its statement as long as the store was frozen: with
    ENABLE_RATE_LIMITING a ballot hung for the whole freeze, then was cancelled into a 500 at
    SIGTERM (review). It is given up on after CHECK_WAIT now, and neither a check given up
    in its statement nor one never sent costs a unit, nor is a give-back sent twice."""
    limiter = SharedRateLimiter(url)
    await limiter.start()
    small, large = Quota(50, 3600.0), Quota(1000, 3600.0)  # (no lease; leases of 10)
    a, b, c, d = (f"test:{uuid4().hex}" for _ in range(4))
    try:
        for key in (a, b):
            assert (await limiter.hit(key, small, 2)).allowed  # 48 left of each
        assert (await limiter.hit(c, large)).allowed  # 999 left, 10 of them leased here
        assert (await limiter.hit(c, large, 8)).allowed  # from the lease: 2 leased left
        await asyncio.to_thread(cluster.freeze)
        try:
            started = time.monotonic()
            sent = [
                asyncio.ensure_future(limiter.hit(a, small)),
                asyncio.ensure_future(limiter.hit(b, small, -1)),
            ]
            dropped = [asyncio.ensure_future(limiter.hit(d, small, 3))]  # its caller goes
            await asyncio.sleep(0)  # (both queued)
            while limiter._pending:  # ... until their statement goes to the frozen server
                assert time.monotonic() - started < 5, "the statement was never sent"
                await asyncio.sleep(0.001)
            never_sent = [
                asyncio.ensure_future(limiter.hit(a, small, -1)),  # a give-back
                asyncio.ensure_future(limiter.hit(c, large, 5)),  # holds the lease's 2
            ]
            dropped.append(asyncio.ensure_future(limiter.hit(d, small, 2)))
            await asyncio.sleep(0)  # (queued)
            for caller in dropped:
                caller.cancel()
            outcomes = await asyncio.wait_for(
                asyncio.gather(*sent, *never_sent, return_exceptions=True), 5.0
            )
            took = time.monotonic() - started
        finally:
            await asyncio.to_thread(cluster.freeze, True)
        assert all(isinstance(o, LimiterUnavailable) for o in outcomes), outcomes
        assert took < CHECK_WAIT + 1.0, took
        # After the thaw the statement in flight commits: the unit it granted toward the
        # check given up on goes back, b's give-back counts once; a's queued give-back is
        # still sent (once), and the lease's 2 units are the lease's again.
        assert await _takeable(limiter, a, small) == 49
        assert await _takeable(limiter, b, small) == 49
        assert await _takeable(limiter, c, large) == 1000 - 9
        # A check whose caller was cancelled: likewise, sent or not.
        assert all(caller.cancelled() for caller in dropped)
        assert await _takeable(limiter, d, small) == 50
    finally:
        await limiter.stop()


async def test_rate_limit_checks_survive_the_server_closing_the_idle_connection(
    cluster: Cluster, url: str
) -> None:
    """The limiter's connection, closed by the server while it idled (idle_session_timeout
    here; pg_terminate_backend, a pooler reaping idle sessions alike), failed every check
    of the next statement with the raw OperationalError (a 503 on a healthy store), and a
    replacement closed in turn before its first statement cost RECONNECT_DELAY, past every
    check's CHECK_WAIT (review: 177 of 360 revisions refused). The cut is seen before
    anything is sent, and the checks go on a new connection at once."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET idle_session_timeout = '1s'")
    limiter = SharedRateLimiter(url)
    await limiter.start()
    quota = Quota(1_000_000, 3600.0)
    try:
        assert (await limiter.hit(f"test:{uuid4().hex}", quota)).allowed
        for _ in range(3):  # the first connection cut, then each replacement in turn
            await asyncio.sleep(1.6)
            started = time.monotonic()
            outcomes = await asyncio.gather(
                *(limiter.hit(f"test:{uuid4().hex}", quota) for _ in range(20)),
                return_exceptions=True,
            )
            assert all(isinstance(o, Decision) and o.allowed for o in outcomes), outcomes
            assert time.monotonic() - started < CHECK_WAIT
        with psycopg.connect(url, autocommit=True) as conn:  # (an administrator's cut)
            conn.execute(  # (waits for the backends to exit: their goodbyes are sent)
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert (await limiter.hit(f"test:{uuid4().hex}", quota)).allowed
    finally:
        await limiter.stop()


async def test_with_rate_limiting_a_frozen_store_costs_ballots_a_fast_503(
    cluster: Cluster, url: str
) -> None:
    """With ENABLE_RATE_LIMITING, ballots hung in the limiter's check for as long as the
    store was frozen (review). Now: 503 with Retry-After within CHECK_WAIT, nothing
    recorded, and after the thaw the limit counts on from where it was."""
    limit = 50  # (no lease: every ballot's unit is decided by the database)
    settings = settings_for(url, enable_rate_limiting=True, max_votes_per_ip_per_hour=limit)
    async with (
        running_api(settings, projections=()) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        for _ in range(2):
            assert (
                await voting.cast(election_id, {"choice": "a"}, voting.voter())
            ).status_code == 201

        async def timed() -> tuple[httpx.Response, float]:
            started = time.monotonic()
            answer = await asyncio.wait_for(
                voting.cast(election_id, {"choice": "a"}, voting.voter()), 5.0
            )
            return answer, time.monotonic() - started

        await asyncio.to_thread(cluster.freeze)
        try:
            answers = list(await asyncio.gather(*(timed() for _ in range(5))))
            answers += [await timed() for _ in range(2)]
        finally:
            await asyncio.to_thread(cluster.freeze, True)
        for answer, took in answers:
            assert answer.status_code == 503, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert int(answer.headers["retry-after"]) > 0
            assert answer.json()["detail"] == BALLOT_UNCHECKED
            assert took < 2.0, took
        after = await voting.cast(election_id, {"choice": "a"}, voting.voter())
        assert after.status_code == 201, after.text
        last = await voting.cast(election_id, {"choice": "a"}, voting.voter())
        assert last.status_code == 201, last.text
        # Four ballots took a unit each; the seven refused took none.
        assert last.headers["ratelimit"].startswith(f'"ballots";r={limit - 4};'), last.headers
    assert _casts(url) == 6  # created, opened, two before, two after: none refused recorded


async def test_with_rate_limiting_a_store_down_is_called_down_not_an_unchecked_limit(
    cluster: Cluster, url: str
) -> None:
    """With ENABLE_RATE_LIMITING no ballot reaches the writer while the store is down, so
    nothing marked it down: every ballot of a whole outage was titled "Rate limit not
    checked" (the store may be up) after a 1 s wait each, and counted as such, not as
    store_unavailable (review mr1). The limiter's failed connection says the store is
    away, and the writer is asked to probe it: the next ones are refused at once."""
    settings = settings_for(url, enable_rate_limiting=True, max_votes_per_ip_per_hour=50)
    async with (
        running_api(settings, projections=()) as base,
        httpx.AsyncClient(base_url=base, timeout=60) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        first = await voting.cast(election_id, {"choice": "a"}, voting.voter())
        assert first.status_code == 201, first.text
        await asyncio.to_thread(cluster.stop, "fast")
        try:
            answers = []
            for _ in range(4):
                started = time.monotonic()
                answer = await voting.cast(election_id, {"choice": "a"}, voting.voter())
                answers.append((answer, time.monotonic() - started))
        finally:
            await asyncio.to_thread(cluster.start)
    for answer, _ in answers:
        assert answer.status_code == 503, answer.text
        assert answer.json()["title"] == "Event store unavailable", answer.text
    assert [took < 0.5 for _, took in answers[-2:]] == [True, True], answers


OUTAGE = 38.0  # past the pools' old attempt at ~31 s (1+2+4+8+16): their next came at ~63 s
READS_BACK_WITHIN = 3.5  # an attempt every 2 s at most, and the request's own time
RETRY_BACK_WITHIN = 2.5  # it was LOOKUP_WAIT's 3 s at least


async def test_after_a_long_outage_reads_readiness_and_retries_answer_within_seconds(
    cluster: Cluster, url: str
) -> None:
    """The reads pool (results, /api/ready) and eventsourcing's pool (a retry's lookup)
    retried with psycopg_pool's doubling waits (1, 2, 4 ... 32 s): after a 75 s outage they
    stayed 503 for 44 s after PostgreSQL was back, and after this test's 38 s for about 20 s
    (review exhaust M1). And the lookups' pool tested its idle connections, each broken by
    the restart, one by one as it lent them, 1 s and 2 s apart: the first retry's lookup after
    the return waited 3 s into a 503. Now they try every 2 s at most, and the writer has the
    lookups' pool tested as soon as the store answers its probe."""
    settings = settings_for(url)
    async with (
        running_api(settings, projections=("tally",)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        ballot = {"voter_id": "first", "choice": "a"}
        first = await voting.cast(election_id, ballot, idempotency_key="k-first")
        assert first.status_code == 201, first.text

        async def results() -> bool:
            got = await http.get(f"/api/elections/{election_id}/results", headers=bearer(AUDITOR))
            assert got.status_code in (200, 503), got.text
            return got.status_code == 200

        async def ready() -> bool:
            got = await http.get("/api/ready")
            assert got.status_code in (200, 503), got.text
            return got.status_code == 200

        async def retry() -> bool:
            got = await voting.cast(election_id, ballot, idempotency_key="k-first")
            assert got.status_code in (201, 503), got.text
            return got.status_code == 201

        stopped = time.monotonic()
        await asyncio.to_thread(cluster.stop, "fast")
        while time.monotonic() - stopped < OUTAGE:  # each pool meets the outage, and waits
            assert not any(await asyncio.gather(results(), ready()))
            await retry()  # (refused at the door while the writer sees the store down)
            await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.start)
        back = time.monotonic()

        async def answered(ok: Callable[[], Awaitable[bool]]) -> float:
            while not await ok():
                assert time.monotonic() - back < 60, "still 503 a minute after the return"
                await asyncio.sleep(0.1)
            return time.monotonic() - back

        took = await asyncio.gather(answered(results), answered(ready), answered(retry))
        print("results, ready, retry: 200 {:.1f}, {:.1f}, {:.1f} s after".format(*took))
        assert max(took[:2]) < READS_BACK_WITHIN, took
        assert took[2] < RETRY_BACK_WITHIN, took


async def test_while_the_store_is_down_election_changes_are_refused_in_their_own_words(
    cluster: Cluster, url: str
) -> None:
    """An election's create or open was refused with a ballot's words: "the ballot was not
    recorded", "retry with the same Idempotency-Key", which they do not take (review exhaust
    L4). A ballot keeps its own."""
    settings = settings_for(url)
    async with (
        running_api(settings, projections=()) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        voting = VotingClient(http)
        draft = await voting.create_election()
        opened = await voting.open_election()
        await asyncio.to_thread(cluster.stop, "fast")
        try:
            first = await voting.cast(opened, {"voter_id": "first", "choice": "a"})
            assert first.status_code == 503, first.text  # (the writer sees the outage)
            assert "the ballot was not recorded" in first.json()["detail"]
            assert (await http.get("/api/health")).json()["checks"]["store"] != "ok"
            created = await http.post(
                "/api/elections",
                json={"title": "T", "method": "plurality", "options": options("a", "b")},
                headers=bearer(ADMIN),
            )
            opening = await http.post(f"/api/elections/{draft['id']}/open", headers=bearer(ADMIN))
            ballot = await voting.cast(opened, {"voter_id": "v", "choice": "a"})
            withdrawal = await http.post(
                f"/api/elections/{opened}/withdrawals",
                json={"voter_id": "first"},
                headers=bearer(CLIENT),
            )
        finally:
            await asyncio.to_thread(cluster.start)
    for change in (created, opening):
        assert change.status_code == 503, change.text
        assert change.headers["retry-after"] == "5"
        detail = change.json()["detail"]
        assert "the change was not made" in detail, detail
        assert "ballot" not in detail, detail
        assert "Idempotency-Key" not in detail, detail
    assert ballot.status_code == 503, ballot.text
    assert "the ballot was not recorded" in ballot.json()["detail"]
    # A withdrawal: not in words that read as if the voter's ballot were gone (merge review).
    assert withdrawal.status_code == 503, withdrawal.text
    said = withdrawal.json()["detail"]
    assert "the withdrawal was not recorded" in said, said
    assert "ballot stays as it was" in said, said


async def test_after_a_restart_while_idle_the_first_lookups_answer_at_once(
    cluster: Cluster, writer: GroupCommitWriter
) -> None:
    """A restart while the process idles breaks every idle connection of the lookups'
    pool, and nothing marks the store down (the writer finds its own connection lost and
    reconnects at once). The pool tested each connection as it lent it (a round trip per
    lookup), and waited 1 s, then 2 s, after each broken one: the first revisions after
    the restart were 503 after LOOKUP_WAIT's 3 s, on a healthy store (review D2). A
    connection the server hung up on is now passed over at once, without a round trip."""
    election = uuid4()
    voters = [f"v{n}" for n in range(6)]
    for voter in voters:
        await writer.append_events(_ballot(election, voter))
    # Several idle connections in the pool, as a busy process has.
    loaded = await asyncio.gather(*(writer.load_ballot(ballot_id(election, v)) for v in voters))
    assert all(found is not None for found in loaded)
    await asyncio.to_thread(cluster.restart, "immediate")
    await asyncio.sleep(0.5)
    took = []
    for voter in voters:
        started = time.monotonic()
        found = await writer.load_ballot(ballot_id(election, voter))
        took.append(round(time.monotonic() - started, 2))
        assert found is not None
    print("lookups after the restart took", took)
    assert _up(writer)
    assert max(took) < 0.5, took


async def test_a_pool_of_idle_connections_broken_by_a_restart_lends_again_at_once(
    cluster: Cluster, url: str
) -> None:
    """After a restart every idle connection of the reads pool (results, /api/ready) is
    broken, and psycopg_pool tested them one by one as it lent them, waiting between
    them: a reader got through two within its 0.9 s, so with eight idle the reads were
    503 for about four seconds after the database was back (merge review F1). A
    connection the server hung up on is now passed over at once, without a round trip,
    and the first read after the restart is answered."""
    pool = _pool(url, max_size=8, name="reads", wait=0.9)
    await pool.open(wait=True)
    try:

        async def held() -> None:
            async with pool.connection() as conn:
                await conn.execute("SELECT pg_sleep(0.3)")

        await asyncio.gather(*(held() for _ in range(8)))
        assert pool.get_stats()["pool_available"] == 8
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.start)
        back = time.monotonic()
        refused = 0
        while True:
            try:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")
                break
            except PoolTimeout:
                refused += 1
                assert time.monotonic() - back < 30, "no connection 30 s after the return"
        took = time.monotonic() - back
        assert refused == 0, (refused, took)
        assert took < 2.5, (refused, took)
    finally:
        await pool.close()


def _transactions(cluster: Cluster, url: str) -> int:
    """The server's count of transactions in ``url``'s database, each statement sent to it
    (an empty one too: psycopg_pool's test of a connection) once every connection to it is
    closed (a backend reports its counts as it exits)."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(cluster.url, autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while admin.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchone():
            assert time.monotonic() < deadline, "a connection outlived its pool"
            time.sleep(0.01)
        row = admin.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_read_on_the_reads_pool_costs_the_server_one_round_trip(
    cluster: Cluster, url: str
) -> None:
    """The reads pool tested each connection with an empty query as it lent it: every
    results read and readiness probe cost the server two round trips (about 75 µs of a
    read's 175-200 µs here). A hung-up connection is now seen without one."""
    reads = 200
    before = _transactions(cluster, url)
    pool = _pool(url, max_size=2, name="reads")
    await pool.open(wait=True)
    try:
        for _ in range(reads):
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
    finally:
        await pool.close()
    sent = _transactions(cluster, url) - before
    assert reads <= sent < reads * 1.1, sent


def _lookups_pool(conn: Conn) -> bool:
    """The lookups' (sync) pool's: not the reads pool's, which asks too since 8ec08a6
    (another pool of this process, used meanwhile, was cut and counted as the lookups')."""
    return not isinstance(conn, psycopg.AsyncConnection)


async def test_a_batchs_lookups_read_again_when_their_connection_was_cut_as_it_was_lent(
    url: str, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's revisions are looked up (``load_ballots``) and a retry's receipt too
    (``recorded``) with reads of our own on eventsourcing's pool, which were not tried
    again when their connection turned out cut: with every idle backend terminated every
    0.2 s under load, hundreds of a batch's items were refused 503 "the database could
    not be reached" on a healthy store. They are read again at once now, on a fresh
    connection, as eventsourcing reads its own again."""
    election = uuid4()
    receipts = {v: await writer.append_events(_ballot(election, v)) for v in ("v0", "v1")}
    ids = {v: ballot_id(election, v) for v in receipts}
    cutting = CutAsLent(url, monkeypatch, _lookups_pool)

    cutting.times = 1
    found = await writer.load_ballots(list(ids.values()))
    assert len(cutting.cut) == 1
    assert {v: found[ids[v]].recorded[1] for v in ids} == receipts

    cutting.times = 1
    assert await writer.recorded(ids["v1"], 1) == receipts["v1"]
    assert len(cutting.cut) == 2
    assert _up(writer)


async def test_a_lookup_whose_connections_are_cut_again_and_again_gives_up_at_once(
    url: str, writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading again is bounded: LOOKUP_RETRIES more reads, then the error (a 503)."""
    election = uuid4()
    await writer.append_events(_ballot(election, "v0"))
    cutting = CutAsLent(url, monkeypatch, _lookups_pool)
    cutting.times = 100
    started = time.monotonic()
    with pytest.raises(persistence.OperationalError):
        await writer.load_ballots([ballot_id(election, "v0")])
    assert len(cutting.cut) == 1 + LOOKUP_RETRIES
    assert time.monotonic() - started < 3


async def test_the_writers_connection_cut_while_idle_is_an_info_not_a_warning(
    url: str, writer: GroupCommitWriter, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle connection cut (idle_session_timeout, an operator) costs the next batch
    nothing: it is sent again at once on a new connection. It was a WARNING each time
    (42 lines in 90 s with a 3 s idle timeout and sparse traffic); it is an INFO now."""
    election = uuid4()
    await writer.append_events(_ballot(election, "before"))
    with psycopg.connect(url, autocommit=True) as admin:
        # (With a timeout, pg_terminate_backend waits for the backend to exit, so its
        # goodbye is in the writer's socket before the next batch: without one it returned
        # at the signal, and under load the batch was sent first and lost, a WARNING.)
        pids = admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s",
            (connection_name("writer"),),
        ).fetchall()
    assert pids == [(True,)]
    caplog.set_level(logging.INFO, logger="infra.store.writer")
    assert isinstance(await writer.append_events(_ballot(election, "after")), Recorded)
    said = [r for r in caplog.records if "event store connection" in r.getMessage()]
    # Said at INFO, once, if the batch found the cut; at 8fb9a35, beside a full suite and
    # reviews (load 9), nothing was said once and the batch was recorded: the connection
    # was replaced before the batch came to it (the cause not pinned down: a probe after
    # the store was marked down is one way). Never a WARNING: the old code's line a batch.
    assert [r.levelno for r in said] in ([], [logging.INFO]), said
    assert _up(writer)
