"""Benchmark: ballots over HTTP against a running stack, and what it takes to see them.

Starts a stack (``cardinal serve``, or api + relay + projector processes with
``--topology split``) on a scratch database and RabbitMQ namespace, then drives ballots
with a given concurrency for a given time (or a fixed number of ballots, or a fixed rate),
and reports:

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
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import psycopg
import uvloop
from rich.console import Console

from infra.bench import bare
from infra.bench.freshness import FreshnessWatcher
from infra.bench.http_drive import Load, RunFigures, drive
from infra.bench.http_report import percentiles, picture, print_table
from infra.bench.loadgen import LeanConnection, open_election
from infra.bench.stack import SEPARATE, SERVE, Stack, context_switches, free_port
from infra.options import Parser
from infra.runtime.settings import Settings

console = Console()
ADMIN = "bench-admin"
CLIENT = "bench-client"
RATE_LIMIT_TARGET = 0.10
P99_TARGET_MS = 50
REFERENCE = "bare endpoint"
OPTIONS = [{"id": f"o{i}", "label": f"Option {i}"} for i in range(5)]


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The load generator shares the machine with the stack under test: uvloop keeps its
    # share of the CPU small (the stdlib loop cost it about twice as much per request).
    label = "rate limit off" if args.rate_limit else f"WRITER_MAX_BATCH={args.batch}"
    runs = [uvloop.run(_one_run(args, args.batch, label))]
    if args.compare_unbatched:
        runs.append(uvloop.run(_one_run(args, 1, "WRITER_MAX_BATCH=1")))
    if args.bulk:
        runs.append(uvloop.run(_one_run(args, args.batch, f"bulk, {args.bulk} per request")))
    if args.reference:
        runs.append(uvloop.run(_reference_run(args)))
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
    missed = _ratios(args, runs, report)
    line = json.dumps(report)
    print(line)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(line + "\n")
    measured = [r for r in runs if r.label != REFERENCE]
    ok = all(r.errors == 0 and r.counted_once and r.matches_recount for r in measured)
    return 0 if ok and not missed else 1


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cardinal bench http", description=__doc__)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--ballots", type=int, help="a fixed number of ballots instead")
    parser.add_argument("--concurrency", type=int, default=64, help="clients in flight")
    parser.add_argument("--rate", type=float, help="open loop: ballots per second")
    parser.add_argument("--elections", type=int, default=4, help="open elections to spread over")
    parser.add_argument("--method", default="plurality", help="voting method of the elections")
    parser.add_argument("--topology", choices=("serve", "split"), default="serve")
    parser.add_argument("--batch", type=int, default=500, help="WRITER_MAX_BATCH")
    parser.add_argument(
        "--max-queue", type=int, default=20_000, help="WRITER_MAX_QUEUE (small: force 503s)"
    )
    parser.add_argument("--compare-unbatched", action="store_true")
    parser.add_argument(
        "--reference",
        action="store_true",
        help="also drive a bare Starlette endpoint (parse the JSON, answer 201, record "
        "nothing) the same way, and report the share of its rate the ballot path reaches",
    )
    parser.add_argument(
        "--bulk",
        type=int,
        metavar="N",
        help="also run the bulk path, N ballots per POST .../ballots/batch (at most 1000), "
        "and report its ballots/s against single ballots",
    )
    parser.add_argument(
        "--bulk-concurrency",
        type=int,
        default=8,
        help="clients in flight in the bulk run (each carries --bulk ballots)",
    )
    parser.add_argument(
        "--targets",
        action="store_true",
        help="exit 1 when a target is missed: single ballots at least 30%% of the bare "
        "endpoint with p99 under 50 ms, at least 6x WRITER_MAX_BATCH=1, bulk at least 10x",
    )
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
    return parser


def _ratios(args: argparse.Namespace, runs: list[RunFigures], report: dict[str, Any]) -> bool:
    """Each comparison the options asked for, printed and reported; True if a target is
    missed (with --targets for the issue's targets; the rate limit's is always on)."""
    first, missed = runs[0], []
    by_label = {r.label: r for r in runs}

    def compare(key: str, ratio: float, target: float | None, what: str) -> None:
        report[key] = round(ratio, 3)
        short = target is not None and ratio < target
        if short:
            missed.append(key)
        goal = "" if target is None else f" (target {target:g}{', missed' if short else ''})"
        console.print(f"{what}: [bold]{ratio:.2f}[/bold]{goal}")

    targets = args.targets
    if args.compare_unbatched and by_label["WRITER_MAX_BATCH=1"].rate:
        report["ratio"] = round(first.rate / by_label["WRITER_MAX_BATCH=1"].rate, 2)
        compare(
            "ratio",
            report["ratio"],
            6 if targets else None,
            "group commit vs. one ballot per transaction (x)",
        )
    bulk = next((r for r in runs if r.label.startswith("bulk")), None)
    if bulk is not None and first.rate:
        compare(
            "bulk_ratio",
            bulk.rate / first.rate,
            10 if targets else None,
            "bulk path vs. single ballots (x)",
        )
    reference = by_label.get(REFERENCE)
    if reference is not None and reference.rate:
        compare(
            "reference_share",
            first.rate / reference.rate,
            0.3 if targets else None,
            "single ballots' share of the bare endpoint's rate",
        )
    p99 = percentiles(first.latencies)["p99"]
    if targets and (p99 is None or p99 >= P99_TARGET_MS):
        missed.append("p99")
        console.print(f"single-ballot p99 {p99} ms (target under {P99_TARGET_MS} ms, missed)")
    if args.rate_limit and first.rate:
        off = statistics.median(r.rate for r in runs if "off" in r.label)
        on = statistics.median(r.rate for r in runs if " on" in r.label)
        cost = 1 - on / off
        report["rate_limit_cost"] = round(cost, 3)
        if cost > RATE_LIMIT_TARGET:
            missed.append("rate_limit_cost")
        console.print(
            f"rate limiting costs [bold]{cost:.1%}[/bold] of ballots/s "
            f"(median {on:,.0f} vs {off:,.0f} over {args.repeat} pair(s); target at most "
            f"{RATE_LIMIT_TARGET:.0%}{', missed' if cost > RATE_LIMIT_TARGET else ''})"
        )
    return bool(missed)


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
        bulk = args.bulk if label.startswith("bulk") else 1
        before, switched = _cpu(stack), _switches(stack)
        scanned = _rows_scanned(stack.database_url)
        receipts = await drive(_load(args, stack.port, elections, bulk), figures, watcher)
        last = max((p for _, p in receipts), default=0)
        await watcher.wait_for(last, 30)
        # Until the projections have the last ballot: their share is in the budget too.
        figures.cpu_per_ballot(before, _cpu(stack))
        figures.switches_per_ballot(switched, _switches(stack))
        if figures.accepted:
            scanned = _rows_scanned(stack.database_url) - scanned
            figures.scanned_per_ballot = round(scanned / figures.accepted, 2)
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


def _rows_scanned(database_url: str) -> int:
    """Rows read by whole-table scans so far, every table of the database. On the ballot
    path every read is by key: a figure that grows with the log is a plan gone wrong
    (PostgreSQL publishes these counts about once a second, so the last second may be
    missing)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_all_tables"
        ).fetchone()
    return int(row[0]) if row else 0


