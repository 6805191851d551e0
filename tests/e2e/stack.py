"""The processes of a deployment (api, relay, projector), started as an operator would.

Each stack gets its own database and RabbitMQ namespace; components can be SIGKILLed and
restarted one at a time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psycopg

from infra.topology import delete_namespace
from projections import PROJECTIONS
from tests.databases import create_database, drop_database
from tests.servers import ADMIN, AUDITOR, CLIENT, OPERATOR, TEST_AUDIT_KEY

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
ROOT = Path(__file__).resolve().parents[2]
COMMANDS = {"api": ["api"], "relay": ["relay"], "projector": ["project"]}
EXTRA_COMMANDS = {"relay-standby": ["relay"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    """A database, a namespace, and the api/relay/projector processes over them."""

    def __init__(self, tmp: Path, **env: str) -> None:
        self.tmp = tmp
        self.namespace = f"test-{uuid.uuid4().hex[:10]}"
        self.database_url = ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}

    def __enter__(self) -> Stack:
        self.database_url = create_database("cardinal_e2e")
        for name in COMMANDS:
            self.start(name)
        self.wait_ready()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for name in list(self.processes):
            self.stop(name)
        delete_namespace(AMQP_URL, self.namespace, PROJECTIONS)
        drop_database(self.database_url)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARDINAL_", "DATABASE"))}
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "AMQP_URL": AMQP_URL,
                "CARDINAL_NAMESPACE": self.namespace,
                "CARDINAL_ENV": "test",
                "CARDINAL_SECRET": "e" * 40,
                "CARDINAL_AUDIT_KEY": TEST_AUDIT_KEY,
                "CARDINAL_ADMIN_TOKEN": ADMIN,
                "CARDINAL_OPERATOR_TOKEN": OPERATOR,
                "CARDINAL_AUDITOR_TOKEN": AUDITOR,
                "CARDINAL_CLIENT_TOKEN": CLIENT,
                "PORT": str(self.port),
                "METRICS_PORT": "0",
                "LOG_LEVEL": "INFO",
                **self.extra_env,
            }
        )
        return env

    def start(self, name: str) -> None:
        log = (self.tmp / f"{name}.log").open("ab")
        env = self.env
        if name != "api":
            self.metrics_ports[name] = free_port()
            env["METRICS_PORT"] = str(self.metrics_ports[name])
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *{**COMMANDS, **EXTRA_COMMANDS}[name]],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def cardinal(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a one-off `cardinal` command against this stack, as an operator would."""
        return subprocess.run(
            [sys.executable, "-m", "infra.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

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

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited:\n{self.log(name)}"
            try:
                if httpx.get(f"{self.url}/api/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the stack did not become ready:\n{self.log('api')}")


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
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "test: connection dropped"],
            check=True,
            capture_output=True,
        )
        closed += 1
    return closed


def json_of(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json()
