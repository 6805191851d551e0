"""What a live results read costs the store: a cached document reads its head alone.

A denial-of-service review found that every read (304s, the pages, each round of the
streams hub) read and decoded all of the election's counters before it looked the document
up: 6.3 MB for a public STV election of 60 options and 53,000 distinct rankings, 80 ms of
the API's CPU and 158 ms of PostgreSQL's per anonymous request, for a document already
cached. The counters are read on a miss only, and only those the view counts.

The statements are observed as the API sends them (the server runs in the test's process):
PostgreSQL's own statistics reach pg_stat_user_tables seconds late, when a backend next
flushes them, and pg_stat_statements is not loaded on the test server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest

from api import streams, tabulations
from api.routes import results
from infra.runtime.caches import SizedCache
from infra.store.log import head as log_head
from projections import queries
from projections.queries import CHUNK, tally_snapshot
from tests.integration.client import VotingClient, bearer
from tests.integration.test_streams import stream
from tests.servers import AUDITOR, CLIENT

CATCH_UP = 60.0  # seconds for the tally to hold still (the machine is shared)


class Statements:
    """The SQL the process sends while it is watched."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def clear(self) -> None:
        self.sent.clear()

    @property
    def heads(self) -> int:
        """Statements that read a results snapshot's head."""
        return sum("read_models.tally_position" in q for q in self.sent)

    @property
    def tally_counters(self) -> int:
        return sum("read_models.tally_counters" in q for q in self.sent)

    @property
    def published_counters(self) -> int:
        """Reads of the published counters (the tally's own writes name no read model)."""
        return sum("published_counters" in q and "read_models." in q for q in self.sent)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Statements:
    watched = Statements()
    execute = psycopg.AsyncCursor.execute

    async def watching(self: psycopg.AsyncCursor[Any], query: Any, *args: Any, **kw: Any) -> Any:
        watched.sent.append(query if isinstance(query, str) else repr(query))
        return await execute(self, query, *args, **kw)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", watching)
    return watched


async def _counted(voting: VotingClient, election_id: str, position: int) -> dict[str, Any]:
    answer = await voting.results(election_id, AUDITOR, min_position=position)
    assert answer.status_code == 200, answer.text
    assert "warning" not in answer.headers
    body: dict[str, Any] = answer.json()
    return body


async def _stepped_election(voting: VotingClient, ballots: int) -> tuple[str, int]:
    election_id = await voting.open_election("irv", public_results=True, live_results_step=2)
    position = 0
    for n in range(ballots):
        ranking = ["abc"[n % 3], "abc"[(n + 1) % 3]]
        cast = await voting.cast(election_id, {"ranking": ranking}, f"voter-{n}")
        assert cast.status_code == 201, cast.text
        position = cast.json()["position"]
    await _counted(voting, election_id, position)
    return election_id, position


