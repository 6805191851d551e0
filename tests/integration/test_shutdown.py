"""SIGTERM with ballots waiting on the writer: each is answered 503 (and not recorded)
before the server's grace period ends, never cancelled into a 500."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import psycopg

from api.app import create_app
from api.protocol import server_config
from api.server import DRAIN_MARGIN, DrainingServer
from infra.store.migrations import migrate
from tests.databases import create_database, drop_database
from tests.integration.client import VotingClient, bearer
from tests.servers import CLIENT, settings_for

GRACE = 3


def _casts(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM cardinal_events WHERE topic LIKE '%Ballot.Cast'"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_ballots_waiting_at_shutdown_are_answered_503_not_500() -> None:
    url = create_database("cardinal_shutdown")
    migrate(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    settings = settings_for(url)
    server = DrainingServer(
        server_config(
            settings,
            create_app(settings, projections=()),
            log_level="warning",
            timeout_graceful_shutdown=GRACE,
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    blocker = None
    try:
        while not server.started:
            if serving.done():
                serving.result()  # surfaces the start-up error
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            election_id = await VotingClient(http).open_election()
            # The table lock held elsewhere: one batch waits in LOCK, the rest queue.
            blocker = await psycopg.AsyncConnection.connect(url, autocommit=True)
            await blocker.execute("BEGIN; LOCK TABLE cardinal_events IN EXCLUSIVE MODE")
            ballots = [
                asyncio.create_task(
                    http.post(
                        f"/api/elections/{election_id}/ballots",
                        json={"voter_id": f"v{n}", "choice": "a"},
                        headers=bearer(CLIENT),
                    )
                )
                for n in range(20)
            ]
            await asyncio.sleep(0.5)
            stopped = time.monotonic()
            server.should_exit = True  # what uvicorn's SIGTERM handler does
            answers = await asyncio.gather(*ballots)
            answered = time.monotonic() - stopped
        await serving
    finally:
        if blocker is not None:
            await blocker.close()
        sock.close()
    try:
        statuses = [a.status_code for a in answers]
        assert statuses == [503] * 20, [(a.status_code, a.text[:200]) for a in answers]
        for answer in answers:
            assert answer.headers["content-type"] == "application/problem+json"
            assert "not recorded" in answer.json()["detail"]
            assert "retry-after" in answer.headers
        assert answered < GRACE  # before uvicorn would have cancelled them
        assert answered > GRACE - DRAIN_MARGIN - 0.5  # what could commit was given time
        assert _casts(url) == 0  # none of them recorded afterwards
    finally:
        drop_database(url)
