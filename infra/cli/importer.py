"""`cardinal import FILE --election ID`: cast a file of ballots through the bulk path.

Reads JSONL or a CSV cast vote record (``infra.cli.ballot_files``), posts the ballots in
batches to ``POST /api/elections/{id}/ballots/batch`` with a progress bar, and reports what
was recorded and what was refused, and why. Each ballot carries an idempotency key derived
from the file, so running the same import again records nothing twice.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from domain.cvr import MarkRules, Then
from infra.bench.loadgen import ConnectionClosed, LeanConnection, Reply
from infra.cli.ballot_files import FileBallot, Reading, read_ballots
from infra.cli.environment import Commands

console = Console()
MAX_BATCH = 1000
SHOWN = 20  # refused ballots listed by line after an import


def add_commands(sub: Commands) -> None:
    parser = sub.add_parser(
        "import",
        help="cast a file of ballots (JSONL, or a CSV cast vote record) through the bulk path",
        description="Cast every ballot of a file into an open election, in batches of up to "
        f"{MAX_BATCH} (POST .../ballots/batch), with a progress bar. A CSV cast vote record "
        "has columns rank1..rankN (or 1st choice..) naming options by id or label, and "
        "overvote/undervote marks; the rules below say what those do to a ballot. Running "
        "the same import again records nothing twice.",
    )
    parser.add_argument("file", type=Path, help="a .jsonl file, or a .csv cast vote record")
    parser.add_argument("--election", required=True, help="the election's id")
    parser.add_argument(
        "--url",
        default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}",
        help="where the API listens",
    )
    parser.add_argument(
        "--token",
        default=_first("CARDINAL_CLIENT_TOKEN"),
        help="a client token (default: CARDINAL_CLIENT_TOKEN)",
    )
    parser.add_argument("--batch", type=int, default=MAX_BATCH, help="ballots per request")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    choices = [then.value for then in Then]
    for mark, default, meaning in (
        ("overvote", Then.EXHAUST, "more than one candidate at a rank"),
        ("undervote", Then.SKIP, "no candidate at a rank"),
        ("duplicate", Then.SKIP, "a candidate ranked again"),
        ("write-in", Then.SKIP, "a name that is no option"),
    ):
        parser.add_argument(
            f"--{mark}",
            choices=choices,
            default=default.value,
            help=f"what {meaning} does: skip the rank, or exhaust the ballot (default {default})",
        )
    parser.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    if not args.token:
        console.print("[red]a client token is needed: set CARDINAL_CLIENT_TOKEN or --token[/red]")
        return 2
    if not 1 <= args.batch <= MAX_BATCH:
        console.print(f"[red]--batch must be from 1 to {MAX_BATCH}[/red]")
        return 2
    rules = MarkRules(
        overvote=Then(args.overvote),
        undervote=Then(args.undervote),
        duplicate=Then(args.duplicate),
        unknown=Then(args.write_in),
    )
    return asyncio.run(_import(args, rules))


def _first(variable: str) -> str | None:
    tokens = [t.strip() for t in os.environ.get(variable, "").split(",") if t.strip()]
    return tokens[0] if tokens else None


async def _import(args: argparse.Namespace, rules: MarkRules) -> int:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    probe = LeanConnection(host, port, args.token)
    try:
        election = await probe.request("GET", f"/api/elections/{args.election}")
    finally:
        await probe.close()
    if election.status != 200:
        console.print(f"[red]the election cannot be read: {_said(election)}[/]")
        return 1
    reading = Reading()
    try:
        ballots = list(
            read_ballots(args.file, election.json()["options"], rules=rules, reading=reading)
        )
    except (OSError, ValueError) as error:
        console.print(f"[red]{args.file}: {error}[/red]")
        return 1
    tally = Counter[str]()
    refusals: list[tuple[int, str]] = []  # (line or row in the file, outcome)
    started = time.perf_counter()
    batches = iter([ballots[i : i + args.batch] for i in range(0, len(ballots), args.batch)])
    with Progress(
        TextColumn(f"importing {args.file.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("import", total=len(ballots), rate="")

        async def worker() -> None:
            connection = LeanConnection(host, port, args.token)
            try:
                for batch in batches:
                    outcomes = await _post(connection, args.election, batch)
                    for ballot, outcome in zip(batch, outcomes, strict=True):
                        tally[outcome] += 1
                        if not outcome.startswith("recorded"):
                            refusals.append((ballot.line, outcome))
                    done = sum(tally.values())
                    rate = done / (time.perf_counter() - started)
                    bar.update(task, completed=done, rate=f"{rate:,.0f} ballots/s")
            finally:
                await connection.close()

        await asyncio.gather(*(worker() for _ in range(max(1, args.concurrency))))
    seconds = time.perf_counter() - started
    _summary(args.file, tally, reading, len(ballots), seconds)
    _refusals(args.file, refusals)
    return 1 if refusals else 0


async def _post(connection: LeanConnection, election_id: str, batch: list[FileBallot]) -> list[str]:
    """Post one batch; the outcome of each ballot ('recorded: cast', or the refusal)."""
    body = {"ballots": [{**b.body, "idempotency_key": b.key} for b in batch]}
    path = f"/api/elections/{election_id}/ballots/batch"
    for attempt in range(20):
        try:
            reply = await connection.request("POST", path, body)
        except (ConnectionClosed, OSError):
            await asyncio.sleep(0.2 * (attempt + 1))
            continue
        if reply.status == 503:  # the same keys again: nothing is recorded twice
            await asyncio.sleep(float(reply.headers.get("retry-after", "1")))
            continue
        if reply.status != 200:
            return [_said(reply)] * len(batch)
        return [_outcome(result) for result in reply.json()["results"]]
    return ["503: the service stayed unavailable; run the import again"] * len(batch)


def _said(reply: Reply) -> str:
    """A refusal as a person reads it: the status and the problem's detail."""
    try:
        document = reply.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        detail = str(document.get("detail", ""))
    else:  # not a problem document (a proxy's page, say)
        detail = reply.body.decode("utf-8", "replace")[:200]
    return f"{reply.status}: {detail}"


