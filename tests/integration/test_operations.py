"""What operators see: Prometheus metrics and the projections' status, over HTTP."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.integration.client import VotingClient, assert_problem, bearer, every_election
from tests.servers import CLIENT, OPERATOR

ROOT = Path(__file__).resolve().parents[2]


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name)]


async def test_metrics_expose_every_series_operators_rely_on(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    receipt = (await voting.cast(election_id, {"choice": "a"}, voting.voter())).json()
    await voting.cast(election_id, {"choice": "nope"}, voting.voter())  # refused: invalid
    await voting.results(election_id, min_position=receipt["position"])
    scraped = await http.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text
    accepted = _samples(text, 'cardinal_ballots_accepted_total{kind="cast"}')
    assert accepted
    assert float(accepted[0].split()[-1]) >= 1
    assert _samples(text, 'cardinal_ballots_refused_total{reason="invalid_ballot"}')
    for series in (
        "cardinal_write_batch_size_bucket",
        "cardinal_write_commit_seconds_bucket",
        "cardinal_writer_queue_depth",
        "cardinal_log_head_position",
        "cardinal_relay_position",
        "cardinal_relay_lag_events",
        "cardinal_sealer_position",
        "cardinal_sealer_lag_events",
        'cardinal_projection_position{projection="tally"}',
        'cardinal_projection_lag_events{projection="tally"}',
        'cardinal_projection_apply_seconds_bucket{le="0.001",projection="tally"}',
        'cardinal_database_connected{component="api"} 1.0',
    ):
        assert any(line.startswith(series) for line in text.splitlines()), series
    routes = set(re.findall(r'route="([^"]+)"', text))
    assert "/api/elections/{election_id}/ballots" in routes  # templates, not election ids
    assert not any(election_id in route for route in routes)


async def test_operators_see_where_every_projection_stands(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    receipt = (await voting.cast(election_id, {"choice": "b"}, voting.voter())).json()
    await voting.results(election_id, min_position=receipt["position"])
    response = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
    assert response.status_code == 200
    found = {p["name"]: p for p in response.json()["projections"]}
    assert set(found) == {"tally", "catalog", "statistics"}
    tally = found["tally"]
    assert tally["state"] in ("live", "stalled")
    assert tally["version"] >= 1
    assert tally["position"] >= receipt["position"]
    assert tally["head"] >= tally["position"]
    assert tally["lag"] == tally["head"] - tally["position"]
    assert tally["dead_lettered"] == 0
    assert tally["unsigned"] == 0
    assert_problem(
        await http.get("/api/admin/projections", headers=bearer(CLIENT)), 403, "operator role"
    )
    assert_problem(
        await http.post("/api/admin/projections/nothing/rebuild", headers=bearer(OPERATOR)),
        404,
        "there is no projection named 'nothing'",
    )
    long = await http.post(f"/api/admin/projections/{'n' * 5000}/rebuild", headers=bearer(OPERATOR))
    detail = assert_problem(long, 404, f"there is no projection named '{'n' * 40}…'")["detail"]
    assert len(detail) < 200


async def test_a_rebuild_running_in_another_process_makes_a_second_one_409(
    http: httpx.AsyncClient, database_url: str
) -> None:
    # Another process's rebuild holds the projection's rebuild lock.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        await other.execute(
            "SELECT pg_advisory_lock(hashtext('cardinal-rebuild'), hashtext('statistics'))"
        )
        response = await http.post(
            "/api/admin/projections/statistics/rebuild", headers=bearer(OPERATOR)
        )
        assert_problem(response, 409, "a rebuild of statistics is already running")
    found = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
    statistics = {p["name"]: p for p in found.json()["projections"]}["statistics"]
    assert statistics["state"] != "rebuilding"


async def test_rebuild_requests_at_once_start_one_rebuild(http: httpx.AsyncClient) -> None:
    """The check and the start were apart (a database read between them): requests at
    once all got 202, for one rebuild."""
    before = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
    version = {p["name"]: p for p in before.json()["projections"]}["catalog"]["version"]
    answers = await asyncio.gather(
        *(
            http.post("/api/admin/projections/catalog/rebuild", headers=bearer(OPERATOR))
            for _ in range(6)
        )
    )
    assert sorted(a.status_code for a in answers) == [202, 409, 409, 409, 409, 409]
    deadline = asyncio.get_running_loop().time() + 60
    while True:  # let it finish: the other tests read the catalog
        found = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
        catalog = {p["name"]: p for p in found.json()["projections"]}["catalog"]
        if catalog["version"] > version and catalog["state"] == "live":
            break
        assert asyncio.get_running_loop().time() < deadline, catalog
        await asyncio.sleep(0.2)


async def test_rebuild_progress_is_a_metric_wherever_the_rebuild_runs(
    http: httpx.AsyncClient, database_url: str
) -> None:
    """A rebuild runs in a process of its own: the API exports its progress from the
    registry, as every process does."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE projections SET state = 'rebuilding', rebuild_position = 1234, "
            "rebuild_rate = 5678 WHERE name = 'statistics'"
        )
        try:
            text = (await http.get("/metrics")).text
        finally:
            conn.execute(
                "UPDATE projections SET state = 'live', rebuild_position = NULL, "
                "rebuild_rate = NULL WHERE name = 'statistics'"
            )
    assert 'cardinal_rebuild_position{projection="statistics"} 1234.0' in text
    assert 'cardinal_rebuild_events_per_second{projection="statistics"} 5678.0' in text
    assert 'cardinal_rebuild_position{projection="tally"} 0.0' in text


