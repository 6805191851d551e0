"""Benchmark: ballots over HTTP against a running stack, and what it takes to see them.

Starts a stack (``cardinal serve``, or api + relay + projector processes with
``--topology split``) on a scratch database and RabbitMQ namespace, or targets a running
one (``--target``), then drives ballots with a given concurrency for a given time (or a
fixed number of ballots, or a fixed rate), and reports:

- accepted ballots/s; latency p50/p99/max; refusals by status;
- freshness: time from a ballot's 2xx to the tally projection reaching its position,
  p50/p99 (from the projections' NOTIFY messages, watched by the benchmark itself);
- peak RSS (VmHWM) of every stack process and of the load generator;
- a verification that every accepted ballot is counted exactly once, and that each
  election's results equal a recount of the log;
- with ``--compare-unbatched``, the same run with WRITER_MAX_BATCH=1 and the ratio.

Every ballot is a first cast by a fresh voter, so "counted once" is exact: the results'
ballot count equals the number of 2xx answers, and each receipt's ballot is in the read
model once. A 503 is not retried (it is the back-pressure under test) and must leave no
trace in the log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import os
import resource
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import uvloop
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.bench.chart import Panel, sparkline, svg
from infra.bench.loadgen import ConnectionClosed, LeanConnection
from infra.bench.stack import SEPARATE, SERVE, Stack
from projections.runtime import NOTIFY_CHANNEL

console = Console()
ADMIN = "bench-admin"
CLIENT = "bench-client"
OPTIONS = [{"id": f"o{i}", "label": f"Option {i}"} for i in range(5)]


@dataclass
class RunFigures:
    """What one run measured."""

    label: str
    seconds: float = 0.0
    accepted: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # in the order answered
    # Second by second: where each second starts in ``latencies``, and its 2xx count.
    second_starts: list[int] = field(default_factory=list)
    accepted_by_second: list[int] = field(default_factory=list)
    freshness: list[float] = field(default_factory=list)
    unseen: int = 0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    counted_once: bool | None = None
    matches_recount: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def answered(self, second: int, latency: float, accepted: bool) -> None:
        while len(self.second_starts) <= second:
            self.second_starts.append(len(self.latencies))
            self.accepted_by_second.append(0)
        self.latencies.append(latency)
        if accepted:
            self.accepted += 1
            self.accepted_by_second[second] += 1

    def p99_by_second(self) -> list[float]:
        """Each second's p99 latency in ms (0 for a second with no answers)."""
        ends = [*self.second_starts[1:], len(self.latencies)]
        return [
            _percentiles(self.latencies[start:end])["p99"] or 0.0
            for start, end in zip(self.second_starts, ends, strict=True)
        ]

    def whole_seconds(self) -> int:
        """Seconds that ran to their end (the last one is cut short)."""
        return max(1, len(self.accepted_by_second) - 1)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "seconds": round(self.seconds, 2),
            "accepted": self.accepted,
            "accepted_per_second": round(self.rate, 1),
            "latency_ms": _percentiles(self.latencies),
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
            "errors": self.errors,
            "freshness_ms": _percentiles(self.freshness),
            "not_visible": self.unseen,
            "peak_rss_mb": self.peak_rss_mb,
            "counted_once": self.counted_once,
            "matches_recount": self.matches_recount,
            "notes": self.notes,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cardinal bench http", description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--ballots", type=int, help="a fixed number of ballots instead")
    parser.add_argument("--concurrency", type=int, default=64, help="clients in flight")
    parser.add_argument("--rate", type=float, help="open loop: ballots per second")
    parser.add_argument("--elections", type=int, default=4, help="open elections to spread over")
    parser.add_argument("--method", default="plurality", help="voting method of the elections")
    parser.add_argument("--topology", choices=("serve", "split"), default="serve")
    parser.add_argument("--workers", type=int, default=1, help="API processes (split topology)")
    parser.add_argument("--batch", type=int, default=500, help="WRITER_MAX_BATCH")
    parser.add_argument(
        "--max-queue", type=int, default=20_000, help="WRITER_MAX_QUEUE (small: force 503s)"
    )
    parser.add_argument("--compare-unbatched", action="store_true")
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
    parser.add_argument(
        "--chart",
        type=Path,
        help="SVG chart of ballots/s and p99 latency, second by second "
        "(default: .cardinal/bench/http-<time>.svg)",
    )
    args = parser.parse_args(argv)

    # The load generator shares the machine with the stack under test: uvloop keeps its
    # share of the CPU small (the stdlib loop cost it about twice as much per request).
    runs = [uvloop.run(_one_run(args, args.batch, f"WRITER_MAX_BATCH={args.batch}"))]
    if args.compare_unbatched:
        runs.append(uvloop.run(_one_run(args, 1, "WRITER_MAX_BATCH=1")))
    _print(runs)
    _picture(runs, args.chart)
    report: dict[str, Any] = {"bench": "http", "runs": [r.summary() for r in runs]}
    if len(runs) == 2 and runs[1].rate:
        report["ratio"] = round(runs[0].rate / runs[1].rate, 2)
        console.print(
            f"group commit vs. one ballot per transaction: [bold]{report['ratio']}x[/bold]"
        )
    line = json.dumps(report)
    print(line)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(line + "\n")
    ok = all(r.errors == 0 and r.counted_once and r.matches_recount for r in runs)
    return 0 if ok else 1


