"""Results from the tally read model: what they count, when, and for whom."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from api import recounts as recounts_module
from api import turns
from domain.ballot import Ballot
from infra.audit import records
from infra.store import open_application
from infra.store.writer import GroupCommitWriter
from projections import results as results_projection
from projections.runtime import ProjectionRunner
from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import ADMIN, AUDITOR, CLIENT, OPERATOR, running_api, settings_for

REBUILD_WITHIN = 120.0  # seconds for a tally rebuild over the session's shared log


@pytest.fixture
async def raw_writer(database_url: str) -> AsyncIterator[GroupCommitWriter]:
    """A writer that appends without the API's checks, to stage what races produce."""
    app = open_application(database_url)
    writer = GroupCommitWriter(app, database_url)
    app.writer = writer
    writer.start()
    yield writer
    await writer.stop()
    app.close()


def _figures(results: dict[str, object], stat: str) -> dict[str, object]:
    options = results["options"]
    assert isinstance(options, list)
    return {option["id"]: option[stat] for option in options}


async def test_revisions_and_withdrawals_move_the_tally(voting: VotingClient) -> None:
    election_id = await voting.open_election("approval", allow_revote=True)
    for voter, approve in (("v1", ["a"]), ("v2", ["a", "b"]), ("v3", ["c"])):
        assert (await voting.cast(election_id, {"approve": approve}, voter)).status_code == 201
    revised = await voting.cast(election_id, {"approve": ["b", "c"]}, "v1")
    assert revised.status_code == 200
    withdrawn = await voting.http.post(
        f"/api/elections/{election_id}/withdrawals",
        json={"voter_id": "v3"},
        headers=bearer(CLIENT),
    )
    assert withdrawn.status_code == 200
    results = await voting.results(election_id, min_position=withdrawn.json()["position"])
    body = results.json()
    assert body["position"] >= withdrawn.json()["position"]
    assert body["ballots"] == 2
    assert _figures(body, "approvals") == {"a": 1, "b": 2, "c": 1}
    assert body["winners"] == ["b"]


async def test_min_position_gives_read_your_writes(voting: VotingClient) -> None:
    election_id = await voting.open_election("plurality")
    for n in range(20):
        receipt = (await voting.cast(election_id, {"choice": "c"}, f"reader-{n}")).json()
        results = (await voting.results(election_id, min_position=receipt["position"])).json()
        assert results["position"] >= receipt["position"]
        assert results["ballots"] == n + 1


async def test_ballots_after_the_close_are_late_and_not_counted(
    voting: VotingClient, raw_writer: GroupCommitWriter, database_url: str
) -> None:
    election_id = await voting.open_election("plurality")
    for voter in ("a1", "a2"):
        await voting.cast(election_id, {"choice": "a"}, voter)
    closed = await voting.close(election_id)
    late = Ballot(election_id=election_id, vote={"choice": "b"}, request_key=None)
    position = (await raw_writer.append(late)).position
    assert position > closed["position"]
    body = (await voting.results(election_id, min_position=position)).json()
    assert body["status"] == "closed"
    assert body["closed_at_position"] == closed["position"]
    assert body["ballots"] == 2
    assert _figures(body, "votes") == {"a": 2, "b": 0, "c": 0}
    assert body["late_ballots"] == 1


