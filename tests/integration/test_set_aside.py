"""One bad log entry never stops the counting of the others.

Entries written straight into the log, as a bug or an older version could leave them:
an unreadable one, and an election whose label holds a NUL that PostgreSQL refuses in the
read models. The projections set each aside, say so everywhere an operator or a reader
looks, and a rebuild tries them again.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from domain.election import Election
from domain.rules import ElectionRules
from domain.voter import Voter
from infra.store import open_application
from infra.store.log import LogEvent
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from projections.queries import tally_snapshot
from projections.rebuild import Rebuild
from projections.runtime import ProjectionRunner
from projections.tally import TallyProjection
from tests.databases import create_database, drop_database
from tests.integration.client import VotingClient, bearer
from tests.servers import OPERATOR, running_api, settings_for

ELECTION_TOPIC = f"{Election.__module__}:{Election.__qualname__}"


@pytest.fixture
async def stack() -> AsyncIterator[tuple[str, VotingClient]]:
    """A database and an API of this test's own: what it breaks, no other test sees."""
    url = create_database("cardinal_set_aside")
    migrate(url)
    try:
        async with (
            running_api(settings_for(url)) as api,
            httpx.AsyncClient(base_url=api, timeout=30) as http,
        ):
            yield url, VotingClient(http)
    finally:
        drop_database(url)


def _write_raw(url: str, stream: uuid.UUID, version: int, topic: str, state: bytes) -> int:
    """Append one row the way the writer does (under the table lock), but with any bytes."""
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("LOCK TABLE cardinal_events IN EXCLUSIVE MODE")
        row = conn.execute(
            "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id",
            (stream, version, topic, state),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def _status(voting: VotingClient) -> dict[str, dict[str, Any]]:
    response = await voting.http.get("/api/admin/projections", headers=bearer(OPERATOR))
    assert response.status_code == 200, response.text
    return {p["name"]: p for p in response.json()["projections"]}


async def _until(check: Any, patience: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + patience
    while not (found := await check()):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)
    return found


async def test_an_unreadable_entry_between_two_elections_stops_neither(
    stack: tuple[str, VotingClient],
) -> None:
    url, voting = stack
    first = await voting.open_election("plurality", live_results_step=1)
    second = await voting.open_election("irv", live_results_step=1)
    for n in range(3):
        await voting.cast(first, {"choice": "a"}, f"first-{n}")
    bad = _write_raw(url, uuid.uuid4(), 1, "domain.ballot:Ballot.Cast", b"\x00not json")
    last = 0
    for n in range(50):
        ranking = random.Random(n).sample("abc", 2)
        last = (await voting.cast(second, {"ranking": ranking}, f"second-{n}")).json()["position"]
    assert last > bad

    body = (await voting.results(second, min_position=last)).json()
    assert body["position"] >= last
    assert body["ballots"] == 50  # every ballot after the bad entry is counted
    assert any("could not be read" in note for note in body["notes"])
    assert (await voting.results(first)).json()["ballots"] == 3

    async def settled() -> dict[str, dict[str, Any]] | None:
        status = await _status(voting)
        return status if all(p["position"] >= last for p in status.values()) else None

    status = await _until(settled)
    for name, entry in status.items():
        assert entry["set_aside"] == 1, name
        assert entry["state"] == "live", name
        assert entry["dead_lettered"] == 0, name
    metrics = (await voting.http.get("/metrics")).text
    assert re.search(r'cardinal_projection_set_aside_events\{projection="tally"\} 1\.0', metrics)
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT name, position, election_id, reason FROM projection_set_aside ORDER BY name"
        ).fetchall()
    assert {(name, position, election) for name, position, election, _ in rows} == {
        (name, bad, None) for name in ("catalog", "statistics", "tally")
    }
    assert all("unreadable" in reason for *_, reason in rows)

    # A rebuild tries it again (the reader is the same, so it is set aside again), and
    # audit verify reports it without failing on it.
    rebuilt = await voting.http.post(
        "/api/admin/projections/tally/rebuild", headers=bearer(OPERATOR)
    )
    assert rebuilt.status_code == 202, rebuilt.text
    version = status["tally"]["version"]

    async def switched() -> dict[str, Any] | None:
        tally = (await _status(voting))["tally"]
        return tally if tally["version"] > version and tally["state"] == "live" else None

    tally = await _until(switched, patience=60)
    assert tally["set_aside"] == 1
    assert (await voting.results(second)).json()["ballots"] == 50


async def test_an_election_the_read_models_cannot_store_is_set_aside_with_its_ballots(
    stack: tuple[str, VotingClient],
) -> None:
    """Its label holds a NUL (accepted before the door refused it): PostgreSQL refuses it
    in jsonb and text columns, so the election and its ballots are set aside, and its
    results say so; the other election counts on."""
    url, voting = stack
    rules = ElectionRules.create(
        options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
        method="plurality",
        live_results_step=1,
    )
    poisoned = uuid.uuid4()
    created = orjson.loads(
        open_application(url)
        .mapper.to_stored_event(Election.start("Old", rules).collect_events()[0])
        .state
    )
    created["rules"]["options"][1]["label"] = "B\u0000"
    created["originator_id"] = str(poisoned)
    _write_raw(url, poisoned, 1, f"{ELECTION_TOPIC}.Created", orjson.dumps(created))
    opened = {
        "originator_id": str(poisoned),
        "originator_version": 2,
        "timestamp": created["timestamp"],
    }
    _write_raw(url, poisoned, 2, f"{ELECTION_TOPIC}.Opened", orjson.dumps(opened))
    healthy = await voting.open_election("plurality", live_results_step=1)
    last = 0
    for n in range(4):
        cast = await voting.cast(str(poisoned), {"choice": "b"}, f"p-{n}")
        assert cast.status_code == 201, cast.text  # the API reads the election fine
        last = (await voting.cast(healthy, {"choice": "a"}, f"h-{n}")).json()["position"]

    assert (await voting.results(healthy, min_position=last)).json()["ballots"] == 4
    body = (await voting.results(str(poisoned), min_position=last)).json()
    assert body["ballots"] == 0
    # Its creation, its Opened entry (the tally dates what it shows there: 9562315) and
    # its four ballots, as a recount sets them aside.
    assert body["set_aside"] == 6
    assert any("Incomplete: 6 log entries of this election" in n for n in body["notes"])
    status = await _status(voting)
    assert status["tally"]["set_aside"] == 6
    assert status["catalog"]["set_aside"] >= 1  # the title and rules cannot be stored


