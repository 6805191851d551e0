"""A private RabbitMQ node, for tests that stop or restart the broker: never the shared one.

Its own node name, ports, data and log directories, and HOME (for its own Erlang cookie).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from infra.bench.stack import free_port

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
DIAGNOSTICS = "/usr/lib/rabbitmq/bin/rabbitmq-diagnostics"
START_TIMEOUT = 90.0


class PrivateRabbit:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.node = f"cardinal-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process: subprocess.Popen[bytes] | None = None
        (tmp / "home").mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.tmp / "home"),
            "RUNNING_UNDER_SYSTEMD": "1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.tmp / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.tmp / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.tmp / "none"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.tmp / "enabled_plugins"),
            "RABBITMQ_ENABLED_PLUGINS": "",
        }

    def start(self) -> None:
        with (self.tmp / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [SERVER], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"RabbitMQ exited:\n{(self.tmp / 'server.log').read_text()}")
            ping = subprocess.run(
                [DIAGNOSTICS, "-q", "-n", self.node, "check_port_connectivity"],
                env=self.env,
                capture_output=True,
                check=False,
            )
            if ping.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"RabbitMQ did not start:\n{(self.tmp / 'server.log').read_text()}")

    def stop(self) -> None:
        """As an orchestrator stops it: SIGTERM, and wait (its data stays)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.tmp / "mnesia", ignore_errors=True)