async def _caught_up(voting: VotingClient, election_id: str, database_url: str) -> None:
    """Until the tally has counted the log as it stands (other tests' elections' entries
    included): an auditor's document then stays put."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        position = await log_head(conn)
    await _counted(voting, election_id, position)


async def _steady_hits(
    statements: Statements,
    read: Callable[[], Awaitable[list[int]]],
    caught_up: Callable[[], Awaitable[None]],
) -> None:
    """``read`` (cached documents, the positions they reflect) runs no counters statement.
    An auditor's document moves with the tally's position, which other elections' entries
    still being counted move: the tally is waited for up to the log's head first, and a read
    whose positions moved all the same is tried again, up to CATCH_UP seconds (a test never
    skips: one that cannot hold still fails)."""
    deadline = asyncio.get_running_loop().time() + CATCH_UP
    while True:
        await caught_up()
        warm = await read()
        statements.clear()
        positions = await read()
        if positions == warm:
            break
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"the tally kept moving for {CATCH_UP} s: {warm} then {positions}")
    assert statements.heads >= len(positions)
    assert statements.tally_counters == 0, statements.sent
    assert statements.published_counters == 0, statements.sent


async def test_a_cached_document_reads_no_counters(
    voting: VotingClient, http: httpx.AsyncClient, statements: Statements, database_url: str
) -> None:
    election_id, _ = await _stepped_election(voting, 4)
    url = f"/api/elections/{election_id}/results"

    async def anonymous() -> list[int]:
        first = await http.get(url)
        assert first.status_code == 200, first.text
        assert first.json()["stepped"] is True
        unchanged = await http.get(url, headers={"If-None-Match": first.headers["etag"]})
        assert unchanged.status_code == 304
        for path in (f"/elections/{election_id}", f"/elections/{election_id}/panel"):
            assert (await http.get(path)).status_code == 200
        voter = await http.get(url, headers=bearer(CLIENT))
        return [first.json()["position"], voter.json()["position"]]

    async def auditor() -> list[int]:
        answers = [await http.get(url, headers=bearer(AUDITOR)) for _ in range(3)]
        assert {a.json()["stepped"] for a in answers} == {False}
        return [a.json()["position"] for a in answers]

    caught_up = partial(_caught_up, voting, election_id, database_url)
    await _steady_hits(statements, anonymous, caught_up)
    await _steady_hits(statements, auditor, caught_up)


async def test_a_new_document_reads_only_the_counters_its_view_counts(
    voting: VotingClient, http: httpx.AsyncClient, statements: Statements
) -> None:
    election_id, position = await _stepped_election(voting, 2)
    url = f"/api/elections/{election_id}/results"
    for n in range(2):  # a publication: a new document for every view
        cast = await voting.cast(election_id, {"ranking": ["c"]}, f"late-comer-{n}")
        position = cast.json()["position"]
    await _counted(voting, election_id, position)  # (the auditor's, counted)
    statements.clear()
    stepped = (await http.get(url)).json()
    assert (stepped["stepped"], stepped["ballots"]) == (True, 4)
    assert statements.published_counters == 1
    assert statements.tally_counters == 0
    statements.clear()
    closed = await voting.close(election_id)
    final = await _counted(voting, election_id, int(closed["position"]))
    assert final["stepped"] is False
    assert statements.tally_counters >= 1
    assert statements.published_counters == 0  # (once closed: the tally's counters, exact)
    statements.clear()
    anonymous = (await http.get(url)).json()  # the same counters, another view
    assert (anonymous["stepped"], anonymous["ballots"]) == (False, 4)
    assert statements.tally_counters == 1
    assert statements.published_counters == 0


async def test_the_streams_hub_rebuilds_from_the_head_alone(
    voting: VotingClient,
    http: httpx.AsyncClient,
    statements: Statements,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams, "IDLE_REFRESH", 0.05)  # a round every 50 ms
    election_id, _ = await _stepped_election(voting, 4)
    path = f"/api/elections/{election_id}/results/stream"
    async with stream(http, path) as events:
        await events.next()
        statements.clear()
        for _ in range(400):  # (20 s: the machine is shared)
            await asyncio.sleep(0.05)
            if statements.heads >= 5:  # five rounds rebuilt the view
                break
        assert statements.heads >= 5
        assert statements.tally_counters == 0, statements.sent
        assert statements.published_counters == 0, statements.sent


async def test_counters_read_in_chunks_are_the_tally_s_in_its_order(
    voting: VotingClient, http: httpx.AsyncClient, database_url: str
) -> None:
    """More counters than one chunk: decoded line by line, they are what the tally holds,
    in jsonb's order of keys (as one jsonb decoded had them), and so are the published."""
    ids = [f"o{n}" for n in range(8)]
    election = await voting.create_election(
        "irv", options=[{"id": i, "label": i} for i in ids], live_results_step=7
    )
    election_id = election["id"]
    await voting.open(election_id)
    rnd = random.Random(5)
    position = 0
    for start in range(0, 3000, 1000):
        ballots = []
        for n in range(start, start + 1000):
            order = ids[:]
            rnd.shuffle(order)
            ballots.append({"voter_id": f"chunked-{n}", "ranking": order[: rnd.randint(3, 8)]})
        answer = await http.post(
            f"/api/elections/{election_id}/ballots/batch",
            json={"ballots": ballots},
            headers=bearer(CLIENT),
        )
        assert answer.status_code == 200, answer.text
        position = max(r["position"] for r in answer.json()["results"])
    await _counted(voting, election_id, position)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        snapshot = await tally_snapshot(conn, UUID(election_id))
        cursor = await conn.execute(
            "SELECT (SELECT jsonb_object_agg(key, value) FROM read_models.tally_counters "
            "WHERE election_id = %(id)s), published_counters "
            "FROM read_models.tally_elections WHERE election_id = %(id)s",
            {"id": UUID(election_id)},
        )
        row = await cursor.fetchone()
    assert row is not None
    counters, published = row
    assert len(counters) > CHUNK
    assert list(snapshot.counters.items()) == list(counters.items())
    assert snapshot.published_counters is not None
    assert list(snapshot.published_counters.items()) == list(published.items())