async def test_after_close_results_are_for_admins_until_the_close(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election(
        "irv", results_visibility="after_close", live_results_step=1
    )
    receipt = (await voting.cast(election_id, {"ranking": ["b"]}, "v")).json()
    assert_problem(
        await voting.results(election_id, token=CLIENT), 403, "publishes its results when it closes"
    )
    admin_view = await voting.results(election_id, token=ADMIN, min_position=receipt["position"])
    assert admin_view.status_code == 200
    assert admin_view.json()["winners"] == ["b"]
    closed = await voting.close(election_id)
    public = await voting.results(election_id, token=CLIENT, min_position=closed["position"])
    assert public.status_code == 200
    assert public.json()["rounds"]


async def test_results_need_credentials_and_a_known_election(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    assert_problem(await http.get(f"/api/elections/{election_id}/results"), 401, "Bearer")
    missing = "00000000-0000-0000-0000-000000000000"
    assert_problem(await voting.results(missing), 404, "there is no election")
    problem = assert_problem(
        await http.get(
            f"/api/elections/{election_id}/results",
            params={"min_position": "soon"},
            headers=bearer(ADMIN),
        ),
        422,
        "min_position must be a whole number",
    )
    assert problem["field"] == "min_position"


async def _tally(http: httpx.AsyncClient) -> dict[str, Any]:
    found = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
    tally: dict[str, Any] = {p["name"]: p for p in found.json()["projections"]}["tally"]
    return tally


async def test_after_a_rebuild_results_come_from_the_new_version_not_a_cache(
    voting: VotingClient, http: httpx.AsyncClient, database_url: str
) -> None:
    """A rebuild (after a projection bug fix, say) changes the counts at the same log
    position: what the API serves must change with it."""
    election_id = await voting.open_election()
    for choice in "aab":
        receipt = (await voting.cast(election_id, {"choice": choice}, voting.voter())).json()
    deadline = time.monotonic() + REBUILD_WITHIN  # (not a results read: it would be cached)
    while (await _tally(http))["position"] < receipt["position"]:
        assert time.monotonic() < deadline, "the tally did not reach the ballots"
        await asyncio.sleep(0.02)
    # The live version's counts are wrong (as a bug would leave them), and served so.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE read_models.tally_counters SET value = value + 5 "
            "WHERE election_id = %s AND key = 'n'",
            (election_id,),
        )
    assert (await voting.results(election_id)).json()["ballots"] == 8
    version = (await _tally(http))["version"]
    started = await http.post("/api/admin/projections/tally/rebuild", headers=bearer(OPERATOR))
    assert started.status_code == 202, started.text
    # A rebuild replays the session's whole shared log: on a loaded CI run with coverage
    # that takes far longer than on a developer's machine.
    deadline = time.monotonic() + REBUILD_WITHIN
    while True:
        tally = await _tally(http)
        if tally["version"] > version and tally["state"] == "live":
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the rebuild did not switch within {REBUILD_WITHIN} s")
        await asyncio.sleep(0.02)
    assert (await voting.results(election_id)).json()["ballots"] == 3


async def test_results_at_a_position_are_counted_once(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``?at=`` read tabulated again, on the event loop: for a ranked election of
    many options, 2 s a read, to anyone (review helper-41). The log up to a position never
    changes, so its results are kept."""
    import api.routes.results as results_module

    counted = 0
    real = results_module.results_document  # type: ignore[attr-defined]

    def counting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal counted
        counted += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(results_module, "results_document", counting)
    election_id = await voting.open_election("irv")
    cast = await voting.cast(election_id, {"ranking": ["a", "b"]}, "kept")
    at = cast.json()["position"]
    answers = [
        await http.get(f"/api/elections/{election_id}/results?at={at}", headers=bearer(AUDITOR))
        for _ in range(3)
    ]
    assert {a.status_code for a in answers} == {200}
    assert answers[0].json() == answers[2].json()
    assert counted == 1


async def test_an_stv_election_fills_its_seats_and_reports_every_stage(
    voting: VotingClient,
) -> None:
    """Two seats of a, b, c; 7 ballots: quota floor(7/3)+1 = 3. a (4) is elected and its
    surplus 1 moves at 0.25 to c (3 papers a>c: 0.75); b (2) and c (1.75): c is excluded
    and b, the one continuing option for the one seat left, is elected."""
    election = await voting.create_election("stv", seats=2)
    assert election["seats"] == 2
    election_id = election["id"]
    await voting.open(election_id)
    ballots = [["a", "c"]] * 3 + [["a"], ["b"], ["b", "a"], ["c"]]
    for n, order in enumerate(ballots):
        cast = await voting.cast(election_id, {"ranking": order}, f"v{n}")
        assert cast.status_code == 201, cast.text
    closed = await voting.close(election_id)
    body = (await voting.results(election_id, min_position=closed["position"])).json()
    assert body["method"] == "stv"
    assert body["winners"] == ["a", "b"]
    assert (body["seats"], body["quota"]) == (2, "3.00000")
    stages = body["stages"]
    assert stages[1]["from"] == "a"
    assert (stages[1]["surplus"], stages[1]["transfer_value"]) == ("1.00000", "0.25000")
    assert stages[1]["counts"] == {"b": "2.00000", "c": "1.75000"}
    assert stages[1]["exhausted"] == "0.25000"
    assert stages[2]["excluded"] == ["c"]


@pytest.mark.parametrize(
    ("rules", "detail"),
    [
        ({"method": "irv", "seats": 2}, "seats applies to stv only"),
        ({"method": "stv", "seats": 0}, "seats must be from 1 to one fewer"),
        ({"method": "stv", "seats": 3}, "seats must be from 1 to one fewer"),
        ({"method": "stv", "seats": "2"}, "seats"),
    ],
)
async def test_bad_seats_are_refused_with_a_clear_detail(
    voting: VotingClient, rules: dict[str, object], detail: str
) -> None:
    body = {"title": "Council", "options": [{"id": i, "label": i} for i in "abc"], **rules}
    response = await voting.http.post("/api/elections", json=body, headers=bearer(ADMIN))
    assert_problem(response, 422, detail)


# Time travel at scale (scale review: every distinct ?at= recounted the whole election on
# the event loop, 3-7 s each for 60-95k ballots, for any reader, even after the close).


@dataclass
class _Recounts:
    """Every recount from the log, counted and optionally held: each replay ends in one
    ``recounted_snapshot``, wherever the serving module took it from."""

    positions: list[int] = field(default_factory=list)
    on_loop: list[bool] = field(default_factory=list)  # whether each ran on an event loop
    hold: bool = False
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> _Recounts:
        real = results_projection.recounted_snapshot

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.positions.append(args[1])
            try:
                asyncio.get_running_loop()
                self.on_loop.append(True)
            except RuntimeError:
                self.on_loop.append(False)
            if self.hold:
                self.started.set()
                self.release.wait(5)  # (on the event loop, this stalls every request)
            return real(*args, **kwargs)

        for name in ("api.routes.results", "api.recounts"):
            module = sys.modules.get(name)
            if getattr(module, "recounted_snapshot", None) is real:
                monkeypatch.setattr(module, "recounted_snapshot", counted)
        return self


async def _at_as(http: httpx.AsyncClient, election_id: str, at: int, token: str | None) -> Any:
    headers = {} if token is None else bearer(token)
    response = await http.get(
        f"/api/elections/{election_id}/results", params={"at": at}, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_every_position_after_the_close_is_the_final_count_recounted_once(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing counts after the close: ``at`` past it is the close, one recount for all."""
    election_id = await voting.open_election("irv", public_results=True)
    for n, ranking in enumerate((["a", "b"], ["b"], ["a", "c"])):
        await voting.cast(election_id, {"ranking": ranking}, f"final-{n}")
    closed = (await voting.close(election_id))["position"]
    other = await voting.open_election("plurality")
    later = [
        (await voting.cast(other, {"choice": "a"}, f"after-{n}")).json()["position"]
        for n in range(4)
    ]
    recounts = _Recounts().install(monkeypatch)
    final = await _at_as(http, election_id, closed, AUDITOR)
    assert (final["position"], final["status"], final["ballots"]) == (closed, "closed", 3)
    for at in [closed + 1, *later, later[-1] + 5, 10**15]:
        for token in (AUDITOR, CLIENT, None):
            assert await _at_as(http, election_id, at, token) == final, (at, token)
    assert recounts.positions == [closed]


async def test_stepped_readers_positions_within_one_step_share_one_recount(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader of stepped results sees at ``at`` the last publication: every position
    up to the next one answers the same, from one recount."""
    election_id = await voting.open_election("approval")  # steps of 10
    other = await voting.open_election("plurality")
    positions = []
    for n in range(15):
        cast = await voting.cast(election_id, {"approve": ["abc"[n % 3]]}, f"step-{n}")
        positions.append(cast.json()["position"])
        await voting.cast(other, {"choice": "b"}, f"between-{n}")  # positions not its own
    recounts = _Recounts().install(monkeypatch)
    within = list(range(positions[9], positions[14] + 3))
    random.Random(7).shuffle(within)
    seen = [await _at_as(http, election_id, at, CLIENT) for at in within]
    assert all(body == seen[0] for body in seen)
    assert (seen[0]["position"], seen[0]["ballots"], seen[0]["stepped"]) == (positions[9], 10, True)
    assert len(recounts.positions) == 1
    # Another step (here: nothing published yet) is one more, whatever the position.
    before = [await _at_as(http, election_id, at, ADMIN) for at in positions[8::-1]]
    assert all(body["ballots"] == 0 and body["stepped"] for body in before)
    assert len(recounts.positions) == 2


async def test_a_running_recount_blocks_neither_the_loop_nor_others_more_than_a_second(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    election_id = await voting.open_election("irv", live_results_step=1)
    positions = [
        (await voting.cast(election_id, {"ranking": ["a", "b"]}, f"slow-{n}")).json()["position"]
        for n in range(3)
    ]
    recounts = _Recounts(hold=True).install(monkeypatch)
    url = f"/api/elections/{election_id}/results"
    first = asyncio.create_task(http.get(url, params={"at": positions[1]}, headers=bearer(AUDITOR)))
    assert await asyncio.to_thread(recounts.started.wait, 10)
    loop = asyncio.get_running_loop()
    began = loop.time()
    health = await http.get("/api/health")
    assert health.status_code == 200
    assert loop.time() - began < 0.5
    assert not first.done()
    began = loop.time()
    busy = await http.get(url, params={"at": positions[2]}, headers=bearer(ADMIN))
    assert loop.time() - began < 2.0
    assert_problem(busy, 503, "a recount is running")
    assert busy.headers["retry-after"] == "2"
    recounts.release.set()
    answered = await first
    assert answered.status_code == 200, answered.text
    assert answered.json()["ballots"] == 2
    assert recounts.on_loop == [False]


async def test_identical_requests_share_the_recount_running(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One that asks what is being recounted already waits for that recount, however long
    it takes, instead of queueing for another (or a 503 after a second)."""
    election_id = await voting.open_election("irv", public_results=True, live_results_step=1)
    positions = [
        (await voting.cast(election_id, {"ranking": ["b"]}, f"shared-{n}")).json()["position"]
        for n in range(2)
    ]
    recounts = _Recounts(hold=True).install(monkeypatch)
    url = f"/api/elections/{election_id}/results"
    asks = [asyncio.create_task(http.get(url, params={"at": positions[0]})) for _ in range(2)]
    assert await asyncio.to_thread(recounts.started.wait, 10)
    # A distinct recount is refused after a second; the identical one still waits.
    busy = await http.get(url, params={"at": positions[1]})
    assert_problem(busy, 503, "a recount is running")
    assert not any(ask.done() for ask in asks)
    recounts.release.set()
    answers = [await ask for ask in asks]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["ballots"] == 1
    assert recounts.positions == [positions[0]]
    assert recounts.on_loop == [False]


# Live results off the event loop (review helper-75: an STV election of 100 options and
# 25,000 rankings took 1.08 s of CPU a document, on the loop, at every new entry: ballots
# to other elections of the process waited up to 2.1 s meanwhile).

MANY = [f"o{n}" for n in range(12)]  # more options than a tally counted inline has


@dataclass
class _Documents:
    """Every live results document counted, optionally held (as a slow count would be)."""

    on_loop: list[bool] = field(default_factory=list)
    held_at: list[float] = field(default_factory=list)
    hold: bool = False
    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    made: list[dict[str, Any]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> _Documents:
        import api.routes.results as results_module

        real = results_projection.results_document

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                self.on_loop.append(True)
            except RuntimeError:
                self.on_loop.append(False)
            if self.hold:
                self.held_at.append(time.monotonic())
                self.started.set()
                self.release.wait(5)  # (on the event loop, this stalls every request)
            document = real(*args, **kwargs)
            self.made.append(document)
            return document

        monkeypatch.setattr(results_module, "results_document", counted)
        return self


async def _large_election(voting: VotingClient, **rules: Any) -> tuple[str, int]:
    """An election whose documents are counted off the loop, with a ballot counted."""
    body = {"options": [{"id": o, "label": o} for o in MANY], "live_results_step": 1}
    election_id = await voting.open_election("irv", **body, **rules)
    cast = await voting.cast(election_id, {"ranking": MANY[::-1]}, "large")
    assert cast.status_code == 201, cast.text
    return election_id, cast.json()["position"]


def _live(http: httpx.AsyncClient, election_id: str, at_least: int) -> Any:
    return asyncio.ensure_future(
        http.get(
            f"/api/elections/{election_id}/results",
            params={"min_position": at_least},
            headers=bearer(AUDITOR),
        )
    )


async def test_a_slow_results_count_does_not_hold_up_ballots_to_other_elections(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    large, position = await _large_election(voting)
    other = await voting.open_election("plurality")
    documents = _Documents(hold=True).install(monkeypatch)
    reading = _live(http, large, position)
    assert await asyncio.to_thread(documents.started.wait, 10)
    cast = await voting.cast(other, {"choice": "a"}, "meanwhile")
    answered = time.monotonic()
    assert cast.status_code == 201, cast.text
    # Answered while the count runs (on the loop, it waited the whole count: 5 s here).
    assert answered - documents.held_at[0] < 1.0
    assert not reading.done()
    documents.release.set()
    read = await reading
    assert read.status_code == 200, read.text
    assert read.json()["ballots"] == 1
    assert documents.on_loop == [False]


async def test_identical_reads_share_one_count_and_others_wait_their_turn(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.tabulations as tabulations_module

    monkeypatch.setattr(tabulations_module, "TABULATION_WAIT", 0.5)
    large, _ = await _large_election(voting)
    second, second_position = await _large_election(voting)
    documents = _Documents(hold=True).install(monkeypatch)
    # (At the second's position: an auditor's document is keyed by the tally's position,
    # and one that moved between the three reads made them three documents.)
    reads = [_live(http, large, second_position) for _ in range(3)]
    assert await asyncio.to_thread(documents.started.wait, 10)
    # Another document waits for its turn (one count at a time per process), then 503.
    busy = await _live(http, second, second_position)
    assert_problem(busy, 503, "counting other results documents")
    assert busy.headers["retry-after"] == "2"
    assert not any(read.done() for read in reads)
    documents.release.set()
    answers = [await read for read in reads]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].content == answers[1].content == answers[2].content
    assert documents.on_loop == [False]  # one count for the three
    documents.hold = False
    later = await _live(http, second, second_position)  # its turn now: counted
    assert later.status_code == 200, later.text
    assert documents.on_loop == [False, False]


async def test_a_tiny_tally_is_counted_inline_and_documents_do_not_change(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted inline (a thread hop costs more than the count) or in a thread, what is
    served is the document ``results_document`` made, byte for byte."""
    small = await voting.open_election("schulze", live_results_step=1)
    position = (await voting.cast(small, {"ranking": ["b", "a"]}, "tiny")).json()["position"]
    large, large_position = await _large_election(voting)
    documents = _Documents().install(monkeypatch)
    for election_id, at_least in ((small, position), (large, large_position)):
        read = await _live(http, election_id, at_least)
        assert read.status_code == 200, read.text
        assert read.content == orjson.dumps(documents.made[-1])
        assert read.json()["ballots"] == 1
    assert documents.on_loop == [True, False]


async def test_a_small_tally_of_a_method_that_searches_ties_is_counted_off_the_loop(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IRV (edition 2), STV and Ranked Pairs explore every choice a tie leaves open: ballots
    built to tie made a 10-option IRV or STV document cost 100s of ms, on the loop while
    its size alone decided (review: /api/health p99 146 ms while an auditor re-read one)."""
    options = [{"id": o, "label": o} for o in MANY[:10]]
    # Every option ranked first once, second once...: every elimination is a tie.
    square = [[MANY[(i + j) % 10] for j in range(10)] for i in range(10)]
    for method, rules in (("irv", {}), ("stv", {"seats": 3}), ("ranked_pairs", {})):
        election_id = await voting.open_election(
            method, options=options, live_results_step=1, **rules
        )
        for n, ranking in enumerate(square):
            cast = await voting.cast(election_id, {"ranking": ranking}, f"{method}-{n}")
            assert cast.status_code == 201, cast.text
        documents = _Documents().install(monkeypatch)
        read = await _live(http, election_id, cast.json()["position"])
        assert read.status_code == 200, read.text
        assert read.json()["ballots"] == 10
        assert read.content == orjson.dumps(documents.made[-1])
        assert documents.on_loop == [False], method


# Positions, caches and turns of results and time travel (review of time travel and
# streams, 3-6).


async def test_two_processes_serve_one_document_for_one_state_of_an_election(
    voting: VotingClient, database_url: str
) -> None:
    """A document keyed by one position and showing another: each process served the
    tally's position as it stood when it first counted the election's state, so two
    processes gave two documents (and ETags) for one state of it (review 3)."""
    election_id = await voting.open_election("plurality", live_results_step=1)
    mine = (await voting.cast(election_id, {"choice": "a"}, "two-processes")).json()["position"]
    first = await voting.results(election_id, CLIENT, min_position=mine)
    other = await voting.open_election("plurality")
    later = (await voting.cast(other, {"choice": "b"}, "elsewhere")).json()["position"]
    async with (
        running_api(settings_for(database_url), projections=("tally",)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        second = await VotingClient(http).results(election_id, CLIENT, min_position=later)
    assert second.status_code == first.status_code == 200
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert first.json()["position"] == mine


def _live_documents(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The live documents counted (by their tally position): recounts' are not."""
    import api.routes.results as results_module

    counted: list[int] = []
    real = results_projection.results_document

    def counting(election_id: Any, snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        if snapshot.version:  # (a recounted snapshot has none: it is no read model's)
            counted.append(snapshot.position)
        return real(election_id, snapshot, *args, **kwargs)

    monkeypatch.setattr(results_module, "results_document", counting)
    return counted


async def test_a_flood_of_time_travel_does_not_evict_live_results(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One cache of 512 entries held both: every distinct ``?at=`` added two or three, so
    a few hundred of them evicted every live document of the process (review 4)."""
    election_id = await voting.open_election("plurality", live_results_step=1)
    start = (await voting.cast(election_id, {"choice": "a"}, "flood")).json()["position"]
    other = await voting.open_election("plurality")
    batch = await http.post(
        f"/api/elections/{other}/ballots/batch",
        json={"ballots": [{"voter_id": f"flood-{n}", "choice": "b"} for n in range(300)]},
        headers=bearer(CLIENT),
    )
    assert batch.status_code == 200, batch.text
    end = max(r["position"] for r in batch.json()["results"])
    await voting.results(other, AUDITOR, min_position=end)
    counted = _live_documents(monkeypatch)
    live = await voting.results(election_id, CLIENT)
    assert len(counted) == 1
    url = f"/api/elections/{election_id}/results"
    for at in range(start, start + 300):
        answer = await http.get(url, params={"at": at}, headers=bearer(AUDITOR))
        assert answer.status_code == 200, answer.text
    again = await voting.results(election_id, CLIENT)
    assert again.content == live.content
    assert len(counted) == 1  # kept


def _slow_first_read(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """The first recount's log read waits for ``release``; ``reading`` says it began."""
    reading, release = asyncio.Event(), asyncio.Event()
    entries = records.election_entries

    async def slow_entries(conn: Any, election: Any, upto: int) -> Any:
        if not reading.is_set():
            reading.set()
            await release.wait()
        async for entry in entries(conn, election, upto):
            yield entry

    monkeypatch.setattr(recounts_module, "election_entries", slow_entries)
    monkeypatch.setattr(recounts_module, "RECOUNT_WAIT", 0.3)
    return reading, release


async def test_anonymous_readers_cannot_take_an_auditors_turn_to_recount(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One recount at a time per process, whoever asked: anonymous readers of a public
    election, asking ``?at=`` the head after each ballot, kept auditors at 503 (review 5).
    Readers with a role have a turn of their own."""
    election_id = await voting.open_election("plurality", public_results=True, live_results_step=1)
    positions = [
        (await voting.cast(election_id, {"choice": "a"}, f"turns-{n}")).json()["position"]
        for n in range(3)
    ]
    # (Both positions before the last publication: two recounts. Ahead of it, a reader
    # without a role gets that publication, one recount for all.)
    reading, release = _slow_first_read(monkeypatch)
    url = f"/api/elections/{election_id}/results"
    held = asyncio.create_task(http.get(url, params={"at": positions[0]}))
    await asyncio.wait_for(reading.wait(), 10)
    try:
        busy = await http.get(url, params={"at": positions[1]})
        assert_problem(busy, 503, "a recount is running")
        audited = await http.get(url, params={"at": positions[1]}, headers=bearer(AUDITOR))
        assert audited.status_code == 200, audited.text
        assert audited.json()["ballots"] == 2
        assert not held.done()
    finally:
        release.set()
    assert (await held).status_code == 200


async def test_recounts_for_all_but_auditors_and_admins_owe_three_times_as_long_as_they_took(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anonymous readers asking distinct positions of a large STV election kept one recount
    running back to back, a core's CPU per process, and ballots' p99 went from 57 ms to
    177-524 ms; a client or operator token took the auditors' turn (DoS review). Now the
    turn of everyone but auditors and admins owes a rest after a recount three times as
    long as it took: past BURST seconds owed a new recount is a 503 at once, with the
    seconds until it may start, while what was counted already is answered, and auditors
    and admins recount as before."""
    monkeypatch.setattr(recounts_module, "REST_FACTOR", 3.0)
    monkeypatch.setattr(recounts_module, "BURST", 3.0)
    monkeypatch.setattr(recounts_module, "RECOUNT_WAIT", 0.2)
    election_id = await voting.open_election("plurality", public_results=True, live_results_step=1)
    positions = [
        (await voting.cast(election_id, {"choice": "a"}, f"rest-{n}")).json()["position"]
        for n in range(3)
    ]
    # The recounts' clocks (wall and CPU), past any rest an earlier test left, and standing
    # still but for the first recount's read of the log, which takes 2 s of CPU by them
    # (the others none): durations and rests are exact, whatever this machine's load.
    now = [float(int(time.monotonic()) + 1_000)]
    monkeypatch.setattr(recounts_module, "clock", lambda: now[0])
    monkeypatch.setattr(recounts_module, "cpu_clock", lambda: now[0])
    reads: list[int] = []
    entries = records.election_entries

    async def two_seconds_first(conn: Any, election: Any, upto: int) -> Any:
        if not reads:
            now[0] += 2.0
        reads.append(upto)
        async for entry in entries(conn, election, upto):
            yield entry

    monkeypatch.setattr(recounts_module, "election_entries", two_seconds_first)
    lanes: list[tuple[Any, bool]] = []
    shared = recounts_module.run_shared

    async def noted(services: Any, key: Any, work: Any, *, role: bool) -> Any:
        lanes.append((services, role))
        return await shared(services, key, work, role=role)

    monkeypatch.setattr(recounts_module, "run_shared", noted)
    url = f"/api/elections/{election_id}/results"
    try:
        first = await http.get(url, params={"at": positions[0]})
        assert first.status_code == 200, first.text
        assert len(reads) == 1
        for token in (None, CLIENT, OPERATOR):
            headers = {} if token is None else bearer(token)
            resting = await http.get(url, params={"at": positions[1]}, headers=headers)
            problem = assert_problem(resting, 503, "3 times as long as it took")
            assert problem["type"] == "urn:cardinal-vote:problem:busy"
            # (4 x 2 s owed from its start, 2 s gone: 6 s, of which 3 may be owed)
            assert resting.headers["retry-after"] == "3"
        assert len(reads) == 1  # refused before any read of the log
        again = await http.get(url, params={"at": positions[0]})  # counted: answered
        assert again.status_code == 200, again.text
        assert again.content == first.content
        # (An admin's document at a position is everyone's but an auditor's: asked at
        # ``positions[1]``, it would be answered to the others below, counted already.)
        for token, at, ballots in ((AUDITOR, positions[1], 2), (ADMIN, positions[2], 3)):
            answered = await http.get(url, params={"at": at}, headers=bearer(token))
            assert answered.status_code == 200, answered.text
            assert answered.json()["ballots"] == ballots
        now[0] += 2.5
        nearly = await http.get(url, params={"at": positions[1]})
        assert_problem(nearly, 503, "retry in 1 s")
        assert nearly.headers["retry-after"] == "1"
        now[0] += 0.5  # 3 s owed: no more than may be
        rested = await http.get(url, params={"at": positions[1]}, headers=bearer(CLIENT))
        assert rested.status_code == 200, rested.text
        assert rested.json()["ballots"] == 2
        assert [role for _, role in lanes] == [
            *(False, False, False, False),
            *(True, True),
            *(False, False),
        ]
    finally:
        if lanes:  # (the session's API serves the tests after this one: no rest left)
            lanes[0][0].recounts_rest_until = 0.0


def _count_log_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Where each recount's read of an election's entries in the log stopped, as it reads."""
    reads: list[int] = []
    entries = records.election_entries

    async def counted_entries(conn: Any, election: Any, upto: int) -> Any:
        reads.append(upto)
        async for entry in entries(conn, election, upto):
            yield entry

    monkeypatch.setattr(recounts_module, "election_entries", counted_entries)
    return reads


async def test_what_was_never_published_or_never_existed_costs_no_recount(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A position before an after-close election's close was recounted, then refused;
    one before an election existed replayed the log up to its head each time, and kept
    nothing of the 404 (review 6). Both are answered now without reading the log."""
    before = (await voting.cast(await voting.open_election(), {"choice": "a"}, "x")).json()
    election_id = await voting.open_election("plurality", results_visibility="after_close")
    cast = await voting.cast(election_id, {"choice": "b"}, "unpublished")
    close = (await voting.close(election_id))["position"]
    await voting.results(election_id, AUDITOR, min_position=close)
    reads = _count_log_reads(monkeypatch)
    url = f"/api/elections/{election_id}/results"
    for _ in range(3):
        # (first: with no step index of the election kept, the 404 replayed the log)
        missing = await http.get(url, params={"at": before["position"]}, headers=bearer(CLIENT))
        assert_problem(missing, 404, "did not exist yet")
        refused = await http.get(
            url, params={"at": cast.json()["position"]}, headers=bearer(CLIENT)
        )
        assert_problem(refused, 403, "published no results before its close")
    assert reads == []
    final = await http.get(url, params={"at": close}, headers=bearer(CLIENT))
    assert final.status_code == 200, final.text
    assert final.json()["ballots"] == 1
    assert len(reads) == 1


async def test_time_travel_ahead_replays_an_election_again_only_once_it_changed(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?at=`` the head, asked after each ballot anywhere, replayed the election each
    time the head had moved: a recount per ballot of any election, and a latency that
    told whether the log had moved (review 5). Its step index is carried forward instead
    while the election has no new entry."""
    election_id = await voting.open_election("plurality", public_results=True, live_results_step=1)
    mine = (await voting.cast(election_id, {"choice": "a"}, "ahead")).json()["position"]
    # (Ahead of the election's last publication, a reader without a role gets that one,
    # as the log has it, however far behind the tally is: counted.)
    other = await voting.open_election("plurality")
    reads = _count_log_reads(monkeypatch)
    url = f"/api/elections/{election_id}/results"
    seen = []
    for n in range(4):
        await voting.cast(other, {"choice": "b"}, f"ahead-{n}")
        answer = await http.get(url, params={"at": 10**12})
        assert answer.status_code == 200, answer.text
        seen.append(answer.content)
    assert len(set(seen)) == 1
    assert orjson.loads(seen[0])["position"] == mine
    assert len(reads) == 1
    again = await voting.cast(election_id, {"choice": "b"}, "ahead-again")  # its own
    answer = orjson.loads((await http.get(url, params={"at": 10**12})).content)
    assert (answer["position"], answer["ballots"]) == (again.json()["position"], 2)
    assert len(reads) == 2


def _hold_the_tally(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The tally applies nothing more until the returned event is set (the other
    projections go on)."""
    release = asyncio.Event()
    apply_page = ProjectionRunner.apply_page

    async def held(self: ProjectionRunner, *args: Any, **kwargs: Any) -> Any:
        if self.name == "tally":
            await release.wait()
        return await apply_page(self, *args, **kwargs)

    monkeypatch.setattr(ProjectionRunner, "apply_page", held)
    return release


@pytest.mark.parametrize("step", [1, 2])
async def test_time_travel_to_a_voters_own_receipt_counts_it_while_the_tally_lags(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    """For a reader without a role, ``?at=N`` at or after an open election's last
    publication is taken as that publication: it was the tally's, so while the tally
    lagged, ``?at=<own receipt>`` right after casting answered an older publication,
    without the voter's ballot and with no Warning (review of a832704). The publication
    is worked out from the log now: the tally's lag does not change the answer."""
    election_id, tokens = await voting.token_election(
        "plurality", tokens=2 * step, live_results_step=step
    )
    first = 0
    for token in tokens[:step]:
        first = (await voting.cast(election_id, {"choice": "a"}, token=token)).json()["position"]
    await voting.results(election_id, AUDITOR, min_position=first)  # the tally has those
    release = _hold_the_tally(monkeypatch)
    try:
        cast = [
            (await voting.cast(election_id, {"choice": "b"}, token=token)).json()["position"]
            for token in tokens[step:]
        ]
        mine = cast[-1]
        url = f"/api/elections/{election_id}/results"
        answer = await http.get(url, params={"at": mine}, headers=bearer(tokens[-1]))
        lagging = await http.get(url, headers=bearer(AUDITOR))
        assert lagging.json()["position"] < mine  # (the tally is behind the receipt)
        assert answer.status_code == 200, answer.text
        assert "warning" not in answer.headers
        body = answer.json()
        assert (body["position"], body["ballots"]) == (mine, 2 * step)
        assert body["recounted_from_log"] is True
        # Before the voter's step is complete: the publication before it.
        earlier = cast[0] if step > 1 else mine - 1
        before = await http.get(url, params={"at": earlier}, headers=bearer(tokens[-1]))
        assert before.status_code == 200, before.text
        assert (before.json()["position"], before.json()["ballots"]) == (first, step)
    finally:
        release.set()


async def test_a_long_tally_lag_is_replayed_in_the_limited_turn_and_once(
    voting: VotingClient, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the tally lags, each ``?at=`` of a reader other than an auditor or admin works
    out the election's last publication from the entries the tally has not applied: with
    the tally stopped, 20 anonymous ``?at=10**12`` of an election 500 ballots behind
    decoded 10,040 entries outside any turn, uncapped (merge review of 3fd17ef). A lag of
    more than INLINE entries is replayed in the limited turn now (owing its rest there),
    and kept: none of it is decoded outside a turn."""
    monkeypatch.setattr(recounts_module, "INLINE", 5)
    election_id = await voting.open_election("plurality", public_results=True, live_results_step=1)
    first = (await voting.cast(election_id, {"choice": "a"}, "lag-0")).json()["position"]
    await voting.results(election_id, AUDITOR, min_position=first)  # the tally has it
    release = _hold_the_tally(monkeypatch)
    held = [0]
    in_turn = turns._in_turn

    async def counted(turn: Any, wait: float, busy: str, work: Any) -> Any:
        async def inside() -> Any:
            held[0] += 1
            try:
                return await work()
            finally:
                held[0] -= 1

        return await in_turn(turn, wait, busy, inside)

    monkeypatch.setattr(turns, "_in_turn", counted)
    decoded: list[tuple[int, bool]] = []
    apply = recounts_module._Replay.apply

    def noted(self: Any, batch: list[Any]) -> None:
        decoded.append((len(batch), held[0] > 0))
        apply(self, batch)

    monkeypatch.setattr(recounts_module._Replay, "apply", noted)
    url = f"/api/elections/{election_id}/results"
    try:
        for n in range(12):
            assert (await voting.cast(election_id, {"choice": "b"}, f"lag-{n + 1}")).is_success
        lagging = await http.get(url, headers=bearer(AUDITOR))
        assert lagging.json()["ballots"] == 1  # (the tally is 12 ballots behind)
        for _ in range(20):
            answer = await http.get(url, params={"at": 10**12})
            assert answer.status_code == 200, answer.text
            assert answer.json()["ballots"] == 13
    finally:
        release.set()
    assert sum(n for n, inside in decoded if not inside) == 0
    assert sum(n for n, inside in decoded if inside) >= 12


@pytest.mark.parametrize("asked_first", ["opened", "created"])
async def test_time_travel_dates_a_stepped_readers_document_where_its_status_changed(
    voting: VotingClient, http: httpx.AsyncClient, asked_first: str
) -> None:
    """For a reader without a role of a public stepped election, ``?at=<Opened>`` answered
    the creation's position with status open, and ``?at=<creation>`` the same position
    with status draft: two statuses for one position (audit review 3b). At the creation
    the election was a draft; from its Opened entry on, until a publication, what such a
    reader sees is dated there. Asked first (a replay) or from the step index, the same."""
    election = await voting.create_election("plurality", public_results=True, live_results_step=2)
    election_id = election["id"]
    created = int(election["position"])
    opened = int((await voting.open(election_id))["position"])
    cast = (await voting.cast(election_id, {"choice": "a"}, "v1")).json()["position"]
    url = f"/api/elections/{election_id}/results"
    order = [opened, created, cast] if asked_first == "opened" else [created, opened, cast]
    seen = {}
    for at in order:
        answer = await http.get(url, params={"at": at})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        seen[at] = (body["position"], body["status"], body["ballots"])
    assert seen[created] == (created, "draft", 0)
    assert seen[opened] == (opened, "open", 0)
    assert seen[cast] == (opened, "open", 0)  # (its step is not complete: unpublished)
    # The live document is dated as time travel dates it (it kept the creation's position,
    # with the status open, until the first publication: the tally dates it there now).
    live = await http.get(url, params={"min_position": cast})
    assert live.status_code == 200, live.text
    assert (live.json()["position"], live.json()["status"]) == (opened, "open")
    auditor = await http.get(url, params={"at": opened}, headers=bearer(AUDITOR))
    assert (auditor.json()["position"], auditor.json()["status"]) == (opened, "open")
