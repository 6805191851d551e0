"""The `cardinal` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, ExitStack
from typing import TYPE_CHECKING

from rich.console import Console

from infra.settings import Settings, SettingsError
from projections import PROJECTIONS

if TYPE_CHECKING:
    from infra.bootstrap import Workers

console = Console(stderr=True, highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    # uvicorn re-raises the SIGTERM it caught once it has shut down; turning it into
    # SystemExit lets every `with` block unwind (the embedded PostgreSQL stops cleanly).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except SettingsError as error:
        console.print(f"[red]configuration error:[/red] {error}")
        return 2
    except KeyboardInterrupt:
        return 130


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cardinal",
        description="Cardinal Vote: an event-sourced voting backend. "
        "Configuration comes from the environment (see .env.example).",
    )
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run everything in one process (embedded PostgreSQL without DATABASE_URL)",
        description="Run the API in one process. Without DATABASE_URL, start an embedded "
        "PostgreSQL in CARDINAL_DATA_DIR (./.cardinal). Applies migrations first.",
    )
    serve.set_defaults(command=_serve)

    api = sub.add_parser(
        "api",
        help="run the HTTP API only (needs DATABASE_URL)",
        description="Run the HTTP API against DATABASE_URL. Applies migrations first.",
    )
    api.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    api.set_defaults(command=_api)

    relay = sub.add_parser(
        "relay",
        help="publish the log to RabbitMQ (needs DATABASE_URL and AMQP_URL)",
        description="Tail the event log and publish it, page by contiguous page, to the "
        "events exchange. One relay is active at a time; others wait as hot standby.",
    )
    relay.set_defaults(command=_relay)

    project = sub.add_parser(
        "project",
        help="run projection workers (all, or the named ones)",
        description="Keep read models up to date: from RabbitMQ when AMQP_URL is set, "
        "straight from the event store otherwise. Known projections: " + ", ".join(PROJECTIONS),
    )
    project.add_argument("names", nargs="*", metavar="NAME", help="projections to run")
    project.add_argument("--relay", action="store_true", help="also run the relay in this process")
    project.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    project.set_defaults(command=_project)

    status = sub.add_parser(
        "projections",
        help="show every projection's version, state, position, lag and rebuild progress",
        description="Where every projection stands (what GET /api/admin/projections "
        "answers), as a table; --json for the raw document.",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(command=_projections)

    rebuild = sub.add_parser(
        "rebuild",
        help="rebuild a projection blue/green, with a progress bar",
        description="Build a new version of a projection's tables from the event store "
        "while the current version keeps serving, then switch reads to it atomically and "
        "drop the old one. A failed or interrupted rebuild leaves the old version serving.",
    )
    rebuild.add_argument("name", choices=sorted(PROJECTIONS), metavar="NAME", help="projection")
    rebuild.add_argument(
        "--page-size",
        type=int,
        default=20_000,
        help="log entries read per page (progress is reported per page)",
    )
    rebuild.set_defaults(command=_rebuild)

    audit = sub.add_parser(
        "audit",
        help="export the log for auditors, or verify the chain and every served result",
        description="`cardinal audit export --output FILE` and "
        "`cardinal audit verify [--file FILE] [--election ID]`.",
    )
    from infra.audit import commands as audit_commands

    audit_commands.add_arguments(audit)

    smoke = sub.add_parser(
        "publish-test-votes",
        help="smoke test: cast N test ballots in a test election and check they are counted",
        description="Against a running API (tokens from CARDINAL_ADMIN_TOKEN and "
        "CARDINAL_CLIENT_TOKEN): create and open a test election, cast N ballots, close it, "
        "and check the results count each exactly once.",
    )
    from infra import smoke as smoke_test

    smoke_test.add_arguments(smoke)
    smoke.set_defaults(command=smoke_test.run)

    bench = sub.add_parser(
        "bench",
        help="measure: http (throughput, latency, freshness), projection, tabulation",
        description="Benchmarks that report figures (as a table and a JSON line) and exit "
        "non-zero when a target is missed. `cardinal bench WHAT --help` for each one's options.",
    )
    bench.add_argument("what", choices=sorted(BENCHMARKS), help="what to measure")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    bench.set_defaults(command=_bench)

    migrate = sub.add_parser(
        "migrate",
        help="apply pending database migrations",
        description="Apply the numbered migrations in migrations/ that the database lacks, "
        "in order, under an advisory lock. Running it again is a no-op.",
    )
    migrate.set_defaults(command=_migrate)
    return parser


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _migrate(_: argparse.Namespace) -> int:
    from infra.migrations import migrate

    settings = Settings.from_env()
    _configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set; nothing to migrate")
    applied = migrate(settings.database_url)
    if applied:
        for name in applied:
            console.print(f"applied {name}")
    else:
        console.print("the database is up to date; nothing to apply")
    return 0


def _relay(_: argparse.Namespace) -> int:
    from infra.bootstrap import running_workers

    settings = _worker_settings()
    if settings.amqp_url is None:
        raise SettingsError("AMQP_URL is not set; the relay publishes to RabbitMQ")
    return _run_workers(
        running_workers(settings, relay=True, projections=(), metrics_port=settings.metrics_port)
    )


def _project(args: argparse.Namespace) -> int:
    from infra.bootstrap import running_workers

    names = list(args.names) or list(PROJECTIONS)
    unknown = [name for name in names if name not in PROJECTIONS]
    if unknown:
        raise SettingsError(
            f"unknown projection {', '.join(unknown)}; the projections are "
            + ", ".join(PROJECTIONS)
        )
    settings = _worker_settings(migrate=not args.child)
    return _run_workers(
        running_workers(
            settings, relay=args.relay, projections=names, metrics_port=settings.metrics_port
        )
    )


def _worker_settings(*, migrate: bool = True) -> Settings:
    from infra.migrations import migrate as apply_migrations

    settings = Settings.from_env()
    _configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set")
    if migrate:
        apply_migrations(settings.database_url)
    return settings


def _run_workers(workers: AbstractAsyncContextManager[Workers]) -> int:
    import uvloop

    async def run() -> None:
        async with workers as running:
            await asyncio.gather(*running.tasks)

    uvloop.run(run())
    return 0


def _projections(args: argparse.Namespace) -> int:
    from infra.operations import print_status

    settings = _worker_settings()
    assert settings.database_url is not None
    return asyncio.run(print_status(settings.database_url, as_json=args.json))


def _rebuild(args: argparse.Namespace) -> int:
    from infra.operations import rebuild_with_progress

    settings = _worker_settings()
    assert settings.database_url is not None
    return asyncio.run(rebuild_with_progress(settings.database_url, args.name, args.page_size))


BENCHMARKS = {
    "http": "infra.bench_http",
    "tabulation": "infra.tabulation_bench",
    "projection": "infra.bench_projection",
    "rebuild": "infra.bench_rebuild",
    "verify": "infra.bench_verify",
}


def _bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(BENCHMARKS[args.what])
    result: int = module.main(list(args.options))
    return result


def _serve(_: argparse.Namespace) -> int:
    from infra.supervisor import Supervisor

    settings = Settings.from_env()
    _configure_logging(settings)
    with ExitStack() as stack:
        if settings.database_url is None:
            from infra.embedded import EmbeddedPostgres

            console.print(f"starting embedded PostgreSQL in {settings.data_dir / 'pgdata'} ...")
            url = stack.enter_context(EmbeddedPostgres(settings.data_dir))
            settings = settings.with_overrides(database_url=url)
        settings = _prepare(settings)
        if settings.api_processes == 1:
            return _run_api(settings, everything=True)
        console.print(
            f"  processes: {settings.api_processes} API (sharing port {settings.port}) "
            "+ 1 relay and projections"
        )
        return Supervisor(settings).run()


def _api(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    _configure_logging(settings)
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set (use `cardinal serve` for an embedded one)")
    if not args.child:
        settings = _prepare(settings)
    return _run_api(settings, everything=False, share_port=args.child)


def _prepare(settings: Settings) -> Settings:
    """Complete development credentials, apply migrations, say where things are."""
    from infra.credentials import complete
    from infra.migrations import migrate

    assert settings.database_url is not None
    credentials = complete(settings)
    for name in migrate(settings.database_url):
        console.print(f"applied migration {name}")
    _banner(credentials.settings, credentials.generated_roles)
    return credentials.settings


def _run_api(settings: Settings, *, everything: bool, share_port: bool = False) -> int:
    """Serve the API; with ``everything``, also the relay and every projection.

    With ``share_port``, bind with SO_REUSEPORT so that sibling processes share the port.
    """
    import socket

    import uvicorn

    from api.app import create_app

    sockets = None
    if share_port:
        shared = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind((settings.host, settings.port))
        sockets = [shared]
    config = uvicorn.Config(
        create_app(settings, relay=everything, projections=list(PROJECTIONS) if everything else ()),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
        # Honour X-Forwarded-For only behind a proxy the operator names (uvicorn reads
        # FORWARDED_ALLOW_IPS); otherwise skip the middleware on every request.
        proxy_headers="FORWARDED_ALLOW_IPS" in os.environ,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run(sockets=sockets)
    return 0


def _banner(settings: Settings, generated_roles: Sequence[str]) -> None:
    console.print(f"[bold]Cardinal Vote[/bold] ({settings.env})")
    console.print(f"  database: {_redact(settings.database_url or '')}")
    for role in generated_roles:
        console.print(
            f"  {role} token: {settings.tokens_for(role)[0]}  (generated, kept in "
            f"{settings.data_dir / 'credentials.json'})"
        )
    console.print(f"  API: http://{settings.host}:{settings.port}/api/health")


def _redact(url: str) -> str:
    """A database URL without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{location}"


if __name__ == "__main__":
    sys.exit(main())
