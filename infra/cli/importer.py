"""`cardinal import FILE --election ID`: cast a file of ballots through the bulk path.

Reads JSONL or a CSV cast vote record (``infra.cli.ballot_files``), posts the ballots in
batches to ``POST /api/elections/{id}/ballots/batch`` with a progress bar, and reports what
was recorded and what was refused, and why. Each ballot carries an idempotency key made of
its voter and its content, keyed by the client token, so running the same import again with
the same token records nothing twice. If the
API stops answering, the import waits up to PATIENCE seconds for it, then stops and says how
many ballots it did not send: running it again with the same token sends them. A ballot
refused for a reason that says nothing about it (the API failing, busy, or racing another
change to the voter's ballot) keeps its voter's later ballots unsent, so that they do not
overtake it when it is sent again. The file's voters go in an order of chance, not the
file's (``_lanes``): each voter's own lines in file order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import ssl
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from domain.cvr import MarkRules, Then
from domain.errors import ConcurrentRevision
from infra.bench.loadgen import ConnectionClosed, LeanConnection, Reply
from infra.cli.ballot_files import VOTER_COLUMNS, FileBallot, NeedsSource, Reading, read_ballots
from infra.cli.environment import Commands, positive_int, print_table, run_until_interrupted
from infra.runtime.voters import is_voter_token

console = Console()
RATE_AFTER = 1.0  # seconds: a shorter import's summary gives no rate
MAX_BATCH = 1000
SHOWN = 20  # refused ballots listed by line after an import
PATIENCE = 60.0  # seconds without an answer (or with only 503s) before an import stops
CLIENT_TOKEN = "CARDINAL_CLIENT_TOKEN"  # noqa: S105 - the variable's name, not a token
REFUSE = "refuse"  # --write-in: a name that matches no option stops the import
_SHUFFLE = random.SystemRandom().shuffle


class Unreachable(Exception):
    """The API did not take a batch within PATIENCE seconds."""


def _either(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


def add_commands(sub: Commands) -> None:
    parser = sub.add_parser(
        "import",
        help="cast a file of ballots (JSONL, or a CSV cast vote record) through the bulk path",
        description="Cast every ballot of a file into an open election, in batches of up to "
        f"{MAX_BATCH} (POST .../ballots/batch), with a progress bar. A CSV cast vote record "
        "has columns rank1..rankN (or 1st choice..) naming options by id or label, and "
        "overvote/undervote marks; the rules below say what those do to a ballot, and a name "
        "that matches no option stops the import unless --write-in says what it does. Its "
        "voter column is the first headed "
        + _either(VOTER_COLUMNS)
        + " (in any case); without one, give --source. Running "
        "the same import again with the same token records nothing twice.",
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
        help="a client token (default: CARDINAL_CLIENT_TOKEN, which `. .cardinal/env` sets)",
    )
    parser.add_argument(
        "--source",
        help=f"for a CVR with no voter column ({_either(VOTER_COLUMNS)}): a name for the "
        "file's ballots that stays the same from one import to the next (a precinct, a "
        "batch); each ballot is named by it and its record's number",
    )
    parser.add_argument("--batch", type=positive_int, default=MAX_BATCH, help="ballots per request")
    parser.add_argument("--concurrency", type=positive_int, default=2, help="requests in flight")
    parser.add_argument(
        "--patience",
        type=float,
        default=PATIENCE,
        help=f"seconds to wait for an API that takes none of a batch (refuses the connection, "
        f"or answers 503) before stopping (default {PATIENCE:.0f})",
    )
    both = f"{Then.SKIP} the rank, or {Then.EXHAUST} the ballot"
    for mark, default, meaning in (
        ("overvote", Then.EXHAUST, f"more than one candidate at a rank does: {both}"),
        ("duplicate", Then.SKIP, f"a candidate ranked again does: {both}"),
    ):
        parser.add_argument(
            f"--{mark}",
            choices=[Then.SKIP.value, Then.EXHAUST.value],
            default=default.value,
            help=f"what {meaning} (default {default})",
        )
    parser.add_argument(
        "--undervote",
        choices=[Then.SKIP.value, Then.EXHAUST.value, Then.EXHAUST_CONSECUTIVE.value],
        default=Then.SKIP.value,
        help=f"what no candidate at a rank does: {both}, or {Then.EXHAUST_CONSECUTIVE}: a "
        "single blank rank is skipped, the second in a row exhausts the ballot (Maine's and "
        "Alaska's rule); blank ranks after the last candidate change nothing "
        f"(default {Then.SKIP})",
    )
    parser.add_argument(
        "--write-in",
        choices=[REFUSE, Then.SKIP.value, Then.EXHAUST.value],
        default=REFUSE,
        help=f"what a name that matches no option does: {REFUSE} the import (nothing is "
        "sent; each such name is listed with its count, to correct the file or choose), "
        f"{both}. A write-in mark (UWI, Write-in) is skipped under {REFUSE} "
        f"(default {REFUSE}). A name that matches more than one option stops the import "
        "whatever this says",
    )
    parser.set_defaults(
        command=run,
        interrupted="running the same import again with the same token resumes it (it "
        "records nothing twice)",
    )


def run(args: argparse.Namespace) -> int:
    # Where the token came from, for a refusal of it to say which one to correct.
    args.token_from = "--token"  # noqa: S105 - the option's name, not a token
    if not args.token:
        args.token, args.token_from = _first(CLIENT_TOKEN), CLIENT_TOKEN
    if not args.token:
        console.print(
            f"[red]a client token is needed: set {CLIENT_TOKEN} (in development: "
            "`. .cardinal/env`, which `cardinal serve` writes, sets it) or pass --token[/red]"
        )
        return 2
    if not 1 <= args.batch <= MAX_BATCH:
        console.print(f"[red]--batch must be from 1 to {MAX_BATCH}[/red]")
        return 2
    try:
        args.connect = _connector(args.url, args.token)
    except ValueError as error:
        console.print(f"[red]{_shown(str(error))}[/red]")
        return 2
    rules = MarkRules(
        overvote=Then(args.overvote),
        undervote=Then(args.undervote),
        duplicate=Then(args.duplicate),
        unknown=Then.SKIP if args.write_in == REFUSE else Then(args.write_in),
    )
    return run_until_interrupted(_import(args, rules))


def _first(variable: str) -> str | None:
    tokens = [t.strip() for t in os.environ.get(variable, "").split(",") if t.strip()]
    return tokens[0] if tokens else None


def _connector(url: str, token: str) -> Callable[[], LeanConnection]:
    """New connections to the API at ``url`` (http, or https with the system's CAs)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be an http:// or https:// address; got {url!r}")
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    host, port = parts.hostname, parts.port or (443 if tls else 80)
    return lambda: LeanConnection(host, port, token, tls=tls, prefix=parts.path)


async def _election(args: argparse.Namespace) -> Reply | None:
    """The election, as the API answers it; None (said why) if the API cannot be reached."""
    probe = args.connect()
    try:
        reply: Reply = await asyncio.wait_for(
            probe.request("GET", f"/api/elections/{args.election}"), args.patience
        )
    except (ConnectionClosed, OSError, TimeoutError) as error:
        said = str(error) or f"no answer within {args.patience:g} s"
        console.print(
            f"[red]cannot reach the API at {_shown(args.url)}: {_shown(said)}[/] (check "
            "--url, and that the API is running: `make run` in development, `docker compose "
            "up -d` with compose)"
        )
        return None
    finally:
        await probe.close()
    return reply


def _voter_token_note(token: str) -> str:
    if not is_voter_token(token):
        return ""
    return (
        f", a voter token: one voter casts their own ballot with it; the import needs the "
        f"client token, {CLIENT_TOKEN}, which `. .cardinal/env` sets"
    )


def _not_open(args: argparse.Namespace, document: dict[str, Any]) -> str | None:
    """Why the election takes no ballots from an import now, in one line; None: it does.
    (Each ballot would otherwise be refused alike, 409 or 403, and those refusals do not
    say how to open it.) An election that closes during the import still refuses each
    ballot sent after, with its line."""
    election, status = args.election, document.get("status")
    if document.get("eligibility") == "tokens":
        return (
            f"the election {election} takes ballots only from voters holding voter tokens; "
            "an import (the bulk path) casts into elections whose eligibility is client"
        )
    if status == "open":
        return None
    if status == "draft":
        return (
            f"the election {election} is a draft, not open yet: open it with POST "
            f"/api/elections/{election}/open and the admin token (CARDINAL_ADMIN_TOKEN), "
            "then import"
        )
    return f"the election {election} is {status}: it takes no more ballots"


async def _cannot_cast(args: argparse.Namespace) -> str | None:
    """Why the token may not send ballots on the bulk path, in one line; None: it may.
    The API tells an empty batch: it checks who is calling before the body (403 for
    another role, or a voter token), then refuses the empty list (422), recording nothing.
    Any other answer (busy, unreachable) is left to the import itself to meet."""
    probe = args.connect()
    path = f"/api/elections/{args.election}/ballots/batch"
    try:
        reply: Reply = await asyncio.wait_for(
            probe.request("POST", path, {"ballots": []}), args.patience
        )
    except (ConnectionClosed, OSError, TimeoutError):
        return None
    finally:
        await probe.close()
    if reply.status not in (401, 403):
        return None
    said = f"the token from {args.token_from} cannot cast ballots here: {_said(reply)}"
    if reply.status == 403 or is_voter_token(args.token):
        said += (
            f"; the import needs the client token, {CLIENT_TOKEN}, which `. .cardinal/env` "
            "sets (an admin, operator or voter token casts nothing through the bulk path)"
        )
    return said


async def _importable(args: argparse.Namespace) -> dict[str, Any] | None:
    """The election, as the API answers it, if the import may cast into it with its token;
    None (said why, each reason in a line) if not, or if the API cannot be reached."""
    election = await _election(args)
    if election is None:
        return None
    if election.status != 200:
        said = _said(election)
        if election.status in (401, 403):
            said += f" (the token from {args.token_from}{_voter_token_note(args.token)})"
        console.print(f"[red]the election cannot be read: {_shown(said)}[/]")
        return None
    document: dict[str, Any] = election.json()
    found = [_not_open(args, document)]
    if document.get("eligibility") != "tokens":  # (there, _not_open says why already)
        found.append(await _cannot_cast(args))
    refusals = [r for r in found if r]
    for refusal in refusals:
        console.print(f"[red]{_shown(refusal)}; nothing was sent[/red]")
    return None if refusals else document


async def _import(args: argparse.Namespace, rules: MarkRules) -> int:
    document = await _importable(args)
    if document is None:
        return 1
    reading = Reading()
    options = document["options"]
    try:
        ballots = list(
            read_ballots(
                args.file,
                options,
                rules=rules,
                reading=reading,
                source=args.source,
                token=args.token,
                # The election's rule for voter ids (absent: exact, as older ones compare).
                voter_ids=document.get("voter_ids", "exact"),
            )
        )
    except NeedsSource as error:
        console.print(f"[red]{_shown(str(args.file))}: {_shown(str(error))}[/red]")
        return 2
    except (OSError, ValueError) as error:
        console.print(
            f"[red]{_shown(str(args.file))}: {_shown(str(error))}; nothing was sent[/red]"
        )
        return 1
    if _names_refused(args, reading, options):
        return 2
    started = time.perf_counter()
    with Progress(
        TextColumn(f"importing {args.file.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("import", total=len(ballots), rate="")

        def progress(done: int) -> None:
            rate = done / (time.perf_counter() - started)
            bar.update(task, completed=done, rate=f"{rate:,.0f} ballots/s")

        def waiting(note: str) -> None:  # until the next ballot settles, in the rate's place
            bar.update(task, rate=f"[yellow]{_shown(note)}[/yellow]")

        outcomes = _Outcomes(progress, waiting)
        stopped: list[str] = []  # why the import stopped before the end

        async def worker(lane: list[FileBallot]) -> None:
            connection = args.connect()
            try:
                for batch in _batches(lane, args.batch, outcomes):
                    if stopped:
                        return
                    await _post(connection, args.election, batch, outcomes, args.patience)
            except Unreachable as error:
                stopped.append(str(error))
            finally:
                await connection.close()

        lanes = _lanes(ballots, max(1, args.concurrency))
        await asyncio.gather(*(worker(lane) for lane in lanes if lane))
    seconds = time.perf_counter() - started
    _summary(args.file, outcomes.tally, reading, len(ballots), seconds)
    _refusals(args.file, outcomes.refusals)
    unsent = len(ballots) - sum(outcomes.tally.values())
    if stopped or unsent or outcomes.passing:
        _unsent(unsent, outcomes, stopped[0] if stopped else None)
    return 1 if outcomes.refusals or stopped or unsent else 0


def _unsent(unsent: int, outcomes: _Outcomes, stopped: str | None) -> None:
    """How many ballots were not sent, and whether running the import again may send them:
    so it may after the API was away, busy or failing, not after a refusal it would meet
    again (a 4xx), until that is dealt with."""
    said = f"stopped: {_shown(stopped)}; " if stopped else ""
    said += (
        f"{unsent:,} ballot was not sent" if unsent == 1 else f"{unsent:,} ballots were not sent"
    )
    if outcomes.withheld:
        said += (
            f" ({outcomes.withheld:,} of them held back behind an earlier line of their "
            "voter that was refused: correct or remove that line first)"
        )
    if outcomes.passing:
        said += (
            f", and {outcomes.passing:,} were refused for a reason that says nothing "
            "about them (listed above)"
        )
    if stopped or outcomes.passing:  # an API away, busy or failing: it may pass
        said += ". Run the same import again with the same token to send them"
    else:  # each waits behind a refusal that the same import would meet again
        said += (
            ". Run as it is, the import would be refused the same way again: deal with "
            "the refusals listed above first, then run it again with the same token"
        )
    console.print(
        f"[red]{said} (ballots already recorded are replayed, never counted twice; with "
        "another token every ballot would be sent as a new one).[/red]"
    )


class _Outcomes:
    """What became of an import's ballots: recorded, refused (by line of the file), or not
    sent. Once a ballot is refused, for any reason, its voter's later ballots are not sent
    in this run (their voter is in ``failed``): recorded first, they would be revised by it
    when it is sent again (``fail``: a refusal that says nothing about it) or corrected."""

    def __init__(
        self, progress: Callable[[int], None], waiting: Callable[[str], None] | None = None
    ) -> None:
        self.tally = Counter[str]()
        self.refusals: list[tuple[int, str]] = []  # (line in the file, outcome)
        self.failed: set[str] = set()  # voters with a ballot refused: the rest wait
        self.passing = 0  # ballots refused for a passing reason
        self.withheld = 0  # ballots not sent, held back behind one of those
        self._progress = progress
        # Why the import is waiting, shown while it does: it would otherwise look frozen.
        self.waiting = waiting or (lambda _: None)

    def settle(self, ballot: FileBallot, outcome: str) -> None:
        self.tally[outcome] += 1
        if not outcome.startswith("recorded"):
            self.refusals.append((ballot.line, outcome))
            # Its voter's later lines wait for it, whatever the reason: corrected and sent
            # again, it would be recorded after them and revise them (review helper-50).
            self.failed.add(_voter(ballot))
        self._progress(sum(self.tally.values()) + self.withheld)

    def fail(self, ballot: FileBallot, outcome: str) -> None:
        """A refusal that says nothing about the ballot: it is to be sent again, first."""
        self.passing += 1
        self.failed.add(_voter(ballot))
        self.settle(ballot, outcome)

    def withhold(self, ballot: FileBallot) -> None:
        """A ballot not sent: an earlier one of its voter is to be sent again first."""
        self.withheld += 1
        self._progress(sum(self.tally.values()) + self.withheld)


def _voter(ballot: FileBallot) -> str:
    return str(ballot.body.get("voter_id"))


def _lanes(ballots: list[FileBallot], count: int) -> list[list[FileBallot]]:
    """The ballots dealt to ``count`` lanes, the file's voters in an order of chance: each
    voter's ballots in one lane, in file order. A lane sends its batches one after another,
    so all of a voter's ballots are recorded in the file's order; lanes run side by side.
    (Batches taken from one queue by every connection would let a voter's later ballot, in
    one batch, be recorded before an earlier one still in flight in another, and the
    earlier would then revise it.)

    The file's order is not kept, nor is a voter's lane computable from their id: the API
    places a request's ballots by chance, but not one request's among another's, so
    batches cut in file order (or lanes dealt by a hash of the voter) would let whoever
    reads the log and holds the file's order (a roll) narrow each voter to the entries of
    a few requests. Each voter gets a place drawn with ``SystemRandom``; a lane takes its
    voters' first ballots in that order, then the second ballots of those that have more,
    and so on, so that a request still holds one ballot of a voter and stays full."""
    voters = list(dict.fromkeys(_voter(ballot) for ballot in ballots))
    _SHUFFLE(voters)
    place = {voter: n for n, voter in enumerate(voters)}
    many = len(voters)
    del voters
    # Sorted by (the how-manieth ballot of its voter, its voter's place), as one int each:
    # some 130 bytes a ballot at the peak, beside the ~500 of the ballot itself (the file is
    # read in whole already: its count and names are checked before anything is sent).
    seen = Counter[str]()
    keys: list[int] = []
    for ballot in ballots:
        voter = _voter(ballot)
        keys.append(seen[voter] * many + place[voter])
        seen[voter] += 1
    del seen, place
    lanes: list[list[FileBallot]] = [[] for _ in range(count)]
    for index in sorted(range(len(ballots)), key=keys.__getitem__):
        lanes[keys[index] % many % count].append(ballots[index])
    return lanes


def _batches(lane: list[FileBallot], size: int, outcomes: _Outcomes) -> Iterator[list[FileBallot]]:
    """A lane's ballots in batches of up to ``size``, each taken when the one before it is
    settled, with one ballot of a voter in each: a voter's next ballot goes only once the
    one before it is recorded, and a ballot whose voter has one refused is withheld. (In
    one request, the API applies a voter's ballots in order but records a later one after
    an earlier one refused as invalid; corrected, that one would then revise it.)"""
    batch: list[FileBallot] = []
    each = Counter[str]()
    for ballot in lane:
        voter = _voter(ballot)
        if ballot.refused:  # refused as read (its cells, its key): nothing to send
            outcomes.settle(ballot, ballot.refused)  # (its voter's later lines wait)
            continue
        if len(batch) == size or each[voter] == 1:
            yield batch
            batch, each = [], Counter()
        if voter in outcomes.failed:
            outcomes.withhold(ballot)
            continue
        batch.append(ballot)
        each[voter] += 1
    if batch:
        yield batch


async def _post(
    connection: LeanConnection,
    election_id: str,
    batch: list[FileBallot],
    outcomes: _Outcomes,
    patience: float = PATIENCE,
) -> None:
    """Post one batch, and settle each ballot's outcome ('recorded: cast', or the refusal).
    A ballot refused with 503 (busy, the store away, held back behind one such) is sent
    again; the same keys again record nothing twice. Raises Unreachable when ``patience``
    seconds pass without a ballot settled."""
    path = f"/api/elections/{election_id}/ballots/batch"
    pending = batch
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        body = {"ballots": [{**b.body, "idempotency_key": b.key} for b in pending]}
        wait, reason, asked = delay, "", 0.0  # (asked: a Retry-After's seconds)
        unreachable = limited = False
        try:
            reply = await asyncio.wait_for(
                connection.request("POST", path, body), max(0.1, deadline - time.monotonic())
            )
        except TimeoutError:
            await connection.close()  # mid-request: its state is unknown; reconnect
            reason, unreachable = "the API took the request and did not answer", True
        except (ConnectionClosed, OSError) as error:
            reason = f"the API did not answer ({error or type(error).__name__})"
            unreachable = True
        else:
            if reply.status == 200:
                again, reason, hint = _settled(pending, reply.json()["results"], outcomes)
                if not again:
                    return
                if len(again) < len(pending):
                    deadline, delay = time.monotonic() + patience, 0.2  # it moves: patience
                # (the items' retry_after, where they carry one, as a Retry-After is taken)
                wait, asked = (wait, 0.0) if hint is None else (hint, hint)
                pending = again
            elif (retry := _whole_again(reply)) is not None:
                reason, wait = retry
                asked, limited = wait, reply.status == 429
            else:  # the whole request refused (a proxy's 502 or 413, a bad token): it says
                said = _said(reply)  # nothing about any one ballot. Sent again, a 5xx may
                passing = _passing(reply.status, _title(reply))  # pass; a 4xx will not
                for ballot in pending:
                    (outcomes.fail if passing else outcomes.settle)(ballot, said)
                return
        if time.monotonic() + wait > deadline:
            if asked > patience:
                advice = (
                    " (a smaller --batch waits less: the limit counts ballots; or a longer "
                    "--patience)"
                    if limited
                    else ""
                )
                raise Unreachable(
                    f"the API asks to wait {asked:g} s, longer than --patience ({patience:g} s): "
                    f"{reason}{advice}"
                )
            raise Unreachable(f"for {patience:g} s the API took none of a batch ({reason})")
        left = max(0.0, deadline - time.monotonic())
        outcomes.waiting(
            f"{'API unreachable' if unreachable else 'API busy'} ({reason}), waiting: "
            f"{left:.0f} s of --patience left"
        )
        await asyncio.sleep(wait)
        delay = min(delay * 2, 5.0)


def _whole_again(reply: Reply) -> tuple[str, float] | None:
    """A whole request to send again (busy, the store away, a rate limit), with why and
    after how long (Retry-After, else a second); None: refused. Unreachable when the API
    says the batch is more than the address may send in an hour: no wait makes it fit."""
    own = reply.status == 429 and _title(reply) == "Too many requests"
    if own and "retry-after" not in reply.headers:
        raise Unreachable(f"{_said(reply)} (use a smaller --batch)")
    if reply.status in (503, 429):
        return _said(reply), _retry_after(reply)
    return None


def _retry_after(reply: Reply) -> float:
    """Seconds to wait, as Retry-After says (in seconds; a date, as a proxy may send, or
    nothing: 1)."""
    try:
        return max(0.0, float(reply.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _settled(
    pending: list[FileBallot], results: list[dict[str, Any]], outcomes: _Outcomes
) -> tuple[list[FileBallot], str, float | None]:
    """Settle each ballot a bulk answer decided; those refused with 503 are to be sent
    again (with the last such reason, and the longest ``retry_after`` they carry, if any:
    an older API's items carry none), unless an earlier ballot of their voter was refused
    for another passing reason (a fault): they then wait for it, not sent."""
    again: list[FileBallot] = []
    reason = ""
    hint: float | None = None
    for ballot, result in zip(pending, results, strict=True):
        status = result.get("status")
        if "ballot_id" in result or not isinstance(status, int):
            outcomes.settle(ballot, _outcome(result))
        elif status == 503 and _voter(ballot) in outcomes.failed:
            outcomes.withhold(ballot)  # held back behind its voter's failed ballot
        elif status == 503:
            again.append(ballot)
            reason = f"503: {result.get('detail', '')}"
            if (wait := _hint(result.get("retry_after"))) is not None:
                hint = wait if hint is None else max(hint, wait)
        elif _passing(status, str(result.get("title", ""))):
            outcomes.fail(ballot, _outcome(result))
        else:
            outcomes.settle(ballot, _outcome(result))
    return again, reason, hint


def _hint(value: object) -> float | None:
    """A bulk item's ``retry_after``, in seconds; None where it says nothing usable."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        return None
    return float(value)


def _passing(status: int, title: str) -> bool:
    """A refusal that says nothing about the ballot (the API, or a proxy before it, failing
    or busy; another change to the voter's ballot racing it): sent again, it may be
    recorded. (Invalid, already voted, the election closed, not eligible: it will not.)"""
    return status >= 500 or status == 429 or (status == 409 and title == ConcurrentRevision.title)


def _title(reply: Reply) -> str:
    try:
        document = reply.json()
    except ValueError:
        return ""
    return str(document.get("title", "")) if isinstance(document, dict) else ""


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


def _unknown_names(path: Path, reading: Reading, options: list[dict[str, str]]) -> None:
    """Each name in the file that matches no option, with its count: a misspelling, or a
    write-in, for the operator to correct or to choose what it does."""
    names = reading.unknown.most_common()
    console.print(
        f"[red]{_shown(path.name)}: {len(names):,} "
        f"{'names match' if len(names) > 1 else 'name matches'} "
        "no option of the election; nothing was sent:[/red]"
    )
    for name, count in names[:SHOWN]:
        console.print(f"  {escape(repr(name))}: {count:,} mark{'s' if count > 1 else ''}")
    if len(names) > SHOWN:
        console.print(f"  ... and {len(names) - SHOWN:,} more")
    listed = ", ".join(f"{o['label']} ({o['id']})" for o in options)
    console.print(f"The election's options: {_shown(listed)}")
    console.print(
        "Correct the names in the file, or say what they do: --write-in skip (the rank is "
        "passed over) or --write-in exhaust (the ranks from there on are ignored)."
    )


def _names_refused(
    args: argparse.Namespace, reading: Reading, options: list[dict[str, str]]
) -> bool:
    """Whether the file's names stop the import before anything is sent (each such name
    listed): one matching more than one option always, one matching none under --write-in
    refuse."""
    unknown = args.write_in == REFUSE and bool(reading.unknown)
    if reading.ambiguous:
        _ambiguous_names(args.file, reading, options)
    if unknown:
        _unknown_names(args.file, reading, options)
    return unknown or bool(reading.ambiguous)


def _ambiguous_names(path: Path, reading: Reading, options: list[dict[str, str]]) -> None:
    """Each name in the file that matches more than one option, with its count and the
    options it matches: whatever --write-in says, no rule can tell which one it means."""
    names = reading.ambiguous.most_common()
    labels = {o["id"]: o["label"] for o in options}
    console.print(
        f"[red]{_shown(path.name)}: {len(names):,} "
        f"{'names match' if len(names) > 1 else 'name matches'} "
        "more than one option of the election; nothing was sent:[/red]"
    )
    for name, count in names[:SHOWN]:
        matched = ", ".join(f"{labels.get(i, i)} ({i})" for i in reading.matching[name])
        console.print(
            f"  {escape(repr(name))}: {count:,} mark{'s' if count > 1 else ''}, "
            f"matching {_shown(matched)}"
        )
    if len(names) > SHOWN:
        console.print(f"  ... and {len(names) - SHOWN:,} more")
    console.print(
        "Write each such mark as the option's id, exactly (an id written exactly is that "
        "option), and import the file again."
    )


def _refusals(path: Path, refusals: list[tuple[int, str]]) -> None:
    """Where in the file each refused ballot is (the first SHOWN of them), to fix and send
    again: a ballot already recorded is not recorded twice."""
    if not refusals:
        return
    console.print(f"[red]refused, by line of {_shown(path.name)}:[/red]")
    for line, outcome in sorted(refusals)[:SHOWN]:
        console.print(f"  line {line}: {_shown(outcome)}")  # it quotes the file
    if len(refusals) > SHOWN:
        console.print(f"  ... and {len(refusals) - SHOWN:,} more")


# A ballot's place in a bulk request, as the API names the fields of its refusal.
_PLACE = re.compile(r"\bballots\[\d+\](\.)?")


def _outcome(result: dict[str, Any]) -> str:
    """A ballot's outcome, as the summary groups them: its place in the request (the
    API's ``ballots[3].extra``) left out, as its line says where it is."""
    if "ballot_id" in result:
        return f"recorded: {'replayed' if result.get('replayed') else result['status']}"
    detail = _PLACE.sub(lambda m: "" if m.group(1) else "the ballot", str(result.get("detail", "")))
    return f"{result.get('status')}: {detail}"


def _shown(text: str) -> str:
    """``text`` (a file's cell, an API's detail quoting one) as it may be printed: Rich
    markup escaped, and each control character (C0, DEL, C1: an escape sequence would
    recolour, hide or rewrite the terminal) written as its escape, ``\\x1b``."""
    return escape("".join(c if unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text))


def _summary(path: Path, tally: Counter[str], reading: Reading, total: int, seconds: float) -> None:
    table = Table(title=f"Import of {_shown(path.name)}")
    table.add_column("outcome")
    table.add_column("ballots", justify="right")
    # Marks are counted apart: one ballot may hold several (two overvotes, a write-in).
    table.add_column("marks", justify="right")
    for outcome, count in tally.most_common():
        colour = "green" if outcome.startswith("recorded") else "red"
        table.add_row(f"[{colour}]{_shown(outcome)}[/]", f"{count:,}", "")
    if reading.blank:
        table.add_row("blank (nothing left to rank), not sent", f"{reading.blank:,}", "")
    if reading.marks:
        table.add_section()
    for mark, count in reading.marks.most_common(10):
        table.add_row(f"[dim]marks: {_shown(mark)}[/]", "", f"{count:,}")
    print_table(console, table)
    read = f"{total:,} ballot{'' if total == 1 else 's'} read and answered"
    if seconds < RATE_AFTER:  # a rate of a few ballots in an instant says nothing
        console.print(f"{read} in under a second")
        return
    rate = total / seconds
    console.print(f"{read} in {seconds:.1f} s ({rate:,.0f} ballots/s)")
