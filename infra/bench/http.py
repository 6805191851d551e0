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
- with ``--compare-unbatched``, the same run with WRITER_MAX_BATCH=1 and the ratio;
- with ``--rate-limit``, the same run with the shared rate limit on (a check in PostgreSQL
  per ballot) and its cost: how many fewer ballots/s than the run without (target: 10%).
  In both runs every client sends from an address of its own, through a trusted proxy
  (X-Forwarded-For, FORWARDED_ALLOW_IPS), under a limit none of them reaches.

Every ballot is a first cast by a fresh voter, so "counted once" is exact: the results'
ballot count equals the number of 2xx answers, and each receipt's ballot is in the read
model once. A 503 is not retried (it is the back-pressure under test) and must leave no
trace in the log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import uvloop
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from infra.bench.freshness import FreshnessWatcher
from infra.bench.http_report import percentiles, picture, print_table
from infra.bench.loadgen import ConnectionClosed, LeanConnection
from infra.bench.stack import SEPARATE, SERVE, Stack

console = Console()
ADMIN = "bench-admin"
CLIENT = "bench-client"
RATE_LIMIT_TARGET = 0.10
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
            percentiles(self.latencies[start:end])["p99"] or 0.0
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
            "latency_ms": percentiles(self.latencies),
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
            "errors": self.errors,
            "freshness_ms": percentiles(self.freshness),
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
        "--rate-limit",
        action="store_true",
        help="also run with ENABLE_RATE_LIMITING on and report what it costs",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --rate-limit: pairs of runs, alternating off and on; the cost compares "
        "the medians (a shared machine's load drifts between runs)",
    )
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
    label = "rate limit off" if args.rate_limit else f"WRITER_MAX_BATCH={args.batch}"
    runs = [uvloop.run(_one_run(args, args.batch, label))]
    if args.compare_unbatched:
        runs.append(uvloop.run(_one_run(args, 1, "WRITER_MAX_BATCH=1")))
    if args.rate_limit:
        for n in range(args.repeat):
            if n:
                runs.append(uvloop.run(_one_run(args, args.batch, f"rate limit off #{n + 1}")))
            suffix = f" #{n + 1}" if args.repeat > 1 else ""
            runs.append(
                uvloop.run(_one_run(args, args.batch, f"rate limit on{suffix}", limited=True))
            )
    print_table(runs)
    picture(runs, args.chart)
    report: dict[str, Any] = {"bench": "http", "runs": [r.summary() for r in runs]}
    if args.compare_unbatched and runs[1].rate:
        report["ratio"] = round(runs[0].rate / runs[1].rate, 2)
        console.print(
            f"group commit vs. one ballot per transaction: [bold]{report['ratio']}x[/bold]"
        )
    missed = False
    if args.rate_limit and runs[0].rate:
        off = statistics.median(r.rate for r in runs if "off" in r.label)
        on = statistics.median(r.rate for r in runs if " on" in r.label)
        cost = 1 - on / off
        report["rate_limit_cost"] = round(cost, 3)
        missed = cost > RATE_LIMIT_TARGET
        console.print(
            f"rate limiting costs [bold]{cost:.1%}[/bold] of ballots/s "
            f"(median {on:,.0f} vs {off:,.0f} over {args.repeat} pair(s); target at most "
            f"{RATE_LIMIT_TARGET:.0%}{', missed' if missed else ''})"
        )
    line = json.dumps(report)
    print(line)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(line + "\n")
    ok = all(r.errors == 0 and r.counted_once and r.matches_recount for r in runs)
    return 0 if ok and not missed else 1


async def _one_run(
    args: argparse.Namespace, batch: int, label: str, *, limited: bool = False
) -> RunFigures:
    figures = RunFigures(label)
    _reset_own_peak_rss()  # this run's peak, not an earlier run's verification
    env = {"ENABLE_RATE_LIMITING": "true" if limited else "false"}
    if args.rate_limit:
        # No client comes near it: the run measures the checks, not refusals.
        env.update({"MAX_VOTES_PER_IP_PER_HOUR": str(10**9), "FORWARDED_ALLOW_IPS": "127.0.0.1"})
    with _stack(args, batch, env) as stack:
        console.print(
            f"[bold]{label}[/bold]: stack up ({args.topology}), {args.concurrency} clients, "
            f"{args.method}; process logs in {stack.logs}"
        )
        elections = await _elections(stack, args.elections, args.method)
        watcher = FreshnessWatcher(stack.database_url)
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
    watcher: FreshnessWatcher,
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
        # Each client its own address behind the proxy (198.18.0.0/15: benchmarking).
        forwarded = (
            {"X-Forwarded-For": f"198.18.{index // 250}.{index % 250 + 1}"}
            if args.rate_limit
            else None
        )
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
                        "POST", f"/api/elections/{election_id}/ballots", body, forwarded
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
def _stack(args: argparse.Namespace, batch: int, extra: dict[str, str]) -> Iterator[Stack]:
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
            **extra,
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
