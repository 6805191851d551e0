"""POST /api/admin/projections/{name}/rebuild across processes: 202 only for the rebuild that
holds the lock. The check before the child started was a look at the lock, released again;
two API processes (or a `cardinal rebuild` starting meanwhile) both passed it, both answered
202, and one child found the lock taken and exited: "started" for a rebuild that never ran."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import httpx
import psycopg
import pytest

from api.routes import admin
from tests.integration.client import assert_problem, bearer
from tests.servers import OPERATOR, running_api, settings_for

LOCK = "SELECT pg_advisory_lock(hashtext('cardinal-rebuild'), hashtext(%s))"
REGISTRY_LOCK = "SELECT pg_advisory_lock(hashtext('cardinal-projection'), hashtext(%s))"
REGISTRY_UNLOCK = "SELECT pg_advisory_unlock(hashtext('cardinal-projection'), hashtext(%s))"


async def _catalog(http: httpx.AsyncClient) -> dict[str, Any]:
    found = await http.get("/api/admin/projections", headers=bearer(OPERATOR))
    catalog: dict[str, Any] = {p["name"]: p for p in found.json()["projections"]}["catalog"]
    return catalog


async def _rebuilt(http: httpx.AsyncClient, before: int) -> dict[str, Any]:
    """The catalog once a version newer than ``before`` is live (the rebuild ran)."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        catalog = await _catalog(http)
        if catalog["version"] > before and catalog["state"] == "live":
            return catalog
        assert asyncio.get_running_loop().time() < deadline, catalog
        await asyncio.sleep(0.2)


async def _lock_free(database_url: str, name: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT pg_try_advisory_lock(hashtext('cardinal-rebuild'), hashtext(%s))", (name,)
        )
        row = await cursor.fetchone()
        return row is not None and bool(row[0])  # (released as the connection closes)