async def _one_run(args: argparse.Namespace, batch: int, label: str) -> RunFigures:
    figures = RunFigures(label)
    _reset_own_peak_rss()  # this run's peak, not an earlier run's verification
    with _stack(args, batch) as stack:
        console.print(
            f"[bold]{label}[/bold]: stack up ({args.topology}), {args.concurrency} clients, "
            f"{args.method}; process logs in {stack.logs}"
        )
        elections = await _elections(stack, args.elections, args.method)
        watcher = _FreshnessWatcher(stack.database_url)
        watch = asyncio.create_task(watcher.run())
        await watcher.ready.wait()
        receipts = await _drive(stack, elections, args, figures, watcher)
        last = max((p for _, p in receipts), default=0)
        await watcher.wait_for(last, 30)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        figures.freshness = watcher.lags
        figures.unseen = len(watcher.pending)
        figures.peak_rss_mb = stack.peak_rss()
        figures.peak_rss_mb["load generator"] = _own_peak_rss()
        figures.counted_once, figures.matches_recount = await _verify(
            stack, elections, receipts, figures
        )
    return figures


async def _drive(
    stack: Stack,
    elections: list[str],
    args: argparse.Namespace,
    figures: RunFigures,
    watcher: _FreshnessWatcher,
) -> list[tuple[str, int]]:
    receipts: list[tuple[str, int]] = []
    started = time.perf_counter()
    deadline = started + float(args.duration)
    remaining: list[int] | None = [int(args.ballots)] if args.ballots else None
    interval = args.concurrency / args.rate if args.rate else 0.0
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(10**9))

    def more() -> bool:
        if remaining is not None:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True
        return time.perf_counter() < deadline

    async def client(index: int) -> None:
        connection = LeanConnection("127.0.0.1", stack.port, CLIENT)
        next_send = time.perf_counter() + (interval * index / args.concurrency)
        try:
            while more():
                if interval:
                    delay = next_send - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_send += interval
                n = next(counter)
                election_id = elections[n % len(elections)]
                body = {"voter_id": f"{run_id}-{n}", **_ballot(args.method, n)}
                sent = time.perf_counter()
                try:
                    reply = await connection.request(
                        "POST", f"/api/elections/{election_id}/ballots", body
                    )
                except (ConnectionClosed, OSError):
                    figures.errors += 1
                    continue
                answered = time.perf_counter()
                figures.answered(int(answered - started), answered - sent, reply.status == 201)
                if reply.status == 201:
                    receipt = reply.json()
                    receipts.append((receipt["ballot_id"], receipt["position"]))
                    watcher.expect(receipt["position"], answered)
                else:
                    figures.refused[reply.status] = figures.refused.get(reply.status, 0) + 1
                    if figures.refused[reply.status] == 1:  # one example of each refusal
                        detail = reply.json().get("detail", "")
                        figures.notes.append(f"first {reply.status}: {detail}")
        finally:
            await connection.close()

    with _live_progress(figures, args, started):
        await asyncio.gather(*(client(i) for i in range(args.concurrency)))
    figures.seconds = time.perf_counter() - started
    return receipts


