"""`cardinal publish-test-votes`: the deployment checklist's smoke test.

Against a running API: creates a test election, opens it, casts N ballots, closes it, and
checks that the results count exactly the ballots sent, option by option. Exit status 0
only if they do.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from infra.bench.loadgen import LeanConnection, Reply
from infra.cli.environment import Commands, print_table, run_until_interrupted

console = Console()
OPTIONS = [
    {"id": "yes", "label": "Yes"},
    {"id": "no", "label": "No"},
    {"id": "abstain", "label": "Abstain"},
]


def add_commands(sub: Commands) -> None:
    parser = sub.add_parser(
        "publish-test-votes",
        help="smoke test: cast N test ballots in a test election and check they are counted",
        description="Against a running API (tokens from CARDINAL_ADMIN_TOKEN and "
        "CARDINAL_CLIENT_TOKEN): create and open a test election, cast N ballots, close it, "
        "and check the results count each exactly once.",
    )
    parser.set_defaults(command=run)
    add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=100, help="how many test ballots")
    parser.add_argument(
        "--url",
        default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}",
        help="where the API listens",
    )
    parser.add_argument("--admin-token", default=_first("CARDINAL_ADMIN_TOKEN"))
    parser.add_argument("--client-token", default=_first("CARDINAL_CLIENT_TOKEN"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--via",
        choices=("http", "amqp"),
        default="http",
        help="cast through the API, or publish to the ingest queue (`cardinal ingest`)",
    )
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL"))
    parser.add_argument(
        "--queue",
        default=os.environ.get("INGEST_QUEUE")
        or f"{os.environ.get('CARDINAL_NAMESPACE', 'cardinal')}.votes.aggregation",
        help="the ingest queue (--via amqp)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the smoke test with parsed arguments; 0 if every ballot was counted once."""
    if not args.admin_token or not args.client_token:
        console.print(
            "[red]an admin and a client token are needed: set CARDINAL_ADMIN_TOKEN and "
            "CARDINAL_CLIENT_TOKEN, or pass --admin-token and --client-token[/red]"
        )
        return 2
    if args.via == "amqp" and not args.amqp_url:
        console.print("[red]--via amqp needs the broker: set AMQP_URL or pass --amqp-url[/red]")
        return 2
    try:
        return run_until_interrupted(_run(args))
    except Refused as refused:
        console.print(f"[red]the smoke test failed: {refused}[/red]")
        return 1


def _first(variable: str) -> str | None:
    tokens = [t.strip() for t in os.environ.get(variable, "").split(",") if t.strip()]
    return tokens[0] if tokens else None


async def _run(args: argparse.Namespace) -> int:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    admin = LeanConnection(host, port, args.admin_token)
    try:
        created = _ok(
            await admin.request(
                "POST",
                "/api/elections",
                {
                    "title": f"Smoke test {time.strftime('%Y-%m-%d %H:%M:%S')}",
                    "method": "plurality",
                    "options": OPTIONS,
                },
            )
        )
        election_id = created["id"]
        _ok(await admin.request("POST", f"/api/elections/{election_id}/open"))
        try:
            if args.via == "amqp":
                sent, last = await _cast_amqp(args, election_id)
            else:
                sent, last = await _cast(host, port, args, election_id)
        except BaseException:  # (a test election is never left open, whatever stopped it;
            with contextlib.suppress(Exception):  # what stopped it is what is said)
                await admin.request("POST", f"/api/elections/{election_id}/close")
            raise
        closed = _ok(await admin.request("POST", f"/api/elections/{election_id}/close"))
        results = await _results(admin, election_id, max(last, closed["position"]))
    finally:
        await admin.close()
    counted = {option["id"]: option["votes"] for option in results["options"]}
    table = Table(title=f"Smoke test: election {election_id}")
    for column in ("option", "sent", "counted"):
        table.add_column(column, justify="right")
    for option in OPTIONS:
        table.add_row(option["id"], str(sent[option["id"]]), str(counted.get(option["id"])))
    print_table(console, table)
    ok = results["ballots"] == args.n and all(counted[o] == sent[o] for o in sent)
    console.print(
        f"[green]all {args.n} test ballots counted exactly once[/green]"
        if ok
        else f"[red]results count {results['ballots']} ballots; {args.n} were sent[/red]"
    )
    return 0 if ok else 1


async def _cast(
    host: str, port: int, args: argparse.Namespace, election_id: str
) -> tuple[Counter[str], int]:
    run = uuid.uuid4().hex[:8]
    sent: Counter[str] = Counter()
    positions: list[int] = []
    todo = list(range(args.n))
    failed: list[Refused] = []  # (the others stop at the first refusal)
    with Progress(TextColumn("casting"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task("cast", total=args.n)

        async def client() -> None:
            connection = LeanConnection(host, port, args.client_token)
            try:
                while todo and not failed:
                    n = todo.pop()
                    choice = OPTIONS[n % len(OPTIONS)]["id"]
                    try:
                        receipt = _ok(
                            await connection.request(
                                "POST",
                                f"/api/elections/{election_id}/ballots",
                                {"choice": choice, "voter_id": f"smoke-{run}-{n}"},
                            )
                        )
                    except Refused as refused:
                        failed.append(refused)
                        raise
                    sent[choice] += 1
                    positions.append(receipt["position"])
                    bar.advance(task)
            finally:
                await connection.close()

        outcomes = await asyncio.gather(
            *(client() for _ in range(args.concurrency)), return_exceptions=True
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):  # the first refusal, said once
            raise outcome
    return sent, max(positions, default=0)


async def _cast_amqp(args: argparse.Namespace, election_id: str) -> tuple[Counter[str], int]:
    """Publish the ballots to the ingest queue with confirms, each asking for its receipt."""
    from infra.ingest.publisher import cast_with_receipts

    run = uuid.uuid4().hex[:8]
    choices = {f"smoke-{run}-{n}": str(OPTIONS[n % len(OPTIONS)]["id"]) for n in range(args.n)}
    messages = [
        (key, {"election_id": election_id, "voter_id": key, "choice": choice})
        for key, choice in choices.items()
    ]
    console.print(f"publishing {args.n} ballots to {args.queue} (publisher confirms)")
    try:
        answers = await cast_with_receipts(args.amqp_url, args.queue, messages)
    except TimeoutError:
        raise SystemExit(
            f"not every ballot was answered within a minute: is `cardinal ingest` consuming "
            f"{args.queue}?"
        ) from None
    refused = {key: answer for key, answer in answers.items() if "ballot_id" not in answer}
    if refused:
        raise SystemExit(f"refused: {next(iter(refused.values()))}")
    return Counter(choices.values()), max((int(a["position"]) for a in answers.values()), default=0)


async def _results(admin: LeanConnection, election_id: str, position: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        results = _ok(
            await admin.request(
                "GET", f"/api/elections/{election_id}/results?min_position={position}"
            )
        )
        if int(results["position"]) >= position or time.monotonic() > deadline:
            return results


class Refused(Exception):
    """The API refused a step of the smoke test (said in one line, not a traceback)."""


def _ok(reply: Reply) -> dict[str, Any]:
    if reply.status >= 300:
        raise Refused(f"the API answered {reply.status}: {reply.body.decode(errors='replace')}")
    body: dict[str, Any] = reply.json()
    return body
