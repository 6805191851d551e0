"""Running the service: serve (everything), api, relay, project, migrate."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from infra.cli.environment import (
    Commands,
    check_store_secret,
    command_settings,
    configure_logging,
    console,
)
from infra.runtime.lifecycle import check_port_free, die_with_parent, hold_data_dir, name_holder
from infra.runtime.settings import Settings, SettingsError
from projections import PROJECTIONS

ENV_FILE = "env"  # in the data folder: a development setup's settings, to source

if TYPE_CHECKING:
    from infra.runtime.bootstrap import Workers


def add_commands(sub: Commands) -> None:
    serve = sub.add_parser(
        "serve",
        help="run everything on this machine (embedded PostgreSQL without DATABASE_URL)",
        description="Run WEB_CONCURRENCY API processes sharing the port, and one process "
        "with the relay, the sealer and every projection, and with AMQP_URL one `cardinal "
        "ingest` (WEB_CONCURRENCY=1: all in one). "
        "Without DATABASE_URL, start an embedded PostgreSQL in CARDINAL_DATA_DIR "
        "(./.cardinal). Applies migrations first.",
    )
    serve.set_defaults(command=run_serve)

    api = sub.add_parser(
        "api",
        help="run the HTTP API only (needs DATABASE_URL)",
        description="Run the HTTP API against DATABASE_URL. Applies migrations first.",
    )
    api.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    api.set_defaults(command=run_api)

    relay = sub.add_parser(
        "relay",
        help="publish the log to RabbitMQ (needs DATABASE_URL and AMQP_URL)",
        description="Tail the event log and publish it, page by contiguous page, to the "
        "events exchange, and seal it: chain each entry and sign checkpoints with "
        "CARDINAL_AUDIT_KEY (unset: the log is not sealed, with a warning). One relay is "
        "active at a time; others wait as hot standby.",
    )
    relay.set_defaults(command=run_relay)

    project = sub.add_parser(
        "project",
        help="run projection workers (all, or the named ones)",
        description="Keep read models up to date: from RabbitMQ when AMQP_URL is set, "
        "straight from the event store otherwise. Known projections: " + ", ".join(PROJECTIONS),
    )
    project.add_argument("names", nargs="*", metavar="NAME", help="projections to run")
    project.add_argument(
        "--relay",
        action="store_true",
        help="also run the relay (and its sealer) in this process",
    )
    project.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    project.set_defaults(command=run_project)

    migrate = sub.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Apply the numbered migrations in migrations/ that the database lacks, "
        "in order, under an advisory lock. Running it again is a no-op.",
    )
    migrate.set_defaults(command=run_migrate)

    accept = sub.add_parser(
        "accept-secret",
        help="record CARDINAL_SECRET as the database's, for a deliberate change of secret",
        description="Every process refuses to start with a CARDINAL_SECRET other than the "
        "one the database records (the first process records it). To change the secret on "
        "purpose, between elections (voter tokens issued under the old one stop working, "
        "and a client voter of an election still open could vote again): stop every "
        "process, run this with the new CARDINAL_SECRET, then start every process with it.",
    )
    accept.set_defaults(command=run_accept_secret)


def run_migrate(_: argparse.Namespace) -> int:
    from infra.store.migrations import migrate

    settings = Settings.from_env()
    configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set; nothing to migrate")
    applied = migrate(settings.database_url)
    if applied:
        for name in applied:
            console.print(f"applied {name}")
    else:
        console.print("the database is up to date; nothing to apply")
    return 0


def run_accept_secret(_: argparse.Namespace) -> int:
    from infra.runtime.credentials import complete
    from infra.runtime.fingerprint import accept_secret
    from infra.store.migrations import require_current

    settings = Settings.from_env()
    configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set: whose secret to record?")
    secret = complete(settings).settings.secret  # (in development, the data folder's)
    assert secret is not None  # (production requires it; development generates it)
    require_current(settings.database_url)
    held = accept_secret(settings.database_url, secret)
    if held == "another":
        console.print(
            "recorded this CARDINAL_SECRET as the database's, in place of another: start "
            "every process with it (voter tokens issued under the old one no longer work)"
        )
    else:
        console.print(
            "recorded this CARDINAL_SECRET as the database's"
            + (" (it was already)" if held == "this" else "")
        )
    return 0


def run_relay(_: argparse.Namespace) -> int:
    from infra.runtime.bootstrap import running_workers

    _check_metrics_port(Settings.from_env())
    settings = command_settings()
    if settings.amqp_url is None:
        raise SettingsError("AMQP_URL is not set; the relay publishes to RabbitMQ")
    return _run_workers(
        running_workers(settings, relay=True, projections=(), metrics_port=settings.metrics_port)
    )


def run_project(args: argparse.Namespace) -> int:
    from infra.runtime.bootstrap import running_workers

    names = list(args.names) or list(PROJECTIONS)
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        raise SettingsError(
            f"unknown projection {', '.join(unknown)}; the projections are "
            + ", ".join(PROJECTIONS)
        )
    _check_metrics_port(Settings.from_env())
    settings = command_settings(migrate=not args.child)
    if args.child:
        die_with_parent()
    return _run_workers(
        running_workers(
            settings, relay=args.relay, projections=names, metrics_port=settings.metrics_port
        )
    )


def _check_metrics_port(configured: Settings) -> None:
    """A taken METRICS_PORT (say, `cardinal serve`'s beside this process): refused before
    the migrations, the first thing to connect to the database, as `ingest` does."""
    if configured.metrics_port:
        check_port_free(
            configured.metrics_listen_host, configured.metrics_port, "METRICS_PORT (0: none)"
        )


def _run_workers(workers: AbstractAsyncContextManager[Workers]) -> int:
    """Run the workers until SIGTERM (SystemExit) or Ctrl-C, then stop them, bounded: their
    tasks are waited on with asyncio.wait (cancelled, it returns at once, whatever they do,
    and running_workers' bounded stop runs), and the loop's end is run_bounded's, not
    uvloop.run's (which waits for ever for a task that runs on after its cancel)."""
    import uvloop

    from infra.runtime.bootstrap import STEP, WORKERS_STOP
    from infra.runtime.loop import run_bounded

    async def run() -> None:
        async with workers as running:
            if running.tasks:
                await asyncio.wait(running.tasks)

    run_bounded(run(), stop_within=WORKERS_STOP + STEP + 1, loop_factory=uvloop.new_event_loop)
    return 0


def run_serve(_: argparse.Namespace) -> int:
    settings = Settings.from_env()
    configure_logging(settings)
    with ExitStack() as stack:
        held = None
        if not settings.is_production:  # the data folder's env file is this serve's
            held = _hold_data_dir(settings, stack)
        return _serve(settings, stack, held)


def _hold_data_dir(settings: Settings, stack: ExitStack) -> int | None:
    """Refuse to start beside a live serve of the same data folder: its env file (sourced
    by every other command) and its embedded PostgreSQL would silently become this one's,
    and point at nothing once this one stops. The held serve.pid's descriptor, or None."""
    try:
        held = hold_data_dir(settings.data_dir)
    except OSError as error:  # a read-only folder: serve all the same (no env file either)
        console.print(f"  [yellow]could not lock {settings.data_dir}: {error}[/yellow]")
        return None
    stack.callback(os.close, held)
    return held


def _serve(settings: Settings, stack: ExitStack, held: int | None = None) -> int:
    from infra.runtime.supervisor import Supervisor

    check_port_free(settings.host, settings.port)  # before anything is started
    if settings.api_processes > 1:  # the relay's process serves the workers' metrics there
        if settings.metrics_port == settings.port:
            raise SettingsError(
                f"METRICS_PORT and PORT are both {settings.port}: the API processes and the "
                "workers' metrics cannot share a port; choose another METRICS_PORT"
            )
        check_port_free(settings.metrics_listen_host, settings.metrics_port, "METRICS_PORT")
    if held is not None:  # its ports are free: serve.pid may name this serve now
        name_holder(held, settings.port, settings.metrics_port)
    need = serve_connections(settings)
    if settings.database_url is None or is_embedded(settings):
        from infra.store.connections import embedded_max_connections
        from infra.store.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir, embedded_max_connections(need))
        left = embedded.running_pid()
        if left is not None:  # an earlier serve's, killed before it could stop it
            console.print(
                f"reusing the embedded PostgreSQL left running (pid {left}) in {embedded.pgdata}"
            )
        else:
            console.print(f"starting embedded PostgreSQL in {settings.data_dir / 'pgdata'} ...")
        url = stack.enter_context(embedded)
        settings = settings.with_overrides(database_url=url)
    settings = _prepare(settings)
    check_connections(settings, need)
    if not settings.is_production:
        try:
            written = write_environment(settings)
        except OSError as error:  # a read-only folder: serve all the same
            console.print(f"  [yellow]could not write {ENV_FILE}: {error}[/yellow]")
        else:
            console.print(f"  other commands, against this setup: . {written}")
    if settings.api_processes == 1:
        return _serve_api(settings, everything=True)
    console.print(
        f"  processes: {settings.api_processes} API (sharing port {settings.port}) "
        "+ 1 relay and projections"
        + (" + 1 ingest (from the RabbitMQ queue)" if settings.amqp_url else "")
    )
    return Supervisor(settings).run()


def serve_connections(settings: Settings) -> int:
    """The most PostgreSQL connections this serve's processes may hold at once."""
    from infra.store.connections import serve_needs

    return serve_needs(
        settings.api_processes, broker=settings.amqp_url is not None, projections=len(PROJECTIONS)
    )


def check_connections(settings: Settings, need: int) -> None:
    """Warn (and start all the same) when the server may not have room for ``need``."""
    from infra.store.connections import check_room

    assert settings.database_url is not None
    processes = f"{settings.api_processes} API process" + ("es" * (settings.api_processes > 1))
    broker = "with" if settings.amqp_url is not None else "without"
    check_room(settings.database_url, need, f"cardinal serve ({processes}, {broker} AMQP_URL)")


def run_api(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set (use `cardinal serve` for an embedded one)")
    if args.child:
        die_with_parent()
        check_store_secret(settings)  # (serve did, with the same; cheap, and said here too)
    else:
        settings = _prepare(settings)
    return _serve_api(settings, everything=False, share_port=args.child)


def _prepare(settings: Settings) -> Settings:
    """Complete development credentials, apply migrations, say where things are."""
    from infra.runtime.credentials import complete
    from infra.store.migrations import migrate

    assert settings.database_url is not None
    credentials = complete(settings)
    for name in migrate(settings.database_url):
        console.print(f"applied migration {name}")
    check_store_secret(credentials.settings)
    _banner(credentials.settings, credentials.generated_roles, credentials.read_back)
    return credentials.settings


def _serve_api(settings: Settings, *, everything: bool, share_port: bool = False) -> int:
    """Serve the API; with ``everything``, also the relay and every projection.

    With ``share_port``, bind with SO_REUSEPORT so that sibling processes share the port.
    """
    import socket

    from api.app import create_app
    from api.protocol import server_config
    from api.server import DrainingServer

    sockets = None
    if share_port:
        shared = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind((settings.host, settings.port))
        sockets = [shared]
    config = server_config(
        settings,
        create_app(
            settings,
            relay=everything,
            projections=list(PROJECTIONS) if everything else (),
            ingest=everything,
        ),
    )
    DrainingServer(config).run(sockets=sockets)
    return 0


def _banner(
    settings: Settings, generated_roles: Sequence[str], read_back: Sequence[str] = ()
) -> None:
    console.print(f"[bold]Cardinal Vote[/bold] ({settings.env})")
    console.print(f"  database: {redact(settings.database_url or '')}")
    kept = settings.data_dir / "credentials.json"
    for role in generated_roles:
        origin = f"from {kept}" if role in read_back else f"generated, kept in {kept}"
        console.print(f"  {role} token: {settings.tokens_for(role)[0]}  ({origin})")
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host}:{settings.port}"
    console.print(f"  dashboards: {base}/")
    console.print(f"  API: {base}/api/health  (reference: {base}/docs)")


def is_embedded(settings: Settings) -> bool:
    """Whether DATABASE_URL is the embedded server's own (exported by .cardinal/env): it is
    started again like one that is not set, not assumed to be running."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    assert settings.database_url is not None
    try:
        host = conninfo_to_dict(settings.database_url).get("host")
    except psycopg.ProgrammingError:
        return False
    pgdata = (settings.data_dir / "pgdata").resolve()
    return host is not None and Path(str(host)).resolve() == pgdata


def write_environment(settings: Settings) -> Path:
    """The settings this development setup runs with, as shell exports in the data folder
    (beside the credentials it keeps, and as private): ``. .cardinal/env`` lets every other
    command reach the embedded database, tokens and keys, and puts the directory of this
    interpreter (the venv's bin, with ``cardinal`` in it) first on PATH."""
    path = settings.data_dir / ENV_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    scripts = Path(sys.executable).parent
    lines = [
        f"export {name}={shlex.quote(value)}" for name, value in settings.environment().items()
    ]
    lines.append(f'export PATH={shlex.quote(str(scripts))}:"$PATH"  # `cardinal` itself')
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(
        "\n".join(["# written by `cardinal serve` (development): . this file", *lines]) + "\n"
    )
    return path


def redact(url: str) -> str:
    """A database URL without its password: in its user part, as ``?password=``, or as a
    key=value string's ``password=`` (PGPASSWORD is merged into the URL as one of these)."""
    if "://" not in url:
        return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    url = re.sub(r"([?&]password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{location}"
