"""The `cardinal` command: the parser, and one module per family of commands.

serve.py     serve, api, relay, project, migrate   (running the service)
ingest.py    ingest                                 (ballots from RabbitMQ)
operate.py   projections, rebuild                   (operating read models)
audit.py     audit export, audit verify             (auditors)
smoke.py     publish-test-votes                     (the deployment smoke test)
bench.py     bench http|app|machine|ingest|projection|rebuild|verify|tabulation|viewers
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from aiormq.exceptions import ChannelPreconditionFailed
from rich.markup import escape

from infra.cli import audit, bench, importer, ingest, operate, serve, smoke
from infra.cli.environment import INTERRUPTED, Interrupted, console
from infra.options import Parser
from infra.runtime.lifecycle import PortInUse
from infra.runtime.settings import Settings, SettingsError
from infra.store.migrations import MigrationError, MigrationsPending
from infra.store.names import name_process_connections

# The long-running commands: SIGTERM is how they are stopped (an orchestrator, `serve`
# stopping its children), and they drain and exit 0. Any other command stopped by SIGTERM
# did not finish: it says so and exits 143 (INTERRUPTED), so that Kubernetes or systemd
# record the failure (environment.run_until_interrupted, for those that run asyncio).
SERVICES = frozenset({"serve", "api", "relay", "project", "ingest"})


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; turning it into
    # SystemExit lets every `with` block unwind (the embedded PostgreSQL stops cleanly).
    service = args.command_name in SERVICES
    signal.signal(signal.SIGTERM, _exit_on_sigterm if service else _interrupt_on_sigterm)
    if service:  # a closed terminal (SIGHUP) stops a service as SIGTERM does, cleanly
        signal.signal(signal.SIGHUP, _hang_up)
    name_process_connections(args.command_name)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except Interrupted:
        said = getattr(args, "interrupted", "it stopped before it finished")
        console.print(f"[red]cardinal {args.command_name} was interrupted (SIGTERM):[/red] {said}")
        return INTERRUPTED
    except Exception as error:
        said = _stopped_by(error)
        if said is None:
            raise  # a bug: its traceback is what a report needs
        console.print(said)
        return 2


def _stopped_by(error: Exception) -> str | None:
    """What stopped a command, as its user can act on it; None for a bug."""
    for kind, say in _STOPS:
        if isinstance(error, kind) and (said := say(error)) is not None:
            return said
    return None


def _unreachable_database(error: Exception) -> str | None:
    # Reaching it, not what a statement met (a deadlock, a timeout, a full disk: bugs or
    # incidents, with their traceback): no SQLSTATE (the client's own), or classes 08
    # (connection), 28 (authorisation), 3D (no such database).
    assert isinstance(error, psycopg.OperationalError)
    if (error.sqlstate or "08")[:2] not in CONNECTING:
        return None
    embedded = _embedded_data_dir()
    if embedded is not None:  # (`. .cardinal/env` after `make run` stopped)
        return (
            f"[red]cannot reach the database:[/red] {_first_line(error)} (DATABASE_URL is "
            f"the embedded development database in {escape(str(embedded))}, which runs only "
            "while `make run` (`cardinal serve`) does: start `make run` first, in another "
            "terminal)"
        )
    return (
        f"[red]cannot reach the database:[/red] {_first_line(error)} "
        "(check DATABASE_URL, and that PostgreSQL is running)"
    )


def _embedded_data_dir() -> Path | None:
    """The data folder whose embedded PostgreSQL DATABASE_URL names, if it does."""
    try:
        settings = Settings.from_env(service=False)
    except SettingsError:
        return None
    if settings.database_url is None or not serve.is_embedded(settings):
        return None
    return settings.data_dir


def _missing_table(error: Exception) -> str:
    said = _first_line(error)
    if "read_models." in said or "proj_" in said:  # (migrations make every other table)
        return (
            f"[red]the read models are not built yet ({said}):[/red] start the projections "
            "(`cardinal serve`, or `cardinal project`) and run this again once they have "
            "caught up"
        )
    return (
        f"[red]the database lacks a table Cardinal Vote needs ({said}):[/red] "
        "if it was never migrated, run `cardinal migrate` against it first"
    )


def _unusable_file(error: Exception) -> str | None:
    assert isinstance(error, OSError)
    if error.filename is None:
        return None
    return f"[red]cannot use {escape(str(error.filename))}:[/red] {escape(str(error.strerror))}"


_STOPS: tuple[tuple[type[Exception], Callable[[Exception], str | None]], ...] = (
    (SettingsError, lambda e: f"[red]configuration error:[/red] {escape(str(e))}"),
    (MigrationsPending, lambda e: f"[red]{escape(str(e))}[/red]"),
    (PortInUse, lambda e: f"[red]cannot start:[/red] {escape(str(e))}"),
    (psycopg.errors.UndefinedTable, _missing_table),
    (psycopg.OperationalError, _unreachable_database),
    (OSError, _unusable_file),
    (  # an API or broker that is not there
        ConnectionError,
        lambda e: (
            f"[red]cannot connect:[/red] {escape(str(e))} (check the URL given, and that the "
            "service is running)"
        ),
    ),
    (MigrationError, lambda e: f"[red]cannot use this database:[/red] {escape(str(e))}"),
    (
        ChannelPreconditionFailed,
        lambda e: (
            f"[red]RabbitMQ refused a declaration:[/red] {_first_line(e)}; a queue or exchange "
            "of that name exists with other arguments (a classic queue where Cardinal Vote "
            "declares a quorum queue?): delete it, or choose another INGEST_QUEUE or "
            "CARDINAL_NAMESPACE"
        ),
    ),
)


CONNECTING = ("08", "28", "3D")  # SQLSTATE classes of a failure to reach the database


def _first_line(error: Exception) -> str:
    """What PostgreSQL said, without the hints and context lines psycopg adds."""
    return escape((str(error).strip().splitlines() or [type(error).__name__])[0])


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _hang_up(signum: int, frame: object) -> None:
    """SIGHUP (the terminal of `make run` closed): whatever SIGTERM does at this moment
    (uvicorn's drain, the supervisor's stop, SystemExit while starting), so that the
    embedded PostgreSQL is stopped, not left running (the default action ends the process
    at once, and PostgreSQL reads SIGHUP as "reload")."""
    signal.raise_signal(signal.SIGTERM)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted


def parser() -> argparse.ArgumentParser:
    """Every command and its options (`cardinal COMMAND --help`)."""
    root = Parser(
        prog="cardinal",
        description="Cardinal Vote: an event-sourced voting backend. "
        "Configuration comes from the environment (see .env.example, and the README's "
        "Configuration table).",
    )
    sub = root.add_subparsers(
        title="commands",
        required=True,
        metavar="COMMAND",
        dest="command_name",
        parser_class=Parser,
    )
    for family in (serve, ingest, operate, audit, importer, smoke, bench):
        family.add_commands(sub)
    return root


if __name__ == "__main__":
    sys.exit(main())