async def test_a_failed_rebuild_shows_why_and_promises_no_end(
    fresh_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cardinal projections` showed a dead rebuild's last progress, not why it failed,
    and --json gave it an ETA (review helper-40)."""
    from infra.cli.operate import print_status
    from infra.store.migrations import migrate
    from projections.status import projection_status

    migrate(fresh_database_url)
    reason = "rebuild of version 2 was interrupted: its process was stopped"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO projections (name, active_version, building_version, state, detail, "
            "rebuild_started_at, rebuild_position, rebuild_head, rebuild_rate) "
            "VALUES ('tally', 1, 2, 'failed', %s, now(), 10, 100, 5.0) "
            "ON CONFLICT (name) DO UPDATE SET active_version = 1, building_version = 2, "
            "state = 'failed', detail = excluded.detail, rebuild_position = 10, "
            "rebuild_head = 100, rebuild_rate = 5.0",
            (reason,),
        )
    async with await psycopg.AsyncConnection.connect(fresh_database_url) as conn:
        tally = {p["name"]: p for p in await projection_status(conn)}["tally"]
    assert tally["state"] == "failed"
    assert tally["rebuild"]["eta_seconds"] is None
    assert await print_status(fresh_database_url, as_json=False) == 1
    shown = " ".join(capsys.readouterr().out.split())
    assert "interrupted" in shown


async def test_a_smoke_test_refused_says_so_once_and_closes_its_election(
    database_url: str,
) -> None:
    """A ballot refused (here by the rate limit) made publish-test-votes print a traceback
    per task and leave its election open in production (review helper-51)."""
    import os
    import subprocess
    import sys

    from tests.servers import ADMIN, running_api, settings_for

    settings = settings_for(database_url, enable_rate_limiting=True, max_votes_per_ip_per_hour=2)
    async with running_api(settings, projections=()) as url:
        env = {**os.environ, "CARDINAL_ADMIN_TOKEN": ADMIN, "CARDINAL_CLIENT_TOKEN": CLIENT}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "infra.cli", "publish-test-votes", "-n", "5", "--url", url],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        said = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 1, said
        assert "the smoke test failed: the API answered 429" in said
        assert "Traceback" not in said
        async with httpx.AsyncClient(base_url=url) as http:
            listed = await every_election(http, bearer(ADMIN))
        smoke = [e for e in listed if e["title"].startswith("Smoke test")]
        assert smoke
        assert all(e["status"] == "closed" for e in smoke)


async def test_operators_see_the_messages_refused_for_their_signature(
    http: httpx.AsyncClient, database_url: str
) -> None:
    """Pages refused for their signature did not show in the operator's view: it said 0
    dead-lettered while each dead-letter queue held thousands (merge review). The workers
    (in a process of their own, the projector's) write how many they refused, at most once
    a minute; the status sums it, apart from the pages dead-lettered."""
    from projections.worker import ProjectionWorker

    async def status() -> dict[str, dict[str, int]]:
        response = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
        assert response.status_code == 200
        return {p["name"]: p for p in response.json()["projections"]}

    before = await status()
    # What a worker of another process writes (``Strangers.say``), twice.
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:

        class Runner:  # what of a runner ``Strangers.say`` uses
            name = "catalog"

            def __init__(self, pool: AsyncConnectionPool) -> None:
                self.pool = pool

        worker = ProjectionWorker(Runner(pool), database_url)  # type: ignore[arg-type]
        try:
            for refused, unrecorded in ((1, 0), (2_996, 2_986)):
                worker.strangers.unsaid, worker.strangers.unrecorded = refused, unrecorded
                await worker.strangers.say()
            after = await status()
        finally:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    "DELETE FROM projection_rejections WHERE name = 'catalog' AND reason LIKE "
                    "'unsigned: %%'"
                )
    assert after["catalog"]["unsigned"] == before["catalog"]["unsigned"] + 2_997
    assert after["catalog"]["dead_lettered"] == before["catalog"]["dead_lettered"]
    assert after["tally"]["unsigned"] == before["tally"]["unsigned"]


async def test_operators_see_the_relay_pages_of_another_store_refused(
    http: httpx.AsyncClient, database_url: str
) -> None:
    """Pages of another store (after a restore) were counted in a metric and a worker's
    figure no operator saw (observability review): the workers write how many, at most once
    a minute, and the status shows them as ``stale``, apart from the pages dead-lettered."""
    from psycopg_pool import AsyncConnectionPool

    from projections.worker import ProjectionWorker

    async def status() -> dict[str, dict[str, int]]:
        response = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
        assert response.status_code == 200
        return {p["name"]: p for p in response.json()["projections"]}

    before = await status()
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:

        class Runner:  # what of a runner ``_write_stale`` uses
            name = "statistics"

            def __init__(self, pool: AsyncConnectionPool) -> None:
                self.pool = pool

        worker = ProjectionWorker(Runner(pool), database_url)  # type: ignore[arg-type]
        try:
            for refused in (1, 41):
                worker._stale_unwritten = refused
                await worker._write_stale()
            assert worker._stale_unwritten == 0
            after = await status()
        finally:
            with psycopg.connect(database_url, autocommit=True) as conn:
                conn.execute(
                    "DELETE FROM projection_rejections WHERE name = 'statistics' AND reason "
                    "LIKE 'stale: %%'"
                )
    assert after["statistics"]["stale"] == before["statistics"]["stale"] + 42
    assert after["statistics"]["dead_lettered"] == before["statistics"]["dead_lettered"]
    assert after["tally"]["stale"] == before["tally"]["stale"]
