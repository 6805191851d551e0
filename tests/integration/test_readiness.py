"""Readiness means "can take ballots": a broker outage leaves the API ready, reported as
degraded in /api/health; one monitor connection per process, not one per probe."""

from __future__ import annotations

import asyncio
import os

import httpx

from infra.bench.stack import free_port
from tests.servers import running_api, settings_for

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