def _refusals(path: Path, refusals: list[tuple[int, str]]) -> None:
    """Where in the file each refused ballot is (the first SHOWN of them), to fix and send
    again: a ballot already recorded is not recorded twice."""
    if not refusals:
        return
    console.print(f"[red]refused, by line of {path.name}:[/red]")
    for line, outcome in sorted(refusals)[:SHOWN]:
        console.print(f"  line {line}: {escape(outcome)}")  # it quotes the file
    if len(refusals) > SHOWN:
        console.print(f"  ... and {len(refusals) - SHOWN:,} more")


def _outcome(result: dict[str, Any]) -> str:
    if "ballot_id" in result:
        return f"recorded: {'replayed' if result.get('replayed') else result['status']}"
    return f"{result.get('status')}: {result.get('detail', '')}"


def _summary(path: Path, tally: Counter[str], reading: Reading, total: int, seconds: float) -> None:
    table = Table(title=f"Import of {path.name}")
    table.add_column("outcome")
    table.add_column("ballots", justify="right")
    for outcome, count in tally.most_common():
        colour = "green" if outcome.startswith("recorded") else "red"
        table.add_row(f"[{colour}]{escape(outcome)}[/]", f"{count:,}")
    if reading.blank:
        table.add_row("blank (nothing left to rank), not sent", f"{reading.blank:,}")
    for mark, count in reading.marks.most_common(10):
        table.add_row(f"[dim]marks: {mark}[/]", f"{count:,}")
    console.print(table)
    rate = total / seconds if seconds else 0.0
    console.print(f"{total:,} ballots in {seconds:.1f} s ({rate:,.0f} ballots/s)")
