"""cardinal bench viewers: N results-stream readers while ballots arrive at R per second.

One open election with public results and exact live results (``live_results_step`` 1),
on a `cardinal serve` stack with WEB_CONCURRENCY API processes. N viewers read
``GET /api/elections/{id}/results/stream`` (each event's id is the position its results
reflect); ballots go in open loop at ``--rate``. Reported:

- freshness: from a ballot's 2xx to the first event a viewer receives whose position
  reaches the ballot's, p50 and p99 over (sampled ballot, viewer) pairs;
- events received per second, all viewers together;
- memory per viewer: the API processes' RSS with the viewers connected, less before, / N.

The viewers and the ballot sender share this process (and the machine with the stack):
what they spend is part of what the freshness figure shows. Exit 1 when p99 >= --target.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import uvloop

from infra.bench.freshness import FreshnessWatcher
from infra.bench.http_report import percentiles
from infra.bench.loadgen import LeanConnection, open_election
from infra.bench.stack import SERVE, Stack
from infra.options import Parser

ADMIN = "bench-admin"
CLIENT = "bench-client"
OPTIONS = [{"id": f"o{i}", "label": f"Option {i}"} for i in range(5)]
SAMPLED_BALLOTS = 400


class Viewer(asyncio.Protocol):
    """One stream reader: records (arrival time, position) of each event, nothing more."""

    def __init__(self) -> None:
        self.events: list[tuple[float, int]] = []
        self.buffer = b""
        self.connected = asyncio.get_running_loop().create_future()
        self.lost = False
        self.status = 0  # the answer's status: 200, or 503 over uvicorn's concurrency limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected.set_result(transport)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.status:
            self.status = int(data[9:12]) if data.startswith(b"HTTP/1.1 ") else -1
        self.buffer += data
        *blocks, self.buffer = self.buffer.split(b"\n\n")
        for block in blocks:
            start = block.find(b"id: ")
            if start >= 0:
                end = block.find(b"\n", start)
                self.events.append((now, int(block[start + 4 : end])))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = uvloop.run(_run(args))
    line = json.dumps(report)
    print(
        f"{report['viewers']} viewers ({report['connected']} connected, {report['refused']} "
        f"refused, {report['dropped']} dropped) at {report['ballots_per_s']:.0f} ballots/s "
        f"over {args.duration:g} s: "
        f"freshness p50 {report['freshness_p50_ms']} ms, p99 {report['freshness_p99_ms']} ms; "
        f"(tally p99 {report['tally_p99_ms']} ms); "
        f"{report['events_per_s']:.0f} events/s received; "
        f"{report['memory_per_viewer_kib']:.1f} KiB per viewer"
    )
    print(line)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(line + "\n")
    p99 = report["freshness_p99_ms"]
    ok = (
        p99 is not None
        and p99 < args.target * 1000
        and report["errors"] == report["refused"] == report["dropped"] == 0
    )
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cardinal bench viewers", description=__doc__)
    parser.add_argument("--viewers", type=int, default=2000, help="concurrent stream readers")
    parser.add_argument("--rate", type=float, default=500.0, help="ballots per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of ballots")
    parser.add_argument("--api-processes", type=int, default=2, help="WEB_CONCURRENCY of the stack")
    parser.add_argument("--target", type=float, default=1.0, help="p99 freshness target, s")
    parser.add_argument(
        "--server-url",
        default="postgresql://root@127.0.0.1:5432/postgres",
        help="PostgreSQL server for the scratch database",
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    parser.add_argument("--no-broker", action="store_true", help="projections read the store")
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    return parser


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with Stack(
        args.server_url,
        Path(tempfile.mkdtemp(prefix="cardinal-viewers-")),
        tokens={"admin": ADMIN, "client": CLIENT, "operator": "bench-op", "auditor": "bench-au"},
        commands=SERVE,
        amqp_url=None if args.no_broker else args.amqp_url,
        prefix="viewers",
        # Every viewer comes from 127.0.0.1: one client address, as far as the API can tell.
        env={
            "LOG_LEVEL": "WARNING",
            "WEB_CONCURRENCY": str(args.api_processes),
            "STREAMS_PER_CLIENT": str(max(1, args.viewers)),
        },
    ) as stack:
        election_id = await _election(stack)
        before = _api_rss(stack)
        viewers, transports = await _connect(stack, election_id, args.viewers)
        await asyncio.sleep(2)  # every first snapshot received, the hubs settled
        connected = _api_rss(stack)
        for viewer in viewers:
            viewer.events.clear()
        watcher = FreshnessWatcher(stack.database_url)
        watch = asyncio.create_task(watcher.run())
        ready = asyncio.create_task(watcher.ready.wait())
        await asyncio.wait((ready, watch), return_when=asyncio.FIRST_COMPLETED)
        if watch.done():
            watch.result()  # it could not listen (PostgreSQL out of connections?): say so
        started = time.perf_counter()
        ballots, errors = await _cast(stack, election_id, args.rate, args.duration, watcher)
        sent_for = time.perf_counter() - started
        await asyncio.sleep(3)  # the last ballots' events
        received = sum(len(v.events) for v in viewers)
        watch.cancel()
        ended = time.perf_counter()
        window = ended - started
        for transport in transports:
            transport.close()
    streaming = [v for v in viewers if v.status == 200]
    freshness = _freshness(streaming, ballots, ended)
    figures = percentiles(freshness)  # in ms
    tally = percentiles(watcher.lags)
    return {
        "bench": "viewers",
        "viewers": args.viewers,
        "connected": sum(1 for v in viewers if v.connected.done()),
        "refused": len(viewers) - len(streaming),  # not answered 200 (503: over the limit)
        "dropped": sum(1 for v in streaming if v.lost),
        "api_processes": args.api_processes,
        "rate": args.rate,
        "ballots": len(ballots),
        "errors": errors,
        "ballots_per_s": len(ballots) / sent_for,
        "freshness_p50_ms": figures["p50"],
        "freshness_p99_ms": figures["p99"],
        "freshness_max_ms": figures["max"],
        "samples": len(freshness),
        # The same from the 2xx to the tally projection's NOTIFY (what the stream waits on).
        "tally_p50_ms": tally["p50"],
        "tally_p99_ms": tally["p99"],
        "events_per_s": received / window,
        "memory_per_viewer_kib": max(0, connected - before) / max(1, args.viewers) / 1024,
    }


async def _election(stack: Stack) -> str:
    admin = LeanConnection("127.0.0.1", stack.port, ADMIN)
    try:
        body = {
            "title": "Viewers bench",
            "method": "plurality",
            "options": OPTIONS,
            "live_results_step": 1,
            "public_results": True,
        }
        return await open_election(admin, body)
    finally:
        await admin.close()


async def _connect(
    stack: Stack, election_id: str, count: int
) -> tuple[list[Viewer], list[asyncio.Transport]]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET /api/elections/{election_id}/results/stream HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    viewers: list[Viewer] = []
    transports: list[asyncio.Transport] = []
    for start in range(0, count, 200):  # in waves: the listen backlog is finite
        wave = [Viewer() for _ in range(min(200, count - start))]
        opened = await asyncio.gather(
            *(loop.create_connection(partial(_same, v), "127.0.0.1", stack.port) for v in wave)
        )
        for transport, _ in opened:
            transport.write(request)
            transports.append(transport)
        viewers.extend(wave)
    return viewers, transports


async def _cast(
    stack: Stack, election_id: str, rate: float, duration: float, watcher: FreshnessWatcher
) -> tuple[list[tuple[float, int]], int]:
    """Ballots in open loop; (2xx time, position) of each accepted one, and the errors."""
    accepted: list[tuple[float, int]] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    path = f"/api/elections/{election_id}/ballots"

    async def sender() -> None:
        nonlocal errors
        connection = LeanConnection("127.0.0.1", stack.port, CLIENT)
        try:
            while (n := await queue.get()) >= 0:
                ballot = {"choice": OPTIONS[n % len(OPTIONS)]["id"], "voter_id": f"v{n}"}
                try:
                    reply = await connection.request("POST", path, ballot)
                except Exception:
                    errors += 1
                    await connection.close()
                    continue
                if 200 <= reply.status < 300:
                    answered = time.perf_counter()
                    position = int(reply.json()["position"])
                    accepted.append((answered, position))
                    watcher.expect(position, answered)
                else:
                    errors += 1
        finally:
            await connection.close()

    senders = [asyncio.create_task(sender()) for _ in range(32)]
    started = time.perf_counter()
    total = int(rate * duration)
    for n in range(total):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(n)
    for _ in senders:
        queue.put_nowait(-1)
    await asyncio.gather(*senders)
    return accepted, errors


def _same(viewer: Viewer) -> Viewer:
    return viewer


def _freshness(
    viewers: list[Viewer], ballots: list[tuple[float, int]], ended: float
) -> list[float]:
    """Seconds from a ballot's 2xx to each viewer's first event at or past its position
    (a viewer that never got there counts as the whole remaining window: no sample is
    left out for being slow)."""
    sample = random.Random(7).sample(ballots, min(SAMPLED_BALLOTS, len(ballots)))
    found = []
    for viewer in viewers:
        positions = [position for _, position in viewer.events]
        # Positions only grow on a stream; a running maximum keeps bisect honest anyway.
        running = []
        top = 0
        for position in positions:
            top = max(top, position)
            running.append(top)
        for at, position in sample:
            index = bisect.bisect_left(running, position)
            if index < len(running):
                found.append(max(0.0, viewer.events[index][0] - at))
            else:
                found.append(ended - at)
    return found


def _api_rss(stack: Stack) -> int:
    """The resident memory of the stack's API processes (serve's children but the last)."""
    total = 0
    for process in stack.processes.values():
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                total += child.memory_info().rss
    return total
