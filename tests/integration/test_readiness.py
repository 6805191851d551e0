"""Readiness means "can take ballots": a broker outage leaves the API ready, reported as
degraded in /api/health; one monitor connection per process, not one per probe."""

from __future__ import annotations

import asyncio
import os

import httpx
import psycopg
import pytest

from infra.bench.stack import free_port
from infra.store import EVENTS_TABLE, election_feed
from infra.store.migrations import migrate
from tests.integration.client import assert_problem, bearer, options
from tests.servers import ADMIN, running_api, settings_for

BROKER = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


async def _until(http: httpx.AsyncClient, path: str, want: str) -> httpx.Response:
    for _ in range(100):
        response = await http.get(path)
        if want in response.text:
            return response
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never said {want!r}: {response.text}")


async def test_without_the_broker_the_api_is_ready_and_degraded(database_url: str) -> None:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    settings = settings_for(database_url).with_overrides(amqp_url=nowhere)
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        health = await _until(http, "/api/health", "degraded")
        assert health.status_code == 200
        assert health.json()["checks"]["store"] == "ok"
        assert health.json()["checks"]["broker"].startswith("degraded")
        ready = await http.get("/api/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["broker"].startswith("degraded")
        assert ready.json()["checks"]["database"] == "ok"
        # Anyone may read these: what failed, not where (no host, port or user).
        port = nowhere.rsplit(":", 1)[1].rstrip("/")
        assert port not in health.text
        assert port not in ready.text


async def test_with_the_broker_health_is_ok(database_url: str) -> None:
    settings = settings_for(database_url).with_overrides(amqp_url=BROKER)
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        health = await _until(http, "/api/health", '"broker":"ok"')
        assert health.json() == {"status": "ok", "checks": {"store": "ok", "broker": "ok"}}


async def test_until_the_elections_are_loaded_ready_and_listings_answer_503(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the log locked at start (a long migration, say), the API serves after the
    feed's start wait, but said "ready" and listed nothing while the elections were not
    loaded (review helper-54)."""
    monkeypatch.setattr(election_feed, "START_WAIT", 0.5)
    migrate(fresh_database_url)
    settings = settings_for(fresh_database_url)
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
    ):
        created = await http.post(
            "/api/elections",
            json={"title": "Kept", "method": "plurality", "options": options("a", "b")},
            headers=bearer(ADMIN),
        )
        assert created.status_code == 201, created.text
    with psycopg.connect(fresh_database_url) as lock:
        lock.execute(f"LOCK TABLE {EVENTS_TABLE} IN ACCESS EXCLUSIVE MODE")
        async with (
            running_api(settings, projections=()) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as http,
        ):
            ready = await http.get("/api/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["elections"] == "loading"
            assert ready.headers["Retry-After"] == "2"  # as every 503 (review exhaust L3)
            listed = await http.get("/api/elections", headers=bearer(ADMIN))
            assert_problem(listed, 503, "still being loaded")
            assert listed.headers["Retry-After"]
            lock.rollback()  # the log is readable again
            ready = await _until(http, "/api/ready", '"elections":"ok"')
            assert ready.status_code == 200, ready.text
            listed = await http.get("/api/elections", headers=bearer(ADMIN))
            assert [e["id"] for e in listed.json()["elections"]] == [created.json()["id"]]
