"""Keep-alive clients spread again over `cardinal serve`'s API processes after one of them
restarts: each connection serves at most MAX_REQUESTS requests (api/protocol.py), and
SO_REUSEPORT places its successor on any process that listens."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

from api.protocol import MAX_REQUESTS
from infra.bench.loadgen import ConnectionClosed, LeanConnection
from infra.bench.stack import SERVE, Stack
from tests.databases import SERVER_URL
from tests.servers import ADMIN, AUDITOR, CLIENT, OPERATOR, TEST_AUDIT_KEY

CLIENTS = 32


def _api_processes(stack: Stack) -> list[psutil.Process]:
    serve = psutil.Process(stack.processes["serve"].pid)
    return [c for c in serve.children() if "api --child" in " ".join(c.cmdline())]


def _clients_of(stack: Stack) -> list[int]:
    """How many client connections each API process holds."""
    return sorted(
        sum(
            c.status == psutil.CONN_ESTABLISHED and c.laddr.port == stack.port
            for c in process.net_connections("tcp")
        )
        for process in _api_processes(stack)
    )


async def _requests(clients: list[LeanConnection], each: int) -> None:
    async def one(client: LeanConnection) -> None:
        for _ in range(each):
            try:
                reply = await client.request("GET", "/api/health")
            except ConnectionClosed:  # cut by the SIGKILL: the next request reconnects
                continue
            assert reply.status == 200, reply.body

    await asyncio.gather(*(one(client) for client in clients))


def test_clients_spread_again_after_an_api_process_restarts(tmp_path: Path) -> None:
    with Stack(
        SERVER_URL,
        tmp_path,
        tokens={"admin": ADMIN, "operator": OPERATOR, "auditor": AUDITOR, "client": CLIENT},
        commands=SERVE,
        prefix="balance",
        env={"CARDINAL_AUDIT_KEY": TEST_AUDIT_KEY, "WEB_CONCURRENCY": "2"},
    ) as stack:
        clients = [LeanConnection("127.0.0.1", stack.port) for _ in range(CLIENTS)]
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(_requests(clients, 2))
            victim = _api_processes(stack)[0]
            victim.kill()
            victim.wait(10)
            # Every client reconnects to the survivor, the only process listening.
            loop.run_until_complete(_requests(clients, 2))
            assert _clients_of(stack) in ([CLIENTS], [0, CLIENTS])  # (restarted already?)
            deadline = time.monotonic() + 30
            while len(_api_processes(stack)) < 2 or not stack.listening_everywhere():
                assert time.monotonic() < deadline, "the API process was not restarted"
                # Busy clients: the survivor closes a connection idle for KEEP_ALIVE,
                # and its successor could land anywhere. One request each well within it
                # (MAX_REQUESTS is far off: 30 s of this spends ~150 of 1000).
                loop.run_until_complete(_requests(clients, 1))
                time.sleep(0.2)
            assert _clients_of(stack) == [0, CLIENTS]
            # Past its last request each connection closes, and its successor may land
            # on either process: 32 all on one would happen once in two billion runs.
            loop.run_until_complete(_requests(clients, MAX_REQUESTS + 1))
            fewer, more = _clients_of(stack)
            assert fewer >= 4, (fewer, more)
            assert fewer + more == CLIENTS
        finally:
            for client in clients:
                loop.run_until_complete(client.close())
            loop.close()
