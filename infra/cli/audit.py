"""`cardinal audit export` and `cardinal audit verify`, with progress bars and a summary."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from infra.audit.chain import Signer, key_id
from infra.audit.export import export
from infra.audit.pinned import PinnedError, pinned
from infra.audit.sources import verify_database, verify_file
from infra.audit.verifier import (
    FINAL_HEAD,
    PREVIOUS_CHECKPOINT,
    PREVIOUS_HEAD,
    Discrepancy,
    Report,
    UnknownElection,
)
from infra.cli.environment import Commands, print_table, run_until_interrupted
from infra.runtime.settings import Settings, SettingsError
from infra.store.migrations import require_current

console = Console()
# (An export may go to stdout, `--output /dev/stdout | gzip`: what the command says goes to
# stderr, never into the file after its signed head.)
said = Console(stderr=True)


def add_commands(commands: Commands) -> None:
    parser = commands.add_parser(
        "audit",
        help="export the log for auditors, or verify the chain and every served result",
        description="`cardinal audit export --output FILE` and "
        "`cardinal audit verify [--file FILE] [--election ID]`.",
    )
    sub = parser.add_subparsers(title="audit commands", required=True, metavar="ACTION")
    exporting = sub.add_parser(
        "export",
        help="write the log, its chain, checkpoints and served results as NDJSON",
        description="Write everything an auditor needs to `cardinal audit verify --file` "
        "on a machine with no database access (needs DATABASE_URL here).",
    )
    exporting.add_argument("--output", type=Path, required=True, help="file to write")
    exporting.set_defaults(command=run_export, interrupted="no export was written; run it again")
    verifying = sub.add_parser(
        "verify",
        help="check the chain, the signatures, and every served result against a replay",
        description="Recompute the hash chain, check every checkpoint's signature and head, "
        "replay every election with the domain's recount and compare with the results "
        "served. Exit status 1 and the position of the first discrepancy if anything "
        "does not check out. From the database (DATABASE_URL) or from an export (--file).",
    )
    verifying.add_argument("--file", type=Path, help="an export to verify (no database needed)")
    verifying.add_argument("--election", type=UUID, help="compare this election's results only")
    verifying.add_argument(
        "--public-key",
        type=_public_key,
        action="append",
        default=[],
        metavar="HEX",
        help="hex Ed25519 public key to check signatures with (from GET /api/audit/public-key); "
        "may be repeated: after the audit key was rotated, give the earlier keys too (only "
        "these keys are trusted then)",
    )
    verifying.add_argument(
        "--previous",
        type=Path,
        action="append",
        default=[],
        metavar="EXPORT",
        help="an earlier export you kept: each checkpoint in it, and its own signed head, "
        "must still be on the chain (a store rewritten and signed again does not pass); may "
        "be repeated (one written before exports ended with a signed head pins its "
        "checkpoints alone, with --accept-format-1)",
    )
    verifying.add_argument(
        "--accept-format-1",
        action="store_true",
        help="check an export written before 2026-12-06 (format cardinal-audit/1) as far as "
        "it goes: nothing attests where such a file ends, so a copy cut at a checkpoint "
        "passes too; without this, such a file fails --file, and one without a signed head "
        "at its end pins nothing as --previous (with it, its checkpoints)",
    )
    verifying.add_argument(
        "--served",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="results documents saved as the API served them (JSON, an array, or one per "
        "line): each must equal the replay at its position, and a closed election's "
        "final_chain_head must be on the chain; may be repeated",
    )
    verifying.add_argument(
        "--strict",
        action="store_true",
        help="also re-validate every ballot against its rules, and fail on any entry that "
        "cannot be counted (otherwise such entries are reported and left out, as the "
        "projections leave them out)",
    )
    verifying.set_defaults(command=run_verify)


def run_export(args: argparse.Namespace) -> int:
    # (Not the service's secrets: who exports needs DATABASE_URL and CARDINAL_AUDIT_KEY,
    # never CARDINAL_SECRET, which links voters to ballots.)
    settings = Settings.from_env(service=False)
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set; export reads the event store")
    require_current(settings.database_url)
    if not settings.audit_key:
        # An export is attested by its signed head alone: without the key, no verify passes.
        raise SettingsError(
            "CARDINAL_AUDIT_KEY is not set; an export signs its own head with it (run the "
            "export where the sealer's key is)"
        )
    signer = Signer(settings.audit_key)
    started = time.perf_counter()
    with _bar("exporting", said) as (bar, task):
        count = run_until_interrupted(
            export(
                settings.database_url,
                args.output,
                signer,
                lambda position, head: bar.update(task, completed=position, total=head),
            )
        )
    said.print(f"wrote {count:,} events to {args.output} in {time.perf_counter() - started:.1f} s")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    given = {key_id(key): key for key in args.public_key}
    try:
        brought = pinned(args.previous, args.served, accept_format_1=args.accept_format_1)
    except PinnedError as error:
        console.print(f"[red bold]cannot verify[/red bold]: {error}")
        return 2
    started = time.perf_counter()
    try:
        with _bar("verifying") as (bar, task):

            def show(position: int, head: int) -> None:
                bar.update(task, completed=position, total=head)

            if args.file is not None:
                report = verify_file(
                    args.file,
                    election=args.election,
                    validate=args.strict,
                    public_keys=given,
                    progress=show,
                    pinned=brought,
                    accept_format_1=args.accept_format_1,
                )
                if not given:
                    report.notes.append(
                        "signatures were checked with the public key in the export's header "
                        f"(key {', '.join(sorted(report.keys)) or 'none'}); compare it with "
                        "the one the deployment publishes (--public-key)"
                    )
            else:
                settings = Settings.from_env(service=False)  # (an auditor: no service secret)
                if settings.database_url is None:
                    raise SettingsError("DATABASE_URL is not set (or give --file)")
                require_current(settings.database_url)
                keys = _keys(given, settings)
                # asyncio.run: the replay's half waits in a blocking call, where a signal
                # the loop handled would wait for it; SIGTERM raises Interrupted at once.
                report = asyncio.run(
                    verify_database(
                        settings.database_url,
                        public_keys=keys,
                        election=args.election,
                        validate=args.strict,
                        progress=show,
                        pinned=brought,
                    )
                )
    except UnknownElection as unknown:
        console.print(f"[red bold]cannot verify[/red bold]: {unknown} (check the id)")
        return 2
    except Discrepancy as discrepancy:
        if discrepancy.position is None:  # (it names a line of the file, or no place)
            console.print(f"[red bold]FAILED[/red bold]: {discrepancy}")
        else:
            console.print(f"[red bold]FAILED[/red bold] at {discrepancy}")
        return 1
    report.notes.extend(brought.notes)
    # What was brought, all checked once the run passed (a --served document of another
    # election than --election's excepted): a count of 0 says a file pinned nothing.
    if args.previous:
        report.pins.setdefault(PREVIOUS_CHECKPOINT, 0)
        report.pins.setdefault(PREVIOUS_HEAD, 0)
    if args.served:
        report.pins.setdefault(FINAL_HEAD, 0)
        report.served_pinned = sum(
            1
            for document in brought.served
            if args.election is None or UUID(str(document["election_id"])) == args.election
        )
    for trusted in given:  # (a key given that signed nothing here is shown too)
        report.keys.setdefault(trusted, 0)
    _summary(report, time.perf_counter() - started)
    return 0


def _public_key(text: str) -> bytes:
    """An Ed25519 public key as GET /api/audit/public-key gives it: 64 hex digits."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise argparse.ArgumentTypeError(
            "must be an Ed25519 public key: 64 hex digits, as GET /api/audit/public-key gives it"
        )
    return key


