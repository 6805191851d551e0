"""Operations over real processes: rebuilds under load, interrupted rebuilds, metrics."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.load import Load, assert_results_match_recount, auth, create_open_elections
from tests.e2e.stack import Stack
from tests.servers import AUDITOR, OPERATOR


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack(tmp_path) as running:
        yield running


async def _status(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await http.get("/api/admin/projections", headers=auth(OPERATOR))
    assert response.status_code == 200, response.text
    return {p["name"]: p for p in response.json()["projections"]}


async def test_a_rebuild_under_load_never_fails_a_read_nor_goes_backwards(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("irv", "score"))
        load = Load(stack.url, elections, seed=51, changes=False)  # counts can only grow
        await load.run(2000)
        before = (await _status(http))["tally"]["version"]
        stop = asyncio.Event()
        reads: list[tuple[int, int]] = []

        async def read_results() -> None:
            election_id = next(iter(elections))
            async with httpx.AsyncClient(base_url=stack.url, timeout=10) as reader:
                while not stop.is_set():
                    response = await reader.get(
                        f"/api/elections/{election_id}/results", headers=auth(AUDITOR)
                    )
                    assert response.status_code == 200, response.text
                    body = response.json()
                    if reads:
                        assert body["position"] >= reads[-1][0], "position went backwards"
                        assert body["ballots"] >= reads[-1][1], "count went backwards"
                    reads.append((body["position"], body["ballots"]))
                    await asyncio.sleep(0.005)

        reader = asyncio.create_task(read_results())
        casting = asyncio.create_task(
            Load(stack.url, elections, seed=52, changes=False).run(3000, concurrency=4, pause=0.002)
        )
        started = await http.post("/api/admin/projections/tally/rebuild", headers=auth(OPERATOR))
        assert started.status_code == 202, started.text
        for _ in range(600):
            tally = (await _status(http))["tally"]
            if tally["version"] > before and tally["state"] == "live":
                break
            assert tally["state"] in ("live", "rebuilding"), tally
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the rebuild did not switch within a minute")
        await casting
        stop.set()
        await reader
        assert len(reads) > 50
        await assert_results_match_recount(http, stack.database_url, elections)
        # The live worker's pages during the switch waited for it; none was refused.
        assert all(p["dead_lettered"] == 0 for p in (await _status(http)).values())
        stack.assert_relayed()


async def test_a_rebuild_killed_half_way_leaves_the_old_version_serving(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("schulze", "approval"))
        await Load(stack.url, elections, seed=61).run(6000, concurrency=32)
        before = (await _status(http))["tally"]["version"]
        rebuild = stack.popen("rebuild", "tally", "--page-size", "100")
        async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
            for _ in range(2000):
                cursor = await conn.execute(
                    "SELECT building_version, rebuild_position FROM projections "
                    "WHERE name = 'tally'"
                )
                row = await cursor.fetchone()
                if row and row[0] is not None and row[1]:
                    break
                await asyncio.sleep(0.005)
            else:
                pytest.fail("the rebuild never reported progress")
        rebuild.send_signal(signal.SIGKILL)
        rebuild.wait(timeout=10)
        status = (await _status(http))["tally"]
        assert status["version"] == before
        assert status["rebuild"] is not None  # visible as an unfinished rebuild
        await assert_results_match_recount(http, stack.database_url, elections)

        again = stack.cardinal("rebuild", "tally")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "is live" in again.stdout
        status = (await _status(http))["tally"]
        assert status["version"] > before
        assert status["state"] == "live"
        assert status["rebuild"] is None
        await assert_results_match_recount(http, stack.database_url, elections)


async def test_relay_and_projector_serve_their_metrics(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
        elections = await create_open_elections(http, ("plurality",))
        await Load(stack.url, elections, seed=71).run(200)
        await assert_results_match_recount(http, stack.database_url, elections)
        expected = {
            "relay": [
                'cardinal_broker_connected{component="relay"} 1.0',
                "cardinal_relay_leader 1.0",
                "cardinal_relay_published_events_total",
                'cardinal_database_connected{component="relay"} 1.0',
            ],
            "projector": [
                'cardinal_broker_connected{component="tally"} 1.0',
                'cardinal_projection_position{projection="tally"}',
                'cardinal_projection_applied_events_total{projection="tally"}',
                'cardinal_database_connected{component="projector"} 1.0',
            ],
        }
        for process, series in expected.items():
            port = stack.metrics_ports[process]
            text = ""
            for _ in range(100):  # the position gauges refresh every few seconds
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                if all(any(line.startswith(s) for line in text.splitlines()) for s in series):
                    break
                await asyncio.sleep(0.1)
            for line in series:
                assert any(row.startswith(line) for row in text.splitlines()), (process, line)


async def test_the_smoke_test_and_the_status_command_work_against_a_stack(stack: Stack) -> None:
    smoke = stack.cardinal("publish-test-votes", "-n", "60", "--url", stack.url)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert "all 60 test ballots counted exactly once" in smoke.stdout
    status = stack.cardinal("projections", "--json")
    assert status.returncode == 0, status.stderr
    assert '"name": "tally"' in status.stdout
    table = stack.cardinal("projections")
    assert "tally" in table.stdout
    assert "live" in table.stdout
