"""The benchmarks' lean HTTP client against the real API: statuses, bodies, the headers
(parsed only when asked), keep-alive, and a server that closes the connection."""

from __future__ import annotations

from infra.bench.loadgen import LeanConnection
from tests.servers import ADMIN, running_api, settings_for


async def test_the_lean_client_reads_answers_as_sent(database_url: str) -> None:
    async with running_api(settings_for(database_url), projections=()) as url:
        port = int(url.rsplit(":", 1)[1])
        connection = LeanConnection("127.0.0.1", port, ADMIN)
        try:
            for _ in range(3):  # one connection, kept alive
                reply = await connection.request("GET", "/api/health")
                assert reply.status == 200
                assert reply.json()["status"] == "ok"
                assert reply.headers["content-type"] == "application/json"
                assert int(reply.headers["content-length"]) == len(reply.body)
                assert reply.headers["x-content-type-options"] == "nosniff"
            missing = await connection.request("GET", "/api/elections/not-an-id")
            assert missing.status == 404
            assert missing.headers["content-type"] == "application/problem+json"
            assert missing.json()["status"] == 404
            # An answer that closes the connection: the next request opens a new one.
            closing = await connection.request(
                "GET", "/api/health", headers={"Connection": "close"}
            )
            assert closing.status == 200
            assert closing.headers["connection"] == "close"
            again = await connection.request("GET", "/api/health")
            assert again.status == 200
        finally:
            await connection.close()