def _keys(given: dict[str, bytes], settings: Settings) -> dict[str, bytes]:
    """The keys a database verify trusts: the auditor's (--public-key), or else the public
    key of the CARDINAL_AUDIT_KEY it runs with; never one the store names."""
    if given:
        return given
    if settings.audit_key is not None:
        signer = Signer(settings.audit_key)
        return {signer.key_id: signer.public_key}
    raise SettingsError("give --public-key (from GET /api/audit/public-key) to check signatures")


SUMMARY_ELECTIONS = 20  # elections listed one by one in the summary, at most


def _summary(report: Report, seconds: float) -> None:
    table = Table(title="Audit verified")
    table.add_column("check")
    table.add_column("result", justify="right")
    rate = report.entries / seconds if seconds else 0.0
    table.add_row("log entries replayed", f"{report.entries:,} (to position {report.head:,})")
    table.add_row("chain links recomputed", f"{report.sealed:,}")
    table.add_row("signed checkpoints", f"{report.checkpoints:,}")
    for signer, signed in sorted(report.keys.items()):
        table.add_row(f"  signed by key {signer}", f"{signed:,}")
    table.add_row("elections replayed", f"{report.elections:,}")
    table.add_row("served results equal to the replay", f"{report.results:,}")
    if len(report.compared) <= SUMMARY_ELECTIONS:  # (beyond, the count alone)
        for election_id, compared in sorted(report.compared.items()):
            table.add_row(f"  election {election_id}", f"{compared:,}")
    if report.set_aside:
        table.add_row("entries the replay could not count", f"[yellow]{report.set_aside:,}[/]")
    for pin in (PREVIOUS_CHECKPOINT, PREVIOUS_HEAD):
        if pin in report.pins:
            table.add_row(pin, f"{report.pins[pin]:,}")
    if FINAL_HEAD in report.pins:
        table.add_row("--served: documents equal to the replay", f"{report.served_pinned:,}")
        table.add_row(FINAL_HEAD, f"{report.pins[FINAL_HEAD]:,}")
    table.add_row("speed", f"{rate:,.0f} entries/s ({seconds:.1f} s)")
    print_table(console, table)
    if report.exported_at is not None or report.export_head is not None:
        # An old export presented as current verifies too: its date and head say which.
        console.print(
            f"export written at: {report.exported_at or 'unknown (no exported_at)'}",
            soft_wrap=True,
        )
    if report.export_head is not None:
        position, head = report.export_head
        console.print(
            f"export's signed head: position {position:,}, hash {head.hex()}", soft_wrap=True
        )
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print("[green bold]OK[/green bold]: everything checks out")


@contextmanager
def _bar(label: str, on: Console = console) -> Iterator[tuple[Progress, TaskID]]:
    """A progress bar over log positions."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=on,
        transient=True,
    ) as progress:
        yield progress, progress.add_task(label, total=None)
