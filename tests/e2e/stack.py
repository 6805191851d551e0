"""The processes of a deployment (api, relay, projector), started as an operator would:
infra.bench.stack's harness, with the tests' tokens and what tests assert about a stack.

Each stack gets its own database and RabbitMQ namespace; components can be SIGKILLed and
restarted one at a time.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from infra.bench import stack
from tests.databases import SERVER_URL
from tests.servers import ADMIN, AUDITOR, CLIENT, OPERATOR, TEST_AUDIT_KEY

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ROOT = stack.ROOT
EXTRA_COMMANDS = {"relay-standby": ["relay"]}
free_port = stack.free_port


class Stack(stack.Stack):
    """A database, a namespace, and the api/relay/projector processes over them."""

    def __init__(self, tmp: Path, **env: str) -> None:
        super().__init__(
            SERVER_URL,
            tmp,
            tokens={"admin": ADMIN, "operator": OPERATOR, "auditor": AUDITOR, "client": CLIENT},
            amqp_url=AMQP_URL,
            prefix="test",
            env={"CARDINAL_AUDIT_KEY": TEST_AUDIT_KEY, **env},
        )
        self.tmp = tmp

    def start(self, name: str, command: list[str] | None = None) -> None:
        super().start(name, command or EXTRA_COMMANDS.get(name))

    def assert_relayed(self) -> None:
        """The relay published the whole log, and no process logged a crash."""
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT (SELECT position FROM relay_positions WHERE name = 'relay'), "
                "(SELECT max(notification_id) FROM cardinal_events)"
            ).fetchone()
        assert row is not None
        relayed, head = row
        deadline = time.monotonic() + 30
        while relayed != head and time.monotonic() < deadline:
            time.sleep(0.1)
            with psycopg.connect(self.database_url) as conn:
                got = conn.execute("SELECT position FROM relay_positions").fetchone()
                relayed = got[0] if got else None
        assert relayed == head, f"the relay is at {relayed}, the log at {head}"
        # The projections consumed what was published: their queues drain (had they only
        # caught up from the store, the pages would pile up there).
        waiting: dict[str, int] = {}
        while time.monotonic() < deadline:
            waiting = self.queue_depths()
            if not any(waiting.values()):
                break
            time.sleep(0.2)
        assert waiting
        assert not any(waiting.values()), waiting
        for name in self.processes:
            assert "crashed; restarting" not in self.log(name), self.log(name)

    def queue_depths(self) -> dict[str, int]:
        """Messages ready or unacknowledged in each of this stack's projection queues."""
        listed = _rabbitmqctl("list_queues", "name", "messages")
        depths = {}
        for line in listed.splitlines():
            name, _, count = line.partition("\t")
            if name.startswith(f"{self.namespace}.") and not name.endswith(".dead-letter"):
                depths[name] = int(count)
        return depths


def _connections(namespace: str) -> list[str]:
    """The broker's ids of the connections a stack's processes opened."""
    listed = _rabbitmqctl("list_connections", "pid", "client_properties")
    return [line.split("\t", 1)[0] for line in listed.splitlines() if namespace in line]


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True
    ).stdout


def broker_connections(namespace: str) -> int:
    return len(_connections(namespace))


def close_broker_connections(namespace: str) -> int:
    """Close every RabbitMQ connection a stack's processes opened (as a broker restart would)."""
    closed = 0
    for pid in _connections(namespace):
        done = subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: connection dropped"],
            check=False,
            capture_output=True,
            text=True,
        )
        if done.returncode == 0:
            closed += 1
        elif pid in _connections(namespace):  # not one that closed by itself meanwhile
            raise RuntimeError(f"rabbitmqctl close_connection {pid}: {done.stderr}")
    return closed


def json_of(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()
