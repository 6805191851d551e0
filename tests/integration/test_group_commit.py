"""The group-commit writer against a real PostgreSQL: batching, isolation, back-pressure."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from domain.application import VotingApplication
from domain.ballot import Ballot
from domain.election import ElectionStatus
from domain.errors import ElectionNotOpen
from domain.ports import OutcomeUnknown, Overloaded, Recorded, VersionConflict
from domain.rules import ElectionRules
from domain.voter import Voter
from infra import metrics
from infra.store import open_application
from infra.store.batch import APPEND, CLOSED_TOPIC, INSERT, MUST_SORT_OUT, Append, Outcome
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from tests.databases import create_database, drop_database
from tests.integration.client import VotingClient, assert_problem
from tests.servers import running_api, settings_for

OPTIONS = [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}]


@pytest.fixture
async def store() -> AsyncIterator[tuple[str, VotingApplication]]:
    url = create_database("cardinal_writer")
    migrate(url)
    app = open_application(url)
    try:
        yield url, app
    finally:
        app.close()
        drop_database(url)


def _ballot(election: str, voter: str) -> list[Ballot.Cast]:
    """A voter's first ballot, named as the service names it: one per voter."""
    return [Ballot.first_cast(UUID(election), voter, {"choice": "a"}, None)]


def _casts(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM cardinal_events").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_batch_with_duplicate_voters_commits_all_the_others(
    store: tuple[str, VotingApplication],
) -> None:
    url, app = store
    writer = GroupCommitWriter(app, url, max_batch=500)
    writer.start()
    try:
        election = str(uuid4())
        await writer.append_events(_ballot(election, "already-voted"))
        voters = [f"voter-{n}" for n in range(200)]
        # Each of these conflicts: with a recorded ballot, or with its twin in the batch.
        duplicates = ["already-voted", "voter-7", "voter-7", "voter-150"]
        appends = [writer.append_events(_ballot(election, v)) for v in [*voters, *duplicates]]
        outcomes = await asyncio.gather(*appends, return_exceptions=True)
    finally:
        await writer.stop()
    recorded = [o.position for o in outcomes[: len(voters)] if isinstance(o, Recorded)]
    refused = outcomes[len(voters) :]
    assert len(recorded) == len(voters)  # every innocent neighbour committed
    assert len(set(recorded)) == len(recorded)  # each at its own position
    assert all(isinstance(o, VersionConflict) for o in refused), refused
    assert writer.stats.batches < len(voters) // 2  # they really went in batches
    assert _casts(url) == 1 + len(voters)


async def test_one_ballot_per_transaction_when_batching_is_off(
    store: tuple[str, VotingApplication],
) -> None:
    url, app = store
    writer = GroupCommitWriter(app, url, max_batch=1)
    writer.start()
    try:
        election = str(uuid4())
        await asyncio.gather(*(writer.append_events(_ballot(election, f"v{n}")) for n in range(50)))
    finally:
        await writer.stop()
    assert writer.stats.batches == 50
    assert _casts(url) == 50


async def test_a_full_queue_refuses_instead_of_growing(
    store: tuple[str, VotingApplication],
) -> None:
    url, app = store
    writer = GroupCommitWriter(app, url, max_batch=10, max_queue=20)
    writer.start()
    try:
        election = str(uuid4())
        outcomes = await asyncio.gather(
            *(writer.append_events(_ballot(election, f"v{n}")) for n in range(500)),
            return_exceptions=True,
        )
    finally:
        await writer.stop()
    accepted = [o for o in outcomes if isinstance(o, Recorded)]
    shed = [o for o in outcomes if isinstance(o, Overloaded)]
    assert len(accepted) + len(shed) == 500
    assert shed  # the queue bound held
    assert _casts(url) == len(accepted)  # a refused append left nothing behind


