"""Benchmark: the API's own CPU per ballot, without an HTTP server or a load generator.

The application (routes, domain, group-commit writer with its thread) runs in this process
against a scratch database; ballots go to it as ASGI calls, with a given number in flight,
so what the process spends is the ballot path itself: validation, keys, events, the writer's
hand-off and its statements, receipts. `bench http` measures the whole stack on the same
cores; this one moves much less from run to run, and says where a change to the API went.

Reports CPU µs per ballot (process time: the event loop and the writer thread), ballots/s,
the process's context switches per ballot (every thread's: each a wake-up the machine
charges for, such as one thread handing the GIL to another), and with ``--profile N`` the N
functions that take most of it (cProfile, which slows everything down about twofold:
compare shares, not times). Every ballot must be answered with its receipt, and the log
must then hold exactly the ballots answered: else the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from eventsourcing.utils import get_topic
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from api.app import create_app
from domain.ballot import Ballot
from infra.bench.projection import _create_database, _drop_database
from infra.bench.stack import context_switches
from infra.options import Parser
from infra.runtime.settings import Settings
from infra.store import EVENTS_TABLE
from infra.store.migrations import migrate

console = Console()
TOKENS = {"admin": ("bench-admin",), "client": ("bench-client",)}
ELECTION = {
    "title": "bench app",
    "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
    "method": "plurality",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cardinal bench app", description=__doc__)
    parser.add_argument("--ballots", type=int, default=40_000, help="ballots to cast")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "--bulk", type=int, default=0, help="N ballots per POST .../ballots/batch (0: single)"
    )
    parser.add_argument("--profile", type=int, default=0, help="print the top N functions")
    parser.add_argument(
        "--server-url",
        default="postgresql://root@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create the scratch database on",
    )
    args = parser.parse_args(argv)
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    url = _create_database(args.server_url)
    try:
        migrate(url)
        settings = Settings(database_url=url, role_tokens=TOKENS, secret="bench-" * 6)
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            figures = await _measure(app, args)
        figures["recorded"] = _ballots_in_log(url)
        if figures["recorded"] != figures["answered"]:
            raise RuntimeError(f"{figures['answered']} receipts, {figures['recorded']} in the log")
    finally:
        _drop_database(args.server_url, url)
    console.print(
        f"{figures['ballots']:,} ballots ({figures['mode']}): "
        f"[bold]{figures['cpu_us_per_ballot']} µs CPU per ballot[/bold], "
        f"{figures['ballots_per_second']:,.0f} ballots/s, "
        f"{figures['context_switches_per_ballot']} context switches per ballot"
    )
    print(json.dumps({"bench": "app", **figures}))
    return 0


async def _measure(app: Any, args: argparse.Namespace) -> dict[str, Any]:
    status, body = await _call(app, "/api/elections", ELECTION, "bench-admin")
    assert status == 201, body
    election = orjson.loads(body)["id"]
    status, body = await _call(app, f"/api/elections/{election}/open", None, "bench-admin")
    assert status == 200, body
    per_request = max(1, args.bulk)
    path = f"/api/elections/{election}/ballots" + ("/batch" if args.bulk else "")
    await _drive(app, path, "warm", 500 // per_request + 1, args, done=None)  # imports, caches
    requests = max(1, args.ballots // per_request)
    profile = cProfile.Profile() if args.profile else None
    with Progress(
        TextColumn("ballots"), BarColumn(), MofNCompleteColumn(), console=console, transient=True
    ) as bar:
        task = bar.add_task("ballots", total=requests * per_request)
        cpu, wall, switches = time.process_time(), time.perf_counter(), context_switches()
        if profile is not None:
            profile.enable()
        await _drive(app, path, "v", requests, args, done=lambda n: bar.advance(task, n))
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        switches = context_switches() - switches
    ballots = requests * per_request
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    warm = (500 // per_request + 1) * per_request
    return {
        "answered": warm + ballots,
        "mode": f"bulk, {per_request} per request" if args.bulk else "single ballots",
        "ballots": ballots,
        "cpu_us_per_ballot": round(cpu / ballots * 1e6, 1),
        "ballots_per_second": round(ballots / wall, 1),
        "context_switches_per_ballot": round(switches / ballots, 2),
    }


async def _drive(
    app: Any, path: str, prefix: str, requests: int, args: argparse.Namespace, *, done: Any
) -> None:
    todo = list(range(requests))

    async def client() -> None:
        while todo:
            n = todo.pop()
            if args.bulk:
                voters = range(n * args.bulk, (n + 1) * args.bulk)
                body: dict[str, Any] = {
                    "ballots": [{"voter_id": f"{prefix}{m}", "choice": "a"} for m in voters]
                }
                status, answer = await _call(app, path, body, "bench-client")
                results = orjson.loads(answer)["results"] if status == 200 else []
                if not results or not all("ballot_id" in r for r in results):
                    raise RuntimeError(f"ballots refused: {answer[:300]!r}")
            else:
                body = {"voter_id": f"{prefix}{n}", "choice": "a"}
                status, answer = await _call(app, path, body, "bench-client")
                if status != 201:
                    raise RuntimeError(f"a ballot refused: {status} {answer[:300]!r}")
            if done is not None:
                done(max(1, args.bulk))

    await asyncio.gather(*(client() for _ in range(args.concurrency)))


def _ballots_in_log(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {EVENTS_TABLE} WHERE topic = %s", (get_topic(Ballot.Cast),)
        ).fetchone()
    return int(row[0]) if row else 0


async def _call(app: Any, path: str, body: Any, token: str) -> tuple[int, bytes]:
    """One POST as uvicorn would hand it to the app: the whole body in one message."""
    raw = b"" if body is None else orjson.dumps(body)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"authorization", b"Bearer " + token.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)
