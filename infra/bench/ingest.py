"""Benchmark: ballots from RabbitMQ, from the first publish to counted, through a SIGKILL.

A stack of its own (scratch database and namespace) with one `cardinal ingest` process.
Each phase opens an election, publishes MESSAGES messages of PER_MESSAGE ballots each (with
publisher confirms) while the consumer runs, SIGKILLs the consumer once about --kill-at of
the ballots are counted, starts it again, and waits until every ballot is in the log. The
figure is ballots/s from the first publish to the last ballot counted, the kill and the
restart included; then it checks every ballot was counted exactly once (each voter's
ballot recorded once, none lost). Phases: multi-ballot messages (the fast path), and one
ballot per message (the vote aggregation service's format), reported side by side.

Run: ``cardinal bench ingest [--messages 2000] [--per-message 100] [--single 20000]``.
Exit status 1 if a ballot was lost or counted twice, or if the multi-ballot figure is
under 10,000 ballots/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aio_pika
import psycopg
from rich.console import Console
from rich.table import Table

from domain.ballot import Ballot
from domain.rules import ElectionRules
from infra.bench.stack import Stack
from infra.ingest.publisher import publish
from infra.ingest.queues import IngestQueues
from infra.options import Parser
from infra.runtime.settings import Settings
from infra.store import open_application

console = Console()
TARGET_BALLOTS_PER_SECOND = 10_000
CAST_TOPIC = f"{Ballot.__module__}:{Ballot.__qualname__}.Cast"
OPTIONS = [{"id": "yes", "label": "Yes"}, {"id": "no", "label": "No"}]
TOKENS = {"admin": "bench-admin-token", "client": "bench-client-token"}


@dataclass
class Phase:
    name: str
    messages: int
    per_message: int
    seconds: float = 0.0
    killed_at: int = 0
    counted: int = 0
    distinct: int = 0
    refused: int = 0

    @property
    def ballots(self) -> int:
        return self.messages * self.per_message

    @property
    def rate(self) -> float:
        return self.ballots / self.seconds if self.seconds else 0.0

    @property
    def exact(self) -> bool:
        return self.counted == self.distinct == self.ballots and self.refused == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="cardinal bench ingest", description=__doc__)
    parser.add_argument("--messages", type=int, default=2000, help="multi-ballot messages")
    parser.add_argument("--per-message", type=int, default=100, help="ballots per message")
    parser.add_argument(
        "--single", type=int, default=20_000, help="one-ballot messages (0: skip that phase)"
    )
    parser.add_argument(
        "--kill-at", type=float, default=0.4, help="SIGKILL the consumer at this share counted"
    )
    parser.add_argument("--prefetch", type=int, default=Settings.ingest_prefetch)
    parser.add_argument("--batch", type=int, default=Settings.ingest_batch)
    parser.add_argument(
        "--server-url",
        default="postgresql://root@127.0.0.1:5432/postgres",
        help="PostgreSQL server to create the scratch database on",
    )
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    args = parser.parse_args(argv)
    phases = [Phase("multi-ballot messages", args.messages, args.per_message)]
    if args.single:
        phases.append(Phase("one ballot per message", args.single, 1))
    with (
        tempfile.TemporaryDirectory(prefix="bench-ingest-") as logs,
        ingest_stack(
            args.server_url,
            Path(logs),
            args.amqp_url,
            {"INGEST_PREFETCH": str(args.prefetch), "INGEST_BATCH": str(args.batch)},
        ) as stack,
    ):
        queue = Settings(namespace=stack.namespace).ingest_queue_name
        try:
            for phase in phases:
                asyncio.run(run_phase(stack, phase, queue, args.amqp_url, args.kill_at))
        finally:
            asyncio.run(delete_queues(args.amqp_url, queue))
    return _report(phases, args)


@contextlib.contextmanager
def ingest_stack(
    server_url: str, logs: Path, amqp_url: str, env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """A scratch database (migrated) and namespace, no process running yet."""
    with Stack(
        server_url,
        logs,
        tokens=TOKENS,
        commands={"api": ["api"]},
        amqp_url=amqp_url,
        prefix="ingest",
        env=env,
    ) as stack:
        stack.stop("api")  # it applied the migrations; the cores are the consumer's now
        yield stack


async def run_phase(stack: Stack, phase: Phase, queue: str, amqp_url: str, kill_at: float) -> None:
    """Publish the phase's ballots with a consumer running, SIGKILL it once ``kill_at`` of
    them are counted, start it again; time it, and count what was recorded."""
    election_id = await open_election(stack.database_url, phase.name)
    stack.start("ingest", ["ingest"])
    await until_consuming(amqp_url, queue)
    console.print(f"{phase.name}: {phase.ballots:,} ballots in {phase.messages:,} messages")
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        start = log_head(conn)
        started = time.perf_counter()
        publishing = asyncio.create_task(
            publish(amqp_url, queue, ballot_messages(election_id, phase))
        )
        await until_counted(conn, start + int(phase.ballots * kill_at), publishing)
        stack.kill("ingest")
        phase.killed_at = log_head(conn) - start
        console.print(f"  SIGKILL of the consumer at {phase.killed_at:,} counted; restarting it")
        stack.start("ingest", ["ingest"])
        await until_counted(conn, start + phase.ballots, publishing)
        # The head can run ahead of the count: a replay's rejected insert spends a position.
        await _until_all(conn, election_id, phase.ballots)
        phase.seconds = time.perf_counter() - started
        await publishing
        await asyncio.sleep(1)  # anything counted twice would show by now
        phase.counted, phase.distinct = count_ballots(conn, election_id)
    phase.refused = await _depth(amqp_url, IngestQueues(queue).refused)
    stack.stop("ingest")


def ballot_messages(election_id: UUID, phase: Phase) -> Iterator[tuple[str, Any]]:
    election = str(election_id)
    for m in range(phase.messages):
        if phase.per_message == 1:
            yield f"m{m}", {"election_id": election, "voter_id": f"v{m}", "choice": "yes"}
            continue
        first = m * phase.per_message
        ballots = [
            {"voter_id": f"v{first + n}", "choice": "yes" if n % 3 else "no"}
            for n in range(phase.per_message)
        ]
        yield f"m{m}", {"election_id": election, "ballots": ballots}


async def open_election(database_url: str, title: str) -> UUID:
    app = open_application(database_url)
    try:
        rules = ElectionRules.create(options=OPTIONS, method="plurality", allow_revote=False)
        created = await app.create_election(f"bench ingest: {title}", rules)
        await app.open_election(created.id)
        return created.id
    finally:
        app.close()


async def until_counted(
    conn: psycopg.Connection[Any], position: int, publishing: asyncio.Task[int]
) -> None:
    """Until the log reaches ``position`` (each ballot is one entry: a cheap progress)."""
    while log_head(conn) < position:
        if publishing.done():
            publishing.result()  # surfaces a publishing error
        await asyncio.sleep(0.05)


async def _until_all(conn: psycopg.Connection[Any], election_id: UUID, ballots: int) -> None:
    deadline = time.monotonic() + 120
    for _ in range(100_000):
        if count_ballots(conn, election_id)[1] >= ballots or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


def log_head(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(notification_id), 0) FROM cardinal_events").fetchone()
    assert row is not None
    return int(row[0])


def count_ballots(conn: psycopg.Connection[Any], election_id: UUID) -> tuple[int, int]:
    """Ballot events of the election recorded, and distinct ballots among them (a ballot's
    id is derived from its election and voter, so one voter's ballot counted twice would
    be two events of one ballot)."""
    row = conn.execute(
        "SELECT count(*), count(DISTINCT originator_id) FROM cardinal_events "
        "WHERE topic = %s AND state LIKE %s",
        (CAST_TOPIC, b"%" + str(election_id).encode() + b"%"),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def until_consuming(amqp_url: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await IngestQueues(queue).declare(channel)
        for _ in range(1200):
            declared = await channel.declare_queue(queue, passive=True)
            if declared.declaration_result.consumer_count:
                return
            await asyncio.sleep(0.05)
    raise RuntimeError("the consumer did not start within a minute")


async def _depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def delete_queues(amqp_url: str, queue: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await IngestQueues(queue).delete(await connection.channel())


def _report(phases: list[Phase], args: argparse.Namespace) -> int:
    table = Table(title="cardinal bench ingest (first publish to counted, SIGKILL included)")
    for column in ("phase", "ballots", "messages", "seconds", "ballots/s", "counted once"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for phase in phases:
        table.add_row(
            phase.name,
            f"{phase.ballots:,}",
            f"{phase.messages:,}",
            f"{phase.seconds:.2f}",
            f"{phase.rate:,.0f}",
            "yes" if phase.exact else f"NO ({phase.counted} events, {phase.distinct} ballots)",
        )
    console.print(table)
    figures = {
        "benchmark": "ingest",
        "prefetch": args.prefetch,
        "batch": args.batch,
        "phases": [
            {
                "phase": p.name,
                "ballots": p.ballots,
                "messages": p.messages,
                "seconds": round(p.seconds, 3),
                "ballots_per_second": round(p.rate),
                "killed_at": p.killed_at,
                "counted": p.counted,
                "distinct": p.distinct,
                "refused": p.refused,
                "exactly_once": p.exact,
            }
            for p in phases
        ],
        "target_ballots_per_second": TARGET_BALLOTS_PER_SECOND,
    }
    print(json.dumps(figures))
    if not all(p.exact for p in phases):
        console.print("[red]a ballot was lost or counted twice[/red]")
        return 1
    if phases[0].rate < TARGET_BALLOTS_PER_SECOND:
        console.print(f"[red]under the target of {TARGET_BALLOTS_PER_SECOND:,} ballots/s[/red]")
        return 1
    return 0
