"""`cardinal ingest`: ballots from RabbitMQ (the vote aggregation service's path)."""

from __future__ import annotations

import argparse

from infra.cli.environment import Commands, command_settings
from infra.runtime.lifecycle import check_port_free, die_with_parent
from infra.runtime.settings import Settings, SettingsError


def add_commands(sub: Commands) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="cast ballots from the RabbitMQ ingest queue (needs DATABASE_URL and AMQP_URL)",
        description="Consume INGEST_QUEUE (default <CARDINAL_NAMESPACE>.votes.aggregation, a "
        "durable quorum queue): each message is a ballot (or {ballots: [...]}) whose "
        "message_id is its idempotency key. Ballots are cast in batches and acked after "
        "their commit; refusals go to <INGEST_QUEUE>.refused. Run as many as you like on "
        "one queue. Metrics on METRICS_PORT (8001).",
    )
    ingest.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ingest.set_defaults(command=run_ingest)


def run_ingest(args: argparse.Namespace) -> int:
    import uvloop

    from infra.ingest.service import run_ingest as ingest

    configured = Settings.from_env()
    if configured.amqp_url is None:
        raise SettingsError("AMQP_URL is not set; `cardinal ingest` consumes from RabbitMQ")
    if not args.child and configured.metrics_port:
        # Before the database and the broker, as `project` and `relay` do: taken (say, by
        # `cardinal serve` beside it), its metrics server would die with a traceback.
        check_port_free(
            configured.metrics_listen_host, configured.metrics_port, "METRICS_PORT (0: none)"
        )
    settings = command_settings(migrate=not args.child)
    if args.child:
        die_with_parent()  # a child of `cardinal serve` stops when serve does
    uvloop.run(ingest(settings, metrics_port=None if args.child else settings.metrics_port))
    return 0
