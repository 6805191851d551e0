"""A read whose connection the server had hung up on is read again, once (api/again.py).

The reads pool cannot see a goodbye still on its way: a backend terminated a few ms
before its connection was lent looks alive, and the read on it failed into a 503 on a
healthy store (results, the audit's reads, ``/api/ready``). Measured before the fix: 38 of
50 results reads sent right after every idle backend of the pool was terminated (without
waiting for them to exit) were 503."""

from __future__ import annotations

import asyncio
import time

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from infra.runtime.bootstrap import _pool
from infra.store import reconnect
from infra.store.names import connection_name
from tests.cut_as_lent import Conn, CutAsLent
from tests.integration.client import VotingClient, bearer
from tests.paused_proxy import PausedProxy
from tests.servers import ADMIN, AUDITOR, running_api, settings_for

READS_POOL = connection_name("reads")


def _reads_pool(conn: Conn) -> bool:
    return (
        isinstance(conn, psycopg.AsyncConnection)
        and conn.info.parameter_status("application_name") == READS_POOL
    )


async def test_a_read_whose_connection_was_cut_as_it_was_lent_is_answered(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cutting = CutAsLent(database_url, monkeypatch, _reads_pool)
    async with (
        running_api(settings_for(database_url)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        reads = {
            f"/api/elections/{election_id}/results": ADMIN,
            f"/api/elections/{election_id}/events": AUDITOR,
            "/api/audit/checkpoints": AUDITOR,
            "/api/ready": ADMIN,
        }
        for path, token in reads.items():
            cutting.times = 1
            started = time.monotonic()
            answer = await http.get(path, headers=bearer(token))
            assert answer.status_code == 200, (path, answer.text)
            assert time.monotonic() - started < 2, path
            assert cutting.times == 0, path  # (the read did lend a connection, cut)
        assert len(cutting.cut) == len(reads)
        health = (await http.get("/api/health")).json()
        assert health["checks"]["store"] == "ok", health  # nothing marked down


async def test_reads_right_after_every_idle_backend_was_terminated_are_answered(
    database_url: str,
) -> None:
    """The race itself: every idle backend of the reads pool terminated together (not
    waited for: their goodbyes on the way), and a read sent at once, 20 times. The second
    read's connection, lent a moment after the first failed, had its goodbye on the way
    too: read again on connections as the pool found them, 21 of 50 were still 503."""
    async with (
        running_api(settings_for(database_url)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        path = f"/api/elections/{election_id}/results"
        statuses: list[int] = []
        with psycopg.connect(database_url, autocommit=True) as admin:
            for _ in range(20):
                for _ in range(4):  # several connections idle in the pool
                    assert (await http.get(path, headers=bearer(ADMIN))).status_code == 200
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = %s",
                    (connection_name("reads"),),
                )
                statuses.append((await http.get(path, headers=bearer(ADMIN))).status_code)
        assert statuses == [200] * 20, statuses


async def _lent_while_tested(pool: AsyncConnectionPool, wait: float = 30.0) -> None:
    with reconnect.verified():  # (a read read again: each lent tested)
        async with pool.connection(wait):
            pass


async def test_a_lend_cancelled_while_its_connection_is_tested_gives_it_back(
    database_url: str,
) -> None:
    """A read read again is cancelled (its deadline, readiness's 2 s, an abandoned request)
    while the reads pool tests a connection for it, on a store that stopped answering: the
    connection was lost (out of the pool, counted in it), one of the pool's each time, until
    every read was a 503 on a healthy store."""
    async with PausedProxy(database_url) as proxy:
        pool = _pool(proxy.proxied_url, 2, name="reads")
        await pool.open(wait=True)
        try:
            proxy.pause()
            lend = asyncio.create_task(_lent_while_tested(pool))
            await proxy.held.wait()  # its test under way, unanswered
            lend.cancel()
            proxy.resume()
            with pytest.raises(asyncio.CancelledError):
                await lend
            await pool.wait(5)  # (its connection, given back, or closed and replaced)
            stats = pool.get_stats()
            assert stats["pool_available"] == stats["pool_size"], stats  # nothing lent
            async with pool.connection(5) as one, pool.connection(5) as two:  # both
                await one.execute("SELECT 1")
                await two.execute("SELECT 1")
        finally:
            await pool.close()


async def test_a_lend_tests_a_connection_no_longer_than_its_wait(database_url: str) -> None:
    """A store that stopped answering does not hold a lend past its wait: the connection
    that did not answer in time is discarded (replaced, not lost), and the lend fails. It
    waited for ever; then, with psycopg's own query, 10.5 s (psycopg asks the server to
    cancel an interrupted query, and waits for that)."""
    async with PausedProxy(database_url) as proxy:
        pool = _pool(proxy.proxied_url, 2, name="reads")
        await pool.open(wait=True)
        try:
            proxy.pause()
            started = time.monotonic()
            async with asyncio.timeout(20):  # (it waited for the store for ever)
                with pytest.raises(PoolTimeout):
                    await _lent_while_tested(pool, wait=0.5)
            assert time.monotonic() - started < 2
            proxy.resume()
            async with pool.connection(5) as one, pool.connection(5) as two:  # none lost
                await one.execute("SELECT 1")
                await two.execute("SELECT 1")
        finally:
            proxy.resume()
            await pool.close()


@pytest.mark.parametrize("stream", ["/api/elections/{}/results/stream", "/api/elections/stream"])
async def test_a_streams_first_read_on_a_connection_cut_as_it_was_lent_is_answered(
    database_url: str, monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    """A stream's first read is made in its response, after its endpoint returned: it was
    not read again, and a stream opened on a connection cut as it was lent was a 503 where
    the results read the same way were answered."""

    def first_reads(conn: Conn) -> bool:  # (not the hub's own rebuilds: in a task of theirs)
        task = asyncio.current_task()
        return _reads_pool(conn) and task is not None and task.get_name() != "stream-hub"

    cutting = CutAsLent(database_url, monkeypatch, first_reads)
    async with (
        running_api(settings_for(database_url)) as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        voting = VotingClient(http)
        election_id = await voting.open_election()
        path = stream.format(election_id)
        cutting.times = 1
        async with http.stream("GET", path, headers=bearer(ADMIN)) as answer:
            assert answer.status_code == 200, await answer.aread()
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    break  # its first document
        assert cutting.times == 0  # (its first read did lend a connection, cut)
        assert len(cutting.cut) == 1