async def _reference_run(args: argparse.Namespace) -> RunFigures:
    """The bare endpoint, served as the API is and driven by the same clients."""
    figures = RunFigures(REFERENCE)
    port = free_port()
    processes = Settings.from_env().api_processes
    log = Path(tempfile.mkdtemp(prefix="cardinal-bench-")) / "bare.log"
    started = bare.serve(port, processes, log)
    try:
        await _until_listening(port, started)
        console.print(f"[bold]{REFERENCE}[/bold]: {processes} process(es); log in {log}")
        elections = [str(uuid.uuid4()) for _ in range(args.elections)]
        before, switched = _bare_cpu(started), _bare_switches(started)
        await drive(_load(args, port, elections, 1), figures, None)
        figures.cpu_per_ballot(before, _bare_cpu(started))
        figures.switches_per_ballot(switched, _bare_switches(started))
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=10)
    return figures


async def _until_listening(port: int, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("the bare endpoint did not start") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            # Every process has bound the shared port once the last one is running.
            await asyncio.sleep(0.5)
            return


def _load(args: argparse.Namespace, port: int, elections: list[str], bulk: int) -> Load:
    return Load(
        port=port,
        token=CLIENT,
        elections=elections,
        ballot=partial(_ballot, args.method),
        concurrency=args.bulk_concurrency if bulk > 1 else args.concurrency,
        duration=float(args.duration),
        ballots=args.ballots,
        rate=args.rate,
        per_request=bulk,
        forwarded=bool(args.rate_limit),
    )


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
    try:
        return [
            await open_election(
                admin, {"title": f"Bench {n}", "method": method, "options": OPTIONS}
            )
            for n in range(count)
        ]
    finally:
        await admin.close()


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


def _cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of each stack role, PostgreSQL's backends and this process."""
    times = os.times()
    return {**stack.cpu_seconds(), "load generator": times.user + times.system}


def _switches(stack: Stack) -> dict[str, int]:
    """Context switches so far of each stack role, PostgreSQL's backends and this process."""
    return {**stack.context_switches(), "load generator": context_switches()}


def _bare_switches(processes: list[subprocess.Popen[bytes]]) -> dict[str, int]:
    spent = sum(context_switches(process.pid) for process in processes)
    return {"bare endpoint": spent, "load generator": context_switches()}


def _bare_cpu(processes: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    spent = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(process.pid).cpu_times()
            spent += times.user + times.system
    own = os.times()
    return {"bare endpoint": spent, "load generator": own.user + own.system}


def _reset_own_peak_rss() -> None:
    """Start this process's VmHWM afresh (Linux: clear_refs 5 resets the peak)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _own_peak_rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
