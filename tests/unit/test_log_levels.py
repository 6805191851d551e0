"""LOG_LEVEL=DEBUG must not put ballots in the log: aiormq's DEBUG records print every frame
it sends, and a refused ingest message forwarded to `.refused` holds its voter id (or token)
and its vote (the secrecy review found both in a DEBUG server log). The libraries that log
what they carry stay at INFO; our own modules follow LOG_LEVEL."""

import subprocess
import sys

PROBE = """
import logging
from infra.cli.environment import configure_logging
from infra.runtime.settings import Settings
configure_logging(Settings(log_level="DEBUG"))
names = "aiormq.connection aio_pika.robust_channel pamqp psycopg.pool infra.ingest.consumer"
for name in names.split():
    print(name, logging.getLogger(name).isEnabledFor(logging.DEBUG))
"""


def test_debug_leaves_the_broker_and_database_drivers_at_info() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    enabled = dict(line.split() for line in shown if line)
    assert enabled == {
        "aiormq.connection": "False",
        "aio_pika.robust_channel": "False",
        "pamqp": "False",
        "psycopg.pool": "False",
        "infra.ingest.consumer": "True",
    }