async def test_appends_after_a_lost_connection_are_recorded_once(
    store: tuple[str, VotingApplication],
) -> None:
    url, app = store
    writer = GroupCommitWriter(app, url, max_batch=50)
    writer.start()
    try:
        election = str(uuid4())
        await writer.append_events(_ballot(election, "warm-up"))
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        recorded = await asyncio.gather(
            *(writer.append_events(_ballot(election, f"after-{n}")) for n in range(100))
        )
    finally:
        await writer.stop()
    assert len({r.position for r in recorded}) == 100
    assert len({r.digest for r in recorded}) == 100  # each with its own receipt
    assert _casts(url) == 101


async def test_a_retry_after_an_unknown_outcome_recognises_its_own_rows(
    store: tuple[str, VotingApplication],
) -> None:
    """A commit can succeed while its connection dies before the answer arrives. The
    writer then retries; rows identical to its own (same id, version and state) are taken
    as its own success, not as a conflict: nothing is refused that was recorded."""
    url, app = store
    writer = GroupCommitWriter(app, url)
    loop = asyncio.get_running_loop()
    election = str(uuid4())
    batch = [
        Append(
            [app.mapper.to_stored_event(e) for e in _ballot(election, f"v{n}")],
            loop.create_future(),
        )
        for n in range(5)
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        first = writer._commit(conn, batch, recognise_own=False)
        again = writer._commit(conn, batch, recognise_own=True)
        stranger = Append(
            [app.mapper.to_stored_event(e) for e in _ballot(election, "v0")],
            loop.create_future(),
        )
        conflict = writer._commit(conn, [stranger], recognise_own=True)
    assert [o.position for o in again] == [o.position for o in first]
    assert all(o.error is None for o in again)
    assert isinstance(conflict[0].error, VersionConflict)  # same key, different state
    assert _casts(url) == 5


async def test_a_process_that_missed_a_close_gets_409_not_a_ballot_left_uncounted(
    store: tuple[str, VotingApplication],
) -> None:
    """Two API processes: one closes the election; the other still has it open in its
    cache. Its ballot must be refused (409), not recorded after the close and left out of
    the count under a 2xx."""
    url, closer = store
    stale = open_application(url)
    writers = [GroupCommitWriter(closer, url), GroupCommitWriter(stale, url)]
    closer.writer, stale.writer = writers
    for writer in writers:
        writer.start()
    try:
        rules = ElectionRules.create(options=OPTIONS, method="plurality")
        election_id = (await closer.create_election("Race", rules)).id
        await closer.open_election(election_id)
        on_time = await stale.cast_ballot(election_id, Voter("early", "early"), {"choice": "a"})
        assert (await stale.election(election_id)).status is ElectionStatus.OPEN  # cached
        await closer.close_election(election_id)
        assert (await stale.election(election_id)).status is ElectionStatus.OPEN  # stale
        with pytest.raises(ElectionNotOpen) as refused:
            await stale.cast_ballot(election_id, Voter("late", "late"), {"choice": "a"})
        assert "closed before this ballot could be recorded" in refused.value.detail
        # The stale view was dropped: the next request is refused by the domain itself.
        with pytest.raises(ElectionNotOpen, match="is closed"):
            await stale.cast_ballot(election_id, Voter("later", "later"), {"choice": "a"})
    finally:
        for writer in writers:
            await writer.stop()
        stale.close()
    assert on_time.position > 0
    assert _casts(url) == 4  # created, opened, the on-time ballot, closed: nothing after


async def test_an_election_dropped_from_a_stale_cache_is_still_listed(
    store: tuple[str, VotingApplication],
) -> None:
    """A ballot refused for a close another process recorded drops the election from this
    process's cache; the listing (GET /api/elections, the overview) left it out from then
    on, until a request named it."""
    url, closer = store
    stale = open_application(url)
    writers = [GroupCommitWriter(closer, url), GroupCommitWriter(stale, url)]
    closer.writer, stale.writer = writers
    for writer in writers:
        writer.start()
    try:
        rules = ElectionRules.create(options=OPTIONS, method="plurality")
        election_id = (await closer.create_election("Race", rules)).id
        await closer.open_election(election_id)
        assert (await stale.election(election_id)).status is ElectionStatus.OPEN
        await closer.close_election(election_id)
        with pytest.raises(ElectionNotOpen):
            await stale.cast_ballot(election_id, Voter("late", "late"), {"choice": "a"})
        assert election_id not in stale.elections  # dropped: the listing used to go by this
        listed = await stale.every_election()
        assert [(e.id, e.status) for e in listed] == [(election_id, ElectionStatus.CLOSED)]
    finally:
        for writer in writers:
            await writer.stop()
        stale.close()


async def test_ballots_batched_behind_their_elections_close_are_refused_the_rest_recorded(
    store: tuple[str, VotingApplication],
) -> None:
    url, app = store
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(options=OPTIONS, method="plurality")
        closing = (await app.create_election("Closing", rules)).id
        staying = (await app.create_election("Staying", rules)).id
        for election_id in (closing, staying):
            await app.open_election(election_id)
        election = await app.election(closing)
        election.close()
    finally:
        await writer.stop()
    loop = asyncio.get_running_loop()

    def guarded(events: list[StoredEvent], guard: UUID) -> Append:
        return Append(events, loop.create_future(), guard)

    def ballot(election_id: UUID, voter: str) -> list[StoredEvent]:
        return [app.mapper.to_stored_event(e) for e in _ballot(str(election_id), voter)]

    # One batch: a ballot, the close, then ballots behind it (and one in another election).
    close = [app.mapper.to_stored_event(e) for e in election.collect_events()]
    batch = [
        guarded(ballot(closing, "before"), closing),
        Append(close, loop.create_future()),
        guarded(ballot(closing, "behind-1"), closing),
        guarded(ballot(staying, "elsewhere"), staying),
        guarded(ballot(closing, "behind-2"), closing),
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        outcomes = writer._commit(conn, batch, recognise_own=False)
    assert [o.error is None for o in outcomes] == [True, True, False, True, False]
    assert all(isinstance(o.error, ElectionNotOpen) for o in (outcomes[2], outcomes[4]))
    assert outcomes[0].position is not None
    assert outcomes[1].position is not None
    assert outcomes[0].position < outcomes[1].position  # the on-time ballot counts
    assert _casts(url) == 4 + 3  # two elections created and opened; ballot, close, ballot


def _rows(events: list[StoredEvent]) -> tuple[list[object], ...]:
    return (
        [e.originator_id for e in events],
        [e.originator_version for e in events],
        [e.topic for e in events],
        [e.state for e in events],
    )


async def test_the_one_statement_commit_records_nothing_where_the_batch_cannot_stand(
    store: tuple[str, VotingApplication],
) -> None:
    """``cardinal_append`` is a whole group commit in one statement. It records a clean
    batch and leaves conflicts out; a batch with an append partly taken, or a guarded
    ballot while its election's Closed event is in the log, raises CV001 with nothing
    recorded (the writer then works it out statement by statement, tested above)."""
    url, app = store
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(options=OPTIONS, method="plurality")
        closed = (await app.create_election("Closed", rules)).id
        await app.open_election(closed)
        await app.close_election(closed)
    finally:
        await writer.stop()
    election = uuid4()

    def ballot(voter: str) -> list[StoredEvent]:
        return [app.mapper.to_stored_event(e) for e in _ballot(str(election), voter)]

    taken = ballot("taken")
    with psycopg.connect(url, autocommit=True) as conn:
        clean = [*ballot("a"), *taken, *ballot("b")]
        rows = conn.execute(APPEND, (*_rows(clean), None, [], CLOSED_TOPIC)).fetchall()
        assert len(rows) == 3
        before = _casts(url)
        again = [*ballot("c"), *taken]  # "taken" conflicts: left out, "c" recorded
        rows = conn.execute(APPEND, (*_rows(again), None, [], CLOSED_TOPIC)).fetchall()
        assert [r[0] for r in rows] == [again[0].originator_id]
        assert _casts(url) == before + 1
        before += 1
        # One append of two rows, one of them taken: it must not stand half-recorded.
        partial = [*ballot("d"), *taken]
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(APPEND, (*_rows(partial), [1, 1], [], CLOSED_TOPIC))
        assert raised.value.sqlstate == MUST_SORT_OUT
        assert _casts(url) == before
        # A ballot guarded by an election whose Closed event is in the log.
        late = [app.mapper.to_stored_event(e) for e in _ballot(str(closed), "late")]
        with pytest.raises(psycopg.Error) as raised:
            conn.execute(APPEND, (*_rows([*ballot("e"), *late]), None, [closed], CLOSED_TOPIC))
        assert raised.value.sqlstate == MUST_SORT_OUT
        assert _casts(url) == before
        # The same rows unguarded, each its own append: recorded (the guard is the check).
        unguarded = (*_rows([*ballot("e"), *late]), [1, 2], [], CLOSED_TOPIC)
        assert len(conn.execute(APPEND, unguarded).fetchall()) == 2


async def test_bookkeeping_that_fails_after_a_commit_costs_no_caller_its_answer(
    store: tuple[str, VotingApplication],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The writer thread counted a batch (stats, metrics) before it answered its callers,
    unguarded: a metric's mmap file on a full disk killed the thread after COMMIT, the
    recorded ballot's caller waited for ever, and every later append was refused "the
    writer is not running" for the process's life (review of the writer,
    writer_thread_death)."""
    url, app = store
    writer = GroupCommitWriter(app, url)
    real = metrics.WRITE_BATCH_SIZE

    class Full:
        """Full for this writer only: the worker's session API stack has a writer thread
        too, which would log its own "metrics failed" and keep its metrics off."""

        def observe(self, value: float) -> None:
            if threading.current_thread() is not writer._thread:
                real.observe(value)
                return
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics, "WRITE_BATCH_SIZE", Full())
    writer.start()
    try:
        election = str(uuid4())
        first = await asyncio.wait_for(writer.append_events(_ballot(election, "first")), 10)
        second = await asyncio.wait_for(writer.append_events(_ballot(election, "second")), 10)
    finally:
        await writer.stop()
    assert isinstance(first, Recorded)
    assert isinstance(second, Recorded)
    assert _casts(url) == 2
    assert writer._thread is not None
    said = [r for r in caplog.records if r.thread == writer._thread.ident]
    assert len([r for r in said if "metrics failed" in r.getMessage()]) == 1


def _failing_at_first(
    writer: GroupCommitWriter, times: int, monkeypatch: pytest.MonkeyPatch
) -> GroupCommitWriter:
    """``writer``, whose first ``times`` commits raise (a bug in the writer thread)."""
    real = writer._commit_with_retries
    failures = 0

    def failing(batch: list[Append]) -> list[Outcome]:
        nonlocal failures
        if failures < times:
            failures += 1
            raise RuntimeError("a bug in the writer")
        return real(batch)

    monkeypatch.setattr(writer, "_commit_with_retries", failing)
    return writer


async def test_a_writer_that_fails_answers_its_batch_and_carries_on(
    store: tuple[str, VotingApplication], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything escaping the writer thread's loop ended the thread: its batch's callers
    waited until OUTCOME_WITHIN, and every later append was refused for the process's
    life. Now the batch is answered at once, as of unknown outcome (the failure may have
    come after its commit: never a 2xx, never a false "not recorded"), and the thread goes
    on."""
    url, app = store
    writer = _failing_at_first(GroupCommitWriter(app, url), 1, monkeypatch)
    writer.start()
    try:
        election = str(uuid4())
        with pytest.raises(OutcomeUnknown, match="may have been"):
            await asyncio.wait_for(writer.append_events(_ballot(election, "first")), 5)
        second = await asyncio.wait_for(writer.append_events(_ballot(election, "second")), 5)
    finally:
        await writer.stop()
    assert isinstance(second, Recorded)
    assert _casts(url) == 1


async def test_a_writer_that_fails_again_and_again_logs_one_traceback_a_minute(
    store: tuple[str, VotingApplication],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A writer failing at every batch wrote a traceback every PROBE_INTERVAL (the merge
    review): one a minute now; each batch is still answered."""
    url, app = store
    writer = _failing_at_first(GroupCommitWriter(app, url), 3, monkeypatch)
    writer.start()
    try:
        election = str(uuid4())
        for n in range(3):
            with pytest.raises(OutcomeUnknown):
                await asyncio.wait_for(writer.append_events(_ballot(election, f"v{n}")), 5)
        last = await asyncio.wait_for(writer.append_events(_ballot(election, "last")), 5)
    finally:
        await writer.stop()
    assert isinstance(last, Recorded)
    said = [r for r in caplog.records if "the writer failed" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].exc_info is not None


async def test_a_full_queue_is_a_503_with_retry_after_over_http(database_url: str) -> None:
    """Back-pressure as a client sees it: problem+json 503 with Retry-After, and nothing
    recorded for the refused ballots."""
    async with (
        running_api(settings_for(database_url, writer_max_queue=1)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        voters = [voting.voter() for _ in range(120)]
        answers = await asyncio.gather(
            *(voting.cast(election_id, {"choice": "a"}, voter) for voter in voters)
        )
        refused = [a for a in answers if a.status_code == 503]
        assert refused, [a.status_code for a in answers]
        assert {a.status_code for a in answers} == {201, 503}
        problem = assert_problem(refused[0], 503, "retry after a second")
        assert problem["title"]
        assert refused[0].headers["retry-after"] == "1"
        accepted = sum(a.status_code == 201 for a in answers)
        results = await voting.results(
            election_id,
            min_position=max(a.json()["position"] for a in answers if a.status_code == 201),
        )
        assert results.json()["ballots"] == accepted


def _guard_plan(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    """The group commit's generic plan (the one a prepared statement keeps), as text."""
    parameters = iter(range(1, 7))
    statement = re.sub(r"%b", lambda _: f"${next(parameters)}", INSERT)
    conn.execute("DEALLOCATE ALL")
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("PREPARE guard(uuid[], bigint[], text[], bytea[], uuid[], text) AS " + statement)
    explain = sql.SQL("EXPLAIN EXECUTE guard('{{}}', '{{}}', '{{}}', '{{}}', {}, {})").format(
        sql.Literal([uuid4()]), sql.Literal(CLOSED_TOPIC)
    )
    rows = conn.execute(explain).fetchall()
    return "\n".join(str(row[0]) for row in rows)


async def test_the_guard_never_reads_the_whole_log_whatever_size_its_plan_was_made_at(
    store: tuple[str, VotingApplication],
) -> None:
    """At some sizes of a young log, the group commit's generic plan scans the whole table;
    a prepared statement keeps its plan (no ANALYZE since: autovacuum off, or between its
    runs), and every group commit then reads the whole log. The writer's session rules
    scans out: at a size where a plain session scans, the writer's plan uses the key."""
    url, app = store
    election = uuid4()
    writer = GroupCommitWriter(app, url)
    writer.start()
    try:
        await writer.append_events(_ballot(str(election), "one"), while_open=election)
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
            for _ in range(40):  # grow the log until a plain session's plan is the trap
                conn.execute(
                    "INSERT INTO cardinal_events "
                    "(originator_id, originator_version, topic, state) "
                    "SELECT gen_random_uuid(), 1, 'domain.ballot:Ballot.Cast', "
                    "convert_to(repeat('x', 300), 'UTF8') FROM generate_series(1, 25)"
                )
                if "Seq Scan on cardinal_events" in _guard_plan(conn):
                    break
            else:
                pytest.fail("no log size up to 1,000 rows made a plain session scan")
        plan = _guard_plan(writer._connection())
    finally:
        await writer.stop()
    assert "cardinal_events_pkey" in plan
    assert "Seq Scan on cardinal_events" not in plan