@contextlib.contextmanager
def _live_progress(figures: RunFigures, args: argparse.Namespace, started: float) -> Iterator[None]:
    """A progress bar (time, or ballots sent) with the current rate, twice a second."""
    total = float(args.ballots) if args.ballots else float(args.duration)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(figures.label, total=total, rate="")

        async def tick() -> None:
            seen, then = 0, started
            while True:
                await asyncio.sleep(0.5)
                now, answered = time.perf_counter(), len(figures.latencies)
                rate = f"{(answered - seen) / (now - then):,.0f} answers/s"
                seen, then = answered, now
                done = answered if args.ballots else min(now - started, total)
                bar.update(task, completed=done, rate=rate)

        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()


class _FreshnessWatcher:
    """Times each accepted ballot from its 2xx to the tally projection passing its position."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.pending: list[tuple[int, float]] = []
        self.lags: list[float] = []
        self.position = 0
        self.ready = asyncio.Event()
        self._moved = asyncio.Event()

    def expect(self, position: int, answered: float) -> None:
        if position <= self.position:
            self.lags.append(0.0)  # already visible when the 2xx arrived
        else:
            heapq.heappush(self.pending, (position, answered))

    async def run(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            self.ready.set()
            async for notice in conn.notifies():
                name, _, position = notice.payload.rpartition(":")
                if name != "tally" or not position.isdigit():
                    continue
                now = time.perf_counter()
                self.position = max(self.position, int(position))
                while self.pending and self.pending[0][0] <= self.position:
                    _, answered = heapq.heappop(self.pending)
                    self.lags.append(now - answered)
                self._moved.set()

    async def wait_for(self, position: int, patience: float) -> None:
        deadline = time.perf_counter() + patience
        while self.position < position and time.perf_counter() < deadline:
            self._moved.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), 1)


async def _verify(
    stack: Stack,
    elections: list[str],
    receipts: list[tuple[str, int]],
    figures: RunFigures,
) -> tuple[bool, bool]:
    """Every 2xx counted exactly once; every election equal to a recount of the log."""
    from infra.store import open_application
    from infra.store.log import recount_store
    from projections.results import differences_from_recount

    accepted = {ballot_id for ballot_id, _ in receipts}
    app = open_application(stack.database_url)
    try:
        async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
            cursor = await conn.execute(
                "SELECT ballot_id::text, count(*) FROM read_models.tally_ballots "
                "WHERE election_id = ANY(%s::uuid[]) GROUP BY ballot_id",
                (elections,),
            )
            counted: dict[str, int] = dict(await cursor.fetchall())
            cursor = await conn.execute(
                "SELECT count(*) FROM cardinal_events WHERE topic LIKE %s",
                ("%Ballot.Cast",),
            )
            row = await cursor.fetchone()
            cast_events = int(row[0]) if row else -1
            recount = await recount_store(conn, app.mapper)
            differing, served_ballots = await differences_from_recount(conn, recount)
            matches = not differing
    finally:
        app.close()
    once = (
        set(counted) == accepted
        and all(n == 1 for n in counted.values())
        and served_ballots == len(accepted)
        and cast_events == len(accepted)
    )
    if not once:
        figures.notes.append(
            f"accepted {len(accepted)}, in read model {len(counted)}, "
            f"counted {served_ballots}, Cast events {cast_events}"
        )
    return once, matches


async def _elections(stack: Stack, count: int, method: str) -> list[str]:
    admin = LeanConnection("127.0.0.1", stack.port, ADMIN)
    ids = []
    try:
        for n in range(count):
            created = await admin.request(
                "POST",
                "/api/elections",
                {"title": f"Bench {n}", "method": method, "options": OPTIONS},
            )
            assert created.status == 201, created.body
            election_id = str(created.json()["id"])
            opened = await admin.request("POST", f"/api/elections/{election_id}/open")
            assert opened.status == 200, opened.body
            ids.append(election_id)
    finally:
        await admin.close()
    return ids


def _ballot(method: str, n: int) -> dict[str, Any]:
    ids = [o["id"] for o in OPTIONS]
    pick = ids[n % len(ids)]
    if method == "plurality":
        return {"choice": pick}
    if method == "approval":
        return {"approve": [pick, ids[(n + 2) % len(ids)]]}
    if method in ("score", "star"):
        return {"scores": {pick: 2}}
    return {"ranking": [pick, ids[(n + 1) % len(ids)], ids[(n + 3) % len(ids)]]}


@contextlib.contextmanager
def _stack(args: argparse.Namespace, batch: int) -> Iterator[Stack]:
    """The processes under test: `cardinal serve`, or api, relay and projector."""
    commands = dict(SERVE if args.topology == "serve" else SEPARATE)
    if args.no_broker:
        commands.pop("relay", None)
    with Stack(
        args.server_url,
        Path(tempfile.mkdtemp(prefix="cardinal-bench-")),
        tokens={"admin": ADMIN, "client": CLIENT, "operator": "bench-op", "auditor": "bench-au"},
        commands=commands,
        amqp_url=None if args.no_broker else args.amqp_url,
        prefix="bench",
        env={
            "LOG_LEVEL": "WARNING",
            "WRITER_MAX_BATCH": str(batch),
            "WRITER_MAX_QUEUE": str(args.max_queue),
        },
    ) as stack:
        yield stack


def _reset_own_peak_rss() -> None:
    """Start this process's VmHWM afresh (Linux: clear_refs 5 resets the peak)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _own_peak_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1] * 1000, 1)}


