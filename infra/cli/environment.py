"""What every command starts from: the console, logging, and settings from the environment."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeAlias, TypeVar

from rich.console import Console, RenderableType

from infra.runtime.settings import Settings, SettingsError

# soft_wrap: a line wider than the terminal (or than 80 columns, on a pipe) stays one line,
# so a URL or a token in it can be copied whole.
console = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")
UNBOUNDED = 10_000  # columns: a table's width measured as if the screen had no edge


def print_table(console: Console, table: RenderableType) -> None:
    """Print a table whole: on a pipe (80 columns) or a narrow terminal, rich shrinks even
    no_wrap columns with an ellipsis ("16,7…"), losing the numbers; here the screen is
    taken as wide as the table's narrowest complete rendering needs (a terminal may wrap
    its lines, but every figure is there)."""
    needed = console.measure(table, options=console.options.update(max_width=UNBOUNDED))
    if needed.minimum <= console.width:
        console.print(table)
        return
    wide = Console(
        file=console.file,
        width=needed.minimum,
        highlight=False,
        force_terminal=console.is_terminal,
        no_color=console.no_color,
    )
    wide.print(table)


INTERRUPTED = 128 + signal.SIGTERM  # 143: how a shell reports a process SIGTERM ended


class Interrupted(SystemExit):
    """SIGTERM stopped a one-shot command before it finished (`main` says so, exit 143)."""

    def __init__(self) -> None:
        super().__init__(INTERRUPTED)


def run_until_interrupted(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run for a one-shot command, where SIGTERM cancels the command's task: it
    unwinds as a cancellation, awaiting its cleanup (a rebuild records why it stopped, an
    export removes its partial file), rather than as an exception raised at whatever line
    ran, in whichever task; then Interrupted."""
    stopped: list[int] = []

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        previous = signal.getsignal(signal.SIGTERM)

        def stop() -> None:
            stopped.append(signal.SIGTERM)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            return await main
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous)  # removing it set the default

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if stopped:
            raise Interrupted from None
        raise


# Libraries whose DEBUG records carry what they send or receive: aiormq prints each frame it
# sends, a ballot's body included (a refused ingest message forwarded to `.refused` holds
# its voter id or token and its vote), and psycopg's name statements and their parameters.
# A log is read by more people than the broker or the database (log shipping, support), so
# these stay at INFO whatever LOG_LEVEL says; our own modules' DEBUG holds no ballot.
QUIET_AT_DEBUG = ("aiormq", "aio_pika", "pamqp", "psycopg")


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in QUIET_AT_DEBUG:
        library = logging.getLogger(name)
        if library.getEffectiveLevel() < logging.INFO:
            library.setLevel(logging.INFO)


def command_settings(*, migrate: bool = True) -> Settings:
    """Settings for a service command (relay, project, ingest) that needs the database;
    migrations applied first unless ``migrate`` is false (a child of `serve`, which did),
    and the secret it uses checked against the store's (check_store_secret)."""
    from infra.store.migrations import migrate as apply_migrations

    settings = _with_database()
    assert settings.database_url is not None
    if migrate:
        apply_migrations(settings.database_url)
    check_store_secret(settings)
    return settings


def check_store_secret(settings: Settings, secret: str | None = None) -> None:
    """Refuse to start with a CARDINAL_SECRET (``secret``, or the one these settings use)
    other than the one the store records; the first process records it
    (infra/runtime/fingerprint.py)."""
    from infra.runtime.bootstrap import secret_in_use
    from infra.runtime.fingerprint import check_secret

    secret = secret or secret_in_use(settings)
    if secret is not None and settings.database_url is not None:
        check_secret(settings.database_url, secret)


def operator_settings() -> Settings:
    """Settings for an operator command that reads the database (projections, rebuild): it
    never changes the schema, and refuses a database whose migrations are not this
    release's, naming them (`cardinal migrate` applies them)."""
    from infra.store.migrations import require_current

    settings = _with_database()
    assert settings.database_url is not None
    require_current(settings.database_url)
    return settings


def _with_database() -> Settings:
    settings = Settings.from_env()
    configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError(
            "DATABASE_URL is not set (in development: `. .cardinal/env`, which `cardinal "
            "serve` writes, reaches its database)"
        )
    return settings


# What each command family adds its commands to.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive_int(text: str) -> int:
    """An option that counts something: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value