async def test_two_api_processes_asked_at_once_start_one_rebuild_and_refuse_the_other(
    http: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The winner's wait lasts until the loser's child has started and been refused (seconds
    # on a loaded machine): not the 20 s a start is given.
    monkeypatch.setattr(admin, "START_WITHIN", 120.0)
    before = (await _catalog(http))["version"]
    # A second API process: its own app, its own record of the rebuilds it started.
    async with (
        running_api(settings_for(database_url), projections=()) as other_url,
        httpx.AsyncClient(base_url=other_url, timeout=60) as other,
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as registry,
    ):
        # The catalog's registry lock, held: the rebuild that takes the rebuild lock waits
        # there before it starts (a catalog this small is otherwise rebuilt in 0.2 s, and
        # the second would run after the first, both rightly answered 202).
        await registry.execute(REGISTRY_LOCK, ("catalog",))
        asked = [
            asyncio.create_task(
                client.post("/api/admin/projections/catalog/rebuild", headers=bearer(OPERATOR))
            )
            for client in (http, other)
        ]
        done, waiting = await asyncio.wait(asked, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop().result()
        refused = assert_problem(first, 409, "already running")
        assert refused["detail"].startswith("a rebuild of catalog is already running")
        assert len(waiting) == 1  # the other waits for its rebuild to start
        await registry.execute(REGISTRY_UNLOCK, ("catalog",))
        started = await waiting.pop()
        assert started.status_code == 202, started.text
        assert started.json()["state"] == "rebuilding"
        # 202: the status says so, or the rebuild is done already (a catalog this small is
        # rebuilt in a fraction of a second once the registry lock is free: a fresh clone
        # read "live" here, the new version's): never the old version, live, as if not begun.
        status = await _catalog(http)
        assert status["state"] == "rebuilding" or status["version"] == before + 1, status
        # The rebuild answered 202 runs to the end (inside: its API process stops its child).
        catalog = await _rebuilt(http, before)
        assert catalog["version"] == before + 1  # one rebuild, not two


async def test_a_rebuild_whose_lock_is_taken_after_the_check_is_a_409(
    http: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `cardinal rebuild` that takes the lock between the check and the child's try."""

    async def missed(conn: object, name: str) -> bool:
        return False  # the look found it free: the CLI's rebuild took the lock just after

    monkeypatch.setattr(admin, "rebuild_running", missed)
    before = await _catalog(http)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        await other.execute(LOCK, ("catalog",))
        response = await http.post(
            "/api/admin/projections/catalog/rebuild", headers=bearer(OPERATOR)
        )
        refused = assert_problem(response, 409, "already running")
        assert refused["detail"].startswith("a rebuild of catalog is already running")
    after = await _catalog(http)
    assert (after["version"], after["state"]) == (before["version"], before["state"])
    # Nothing of the refused child is left: the next request starts a rebuild that runs.
    response = await http.post("/api/admin/projections/catalog/rebuild", headers=bearer(OPERATOR))
    assert response.status_code == 202, response.text
    await _rebuilt(http, before["version"])


async def test_a_rebuild_that_does_not_start_in_time_is_stopped_and_a_503(
    http: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admin, "START_WITHIN", 0.01)  # no child takes its lock that soon
    before = await _catalog(http)
    response = await http.post("/api/admin/projections/catalog/rebuild", headers=bearer(OPERATOR))
    assert_problem(response, 503, "did not take its lock within 0.01 s and was stopped")
    assert response.headers["retry-after"] == "10"
    assert await _lock_free(database_url, "catalog")  # its child is gone
    after = await _catalog(http)
    assert after["version"] == before["version"]
    assert after["state"] != "rebuilding"


async def test_cardinal_rebuild_says_it_was_refused_and_exits_3_when_another_runs(
    database_url: str,
) -> None:
    readable, writable = os.pipe()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        await other.execute(LOCK, ("catalog",))
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "infra.cli",
                "rebuild",
                "catalog",
                "--started-fd",
                str(writable),
                env={**os.environ, "DATABASE_URL": database_url},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(writable,),
            )
        finally:
            os.close(writable)
        _, stderr = await asyncio.wait_for(child.communicate(), 60)
    with os.fdopen(readable, "rb") as said:
        line = said.read()
    assert child.returncode == 3, stderr.decode()
    assert json.loads(line) == {
        "refused": "a rebuild of catalog is already running",
        "running": True,
    }


async def test_looking_for_a_running_rebuild_takes_no_lock(database_url: str) -> None:
    """The look took the lock and released it: a rebuild starting at that moment was
    refused as "already running", and a request cancelled in between left a pooled
    connection holding it, refusing every rebuild after (the merge review)."""
    from projections.rebuild import rebuild_running

    said: list[str] = []
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        execute = conn.execute

        async def recorded(query: Any, params: Any = None, **kwargs: Any) -> Any:
            said.append(str(query))
            return await execute(query, params, **kwargs)

        conn.execute = recorded  # type: ignore[method-assign]
        assert await rebuild_running(conn, "tally") is False
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
            await other.execute(LOCK, ("tally",))
            assert await rebuild_running(conn, "tally") is True
            assert await rebuild_running(conn, "catalog") is False
        # Released with its session: the server's backend ends after the client has closed,
        # so the lock may outlive the close for a moment (a busy machine's run saw it held).
        for _ in range(500):
            if not await rebuild_running(conn, "tally"):
                break
            await asyncio.sleep(0.01)
        assert await rebuild_running(conn, "tally") is False
    assert said
    assert not any("advisory_lock" in query for query in said), said


async def test_an_earlier_child_slow_to_exit_is_stopped_not_left_untracked(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new request waited STOP_WITHIN for this process's earlier child (done with the
    lock, exiting), then took its place in the record whether it had gone or not: one
    slow to exit was no longer stopped at shutdown (the merge review)."""
    children: list[asyncio.subprocess.Process] = []

    async def started(name: str, environment: dict[str, str]) -> tuple[Any, dict[str, Any]]:
        # The first child done with its rebuild but deaf to SIGTERM; the next a quick one.
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        code += "time.sleep(120)" if not children else "pass"
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        children.append(child)
        return child, {"started": 1}

    monkeypatch.setattr(admin, "_start", started)
    monkeypatch.setattr(admin, "STOP_WITHIN", 0.5)
    try:
        for _ in range(2):
            response = await http.post(
                "/api/admin/projections/tally/rebuild", headers=bearer(OPERATOR)
            )
            assert response.status_code == 202, response.text
        assert children[0].returncode is not None  # stopped, not left running
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()


async def test_a_rebuild_child_s_live_gauges_stop_counting_at_its_exit(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """A rebuild started over HTTP shares the API's metrics folder (its progress is
    scraped); its live gauges' files stayed there after it exited, summed into every scrape
    for as long as `serve` ran: only the supervisor's own children were marked dead (the
    soak review). The API process that started it now marks it dead at its exit."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    before = (await _catalog(http))["version"]
    response = await http.post("/api/admin/projections/catalog/rebuild", headers=bearer(OPERATOR))
    assert response.status_code == 202, response.text
    await _rebuilt(http, before)
    ours = f"_{os.getpid()}.db"
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        files = [p.name for p in tmp_path.iterdir() if not p.name.endswith(ours)]
        live = [name for name in files if name.startswith("gauge_live")]
        if files and not live:
            break
        assert asyncio.get_running_loop().time() < deadline, files
        await asyncio.sleep(0.1)
    assert any(name.startswith("counter_") for name in files), files  # it wrote its own