def _picture(runs: list[RunFigures], chart: Path | None) -> None:
    """Second by second, in the terminal and as an SVG chart."""
    top = max((max(r.accepted_by_second, default=0) for r in runs), default=0)
    for run in runs:
        counts = run.accepted_by_second[: run.whole_seconds()]
        console.print(
            f"{run.label}, accepted ballots each second "
            f"({min(counts, default=0):,}-{max(counts, default=0):,}):\n"
            f"  [cyan]{sparkline(counts, top)}[/cyan]"
        )
    path = chart or Path(
        os.environ.get("CARDINAL_DATA_DIR", ".cardinal"),
        "bench",
        time.strftime("http-%Y%m%d-%H%M%S.svg"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        svg(
            [
                Panel(
                    "Accepted ballots per second",
                    "ballots/s",
                    {r.label: r.accepted_by_second[: r.whole_seconds()] for r in runs},
                ),
                Panel(
                    "Latency p99, second by second",
                    "ms",
                    {r.label: r.p99_by_second()[: r.whole_seconds()] for r in runs},
                ),
            ]
        )
    )
    console.print(f"chart: {path}")


def _print(runs: list[RunFigures]) -> None:
    table = Table(title="HTTP ballots: throughput, latency, freshness, memory")
    table.add_column("figure")
    for run in runs:
        table.add_column(run.label, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("accepted ballots/s", [f"{r.rate:,.0f}" for r in runs]),
        ("accepted", [f"{r.accepted:,}" for r in runs]),
        ("seconds", [f"{r.seconds:.1f}" for r in runs]),
    ]
    for key in ("p50", "p99", "max"):
        rows.append((f"latency {key} (ms)", [str(_percentiles(r.latencies)[key]) for r in runs]))
    for key in ("p50", "p99"):
        rows.append((f"freshness {key} (ms)", [str(_percentiles(r.freshness)[key]) for r in runs]))
    rows.append(("refused", [json.dumps(r.refused) if r.refused else "0" for r in runs]))
    rows.append(("transport errors", [str(r.errors) for r in runs]))
    names = sorted({name for r in runs for name in r.peak_rss_mb})
    for name in names:
        rows.append((f"peak RSS {name} (MB)", [str(r.peak_rss_mb.get(name, "")) for r in runs]))
    rows.append(("counted exactly once", [str(r.counted_once) for r in runs]))
    rows.append(("results = recount", [str(r.matches_recount) for r in runs]))
    for label, values in rows:
        table.add_row(label, *values)
    console.print(table)
    for run in runs:
        for note in run.notes:
            console.print(f"[yellow]{run.label}: {note}[/yellow]")