@pytest.mark.parametrize("method", ["irv", "borda"])
async def test_a_close_between_the_head_and_the_counters_reads_the_tally_s_counters(
    voting: VotingClient,
    http: httpx.AsyncClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    """A stepped reader's head says open, and the counters read after it say closed: the
    view then counts the tally's counters, read again with the published ones (a document
    counted from the published counters alone, keyed as closed, would show the election's
    final results without its last ballots). Borda reads before its turn, IRV in it."""
    election_id = await voting.open_election(method, public_results=True, live_results_step=2)
    url = f"/api/elections/{election_id}/results"
    position = 0
    for n in range(5):
        ranking = ["abc"[n % 3], "abc"[(n + 1) % 3]]
        cast = await voting.cast(election_id, {"ranking": ranking}, f"raced-{n}")
        assert cast.status_code == 201, cast.text
        position = cast.json()["position"]
    await _counted(voting, election_id, position)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        open_head = await queries.tally_head(conn, UUID(election_id))
    assert (open_head.closed_at, open_head.entries) == (None, 5)
    closed = await voting.close(election_id)
    for _ in range(200):  # closed and sealed (the auditor's documents, not this view's)
        final = await _counted(voting, election_id, int(closed["position"]))
        if final["final_chain_head"]:
            break
        await asyncio.sleep(0.05)
    assert final["final_chain_head"], final
    stale = [open_head]
    real_head = queries.tally_head

    async def head_once(conn: psycopg.AsyncConnection[Any], election: UUID) -> Any:
        return stale.pop() if stale else await real_head(conn, election)

    calls: list[dict[str, bool]] = []
    real_read = queries.read_snapshot

    async def read_snapshot(
        conn: psycopg.AsyncConnection[Any],
        election: UUID,
        *,
        counters: bool = False,
        published: bool = False,
    ) -> Any:
        calls.append({"counters": counters, "published": published})
        return await real_read(conn, election, counters=counters, published=published)

    monkeypatch.setattr(results, "tally_head", head_once)
    monkeypatch.setattr(results, "read_snapshot", read_snapshot)
    raced = await http.get(url)
    assert raced.status_code == 200, raced.text
    assert stale == []  # (the open head was read)
    body = raced.json()
    assert (body["stepped"], body["ballots"], body["status"]) == (False, 5, "closed")
    assert calls == [
        {"counters": False, "published": True},
        {"counters": True, "published": True},
    ]
    again = await http.get(url)  # the same document, read as it is now
    assert again.status_code == 200, again.text
    assert again.content == raced.content


async def test_identical_misses_of_many_rankings_share_one_read(
    voting: VotingClient,
    http: httpx.AsyncClient,
    statements: Statements,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ranked tally counted inline when small (Borda) holds one counter per distinct
    ranking: where its head allows more than the inline limit, its counters are read in
    the tabulation turn, where concurrent identical misses share one read (read before the
    turn, 8 anonymous GETs after a publication read them 4 times)."""
    ids = ["a", "b", "c", "d"]
    election = await voting.create_election(
        "borda",
        options=[{"id": i, "label": i} for i in ids],
        live_results_step=2,
        public_results=True,
    )
    election_id = election["id"]
    await voting.open(election_id)
    rnd = random.Random(3)
    ballots = []
    for n in range(tabulations.INLINE_COUNTERS):  # (more entries than the inline limit)
        order = ids[:]
        rnd.shuffle(order)
        ballots.append({"voter_id": f"shared-{n}", "ranking": order[: rnd.randint(1, 4)]})
    answer = await http.post(
        f"/api/elections/{election_id}/ballots/batch",
        json={"ballots": ballots},
        headers=bearer(CLIENT),
    )
    assert answer.status_code == 200, answer.text
    await _counted(voting, election_id, max(r["position"] for r in answer.json()["results"]))
    real_read = queries.read_snapshot

    async def slow_read(conn: psycopg.AsyncConnection[Any], election: UUID, **kw: bool) -> Any:
        await asyncio.sleep(0.2)  # (every miss reaches its read before the first is done)
        return await real_read(conn, election, **kw)

    monkeypatch.setattr(results, "read_snapshot", slow_read)
    url = f"/api/elections/{election_id}/results"
    statements.clear()
    answers = await asyncio.gather(*(http.get(url) for _ in range(8)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["ballots"] == tabulations.INLINE_COUNTERS
    assert statements.published_counters == 1, statements.sent
    assert statements.tally_counters == 0


async def test_a_sealed_document_is_kept_once_and_looked_up_first(
    voting: VotingClient,
    http: httpx.AsyncClient,
    statements: Statements,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed election's document is kept with its signed chain head alone once that is
    sealed (not also plain, each charged its full size), and a read looks it up first: a
    plain document let go is not counted again while the sealed one is kept."""
    election_id = await voting.open_election("plurality", public_results=True)
    for n in range(3):
        cast = await voting.cast(election_id, {"choice": "abc"[n]}, f"sealed-{n}")
        assert cast.status_code == 201, cast.text
    closed = await voting.close(election_id)
    for _ in range(200):  # sealed (the auditor's documents, not this view's)
        final = await _counted(voting, election_id, int(closed["position"]))
        if final["final_chain_head"]:
            break
        await asyncio.sleep(0.05)
    assert final["final_chain_head"], final
    kept: list[tuple[SizedCache, tuple[object, ...]]] = []
    put = SizedCache.put

    def watched_put(self: SizedCache, key: Any, value: Any, size: int) -> None:
        if isinstance(key, tuple) and key[:2] == ("sealed", UUID(election_id)):
            kept.append((self, key))
        put(self, key, value, size)

    monkeypatch.setattr(SizedCache, "put", watched_put)
    url = f"/api/elections/{election_id}/results"
    first = await http.get(url)
    assert first.status_code == 200, first.text
    assert first.json()["final_chain_head"] == final["final_chain_head"]
    [(cache, sealed)] = [(c, k) for c, k in kept if k[3] is False]  # (not the auditor's)
    assert sealed in cache
    assert sealed[1:] not in cache  # (the plain document: let go)
    statements.clear()
    again = await http.get(url)
    assert again.content == first.content
    assert statements.heads == 1, statements.sent
    assert statements.tally_counters == 0, statements.sent
    assert not any("audit_checkpoints" in q for q in statements.sent), statements.sent