async def test_a_ballot_whose_counter_key_is_too_large_to_index_is_set_aside(
    stack: tuple[str, VotingClient],
) -> None:
    """A ranked election created before the door capped its option ids: a full ranking
    makes a counter key PostgreSQL cannot index (SQLSTATE 54000, which psycopg files as
    an operational error). That ballot is set aside; it does not hold up the tally."""
    url, voting = stack
    ids = [f"o{n:02d}" for n in range(100)]
    rules = ElectionRules.create(
        options=[{"id": i, "label": i} for i in ids], method="irv", live_results_step=1
    )
    old = uuid.uuid4()
    created = orjson.loads(
        open_application(url)
        .mapper.to_stored_event(Election.start("Old", rules).collect_events()[0])
        .state
    )
    long_ids = [uuid.UUID(int=random.Random(n).getrandbits(128)).hex * 2 for n in range(100)]
    for option, long_id in zip(created["rules"]["options"], long_ids, strict=True):
        option["id"] = long_id
    created["originator_id"] = str(old)
    _write_raw(url, old, 1, f"{ELECTION_TOPIC}.Created", orjson.dumps(created))
    opened = {"originator_id": str(old), "originator_version": 2, "timestamp": created["timestamp"]}
    _write_raw(url, old, 2, f"{ELECTION_TOPIC}.Opened", orjson.dumps(opened))
    healthy = await voting.open_election("plurality", live_results_step=1)

    cast = await voting.cast(str(old), {"ranking": long_ids}, "long")
    assert cast.status_code == 201, cast.text
    short = await voting.cast(str(old), {"ranking": long_ids[:2]}, "short")
    last = 0
    for n in range(3):
        last = (await voting.cast(healthy, {"choice": "a"}, f"h-{n}")).json()["position"]

    assert (await voting.results(healthy, min_position=last)).json()["ballots"] == 3
    body = (await voting.results(str(old), min_position=last)).json()
    assert body["ballots"] == 1  # the short ranking counts
    assert body["set_aside"] == 1
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT position, reason FROM projection_set_aside WHERE name = 'tally'"
        ).fetchall()
    assert [position for position, _ in rows] == [cast.json()["position"]]
    assert "ProgramLimitExceeded" in rows[0][1]
    assert short.json()["position"] < last
    # A rebuild meets it too, in its bulk build: it sets it aside the same way.
    version = (await _status(voting))["tally"]["version"]
    rebuilt = await voting.http.post(
        "/api/admin/projections/tally/rebuild", headers=bearer(OPERATOR)
    )
    assert rebuilt.status_code == 202, rebuilt.text

    async def switched() -> dict[str, Any] | None:
        tally = (await _status(voting))["tally"]
        return tally if tally["version"] > version and tally["state"] == "live" else None

    tally = await _until(switched, patience=60)
    assert tally["set_aside"] == 1
    assert (await voting.results(str(old))).json()["ballots"] == 1


async def test_a_rebuild_with_a_fixed_reader_recovers_what_was_set_aside() -> None:
    url = create_database("cardinal_set_aside")
    migrate(url)
    pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True})
    await pool.open()
    try:
        election_id = await _fill(url, ballots=30)
        # A reader with a bug that trips on some ballots, as a new version of the code
        # might: run live, it sets those aside and counts the rest.
        broken = ProjectionRunner(_Buggy(), pool)
        await broken.prepare()
        await broken.catch_up()
        async with pool.connection() as conn:
            snapshot = await tally_snapshot(conn, election_id)
            cursor = await conn.execute("SELECT count(*) FROM projection_set_aside")
            row = await cursor.fetchone()
        assert row is not None
        tripped = row[0]
        assert 3 <= tripped < 30
        assert snapshot.set_aside == tripped
        assert snapshot.counters["n"] == 30 - tripped
        # The bug fixed, a rebuild applies them all.
        await Rebuild(TallyProjection(), pool).run()
        async with pool.connection() as conn:
            snapshot = await tally_snapshot(conn, election_id)
        assert snapshot.set_aside == 0
        assert snapshot.counters["n"] == 30
    finally:
        await pool.close()
        drop_database(url)


async def _fill(url: str, ballots: int) -> uuid.UUID:
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(
            options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}], method="approval"
        )
        election_id = (await app.create_election("Recovered", rules)).id
        await app.open_election(election_id)
        for n in range(ballots):
            voter = Voter(f"v{n}", f"v{n}")
            await app.cast_ballot(election_id, voter, {"approve": ["a", "b"][: 1 + n % 2]})
        return election_id
    finally:
        await writer.stop()
        app.close()


class _Buggy(TallyProjection):
    async def apply(self, conn: Any, schema: str, events: Sequence[LogEvent]) -> None:
        if any(e.type == "BallotCast" and e.position % 4 == 0 for e in events):
            raise RuntimeError("a bug in the new reader")
        await super().apply(conn, schema, events)
