"""A RabbitMQ node of a test's own, to stop and start without touching the machine's shared
one: its own node name, ports, data folder and Erlang cookie."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.pg_cluster import quiet_port

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")


class RabbitNode:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = f"chaos-{uuid.uuid4().hex[:8]}@localhost"
        self.port = quiet_port()
        self.dist_port = quiet_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self._server: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        home = self.root / "home"
        return {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
            "RUNNING_UNDER_SYSTEMD": "1",
            "ERL_EPMD_PORT": os.environ.get("ERL_EPMD_PORT", "4369"),
        }

    def __enter__(self) -> Self:
        if not SERVER.exists():
            raise RuntimeError(f"RabbitMQ is not installed ({SERVER} is missing)")
        (self.root / "home").mkdir(parents=True, exist_ok=True)
        cookie = self.root / "home" / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(
            f"loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{self.port}\n"
        )
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def start(self, timeout: float = 90) -> None:
        with (self.root / "server.log").open("ab") as log:
            self._server = subprocess.Popen(  # our own test node
                [str(SERVER)], env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._ctl("await_startup", timeout=30).returncode == 0:
                return
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test RabbitMQ node did not start; see {self.root}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self._server is None or self._server.poll() is not None:
            return
        self._ctl("stop", timeout=60)
        try:
            self._server.wait(30)
        except subprocess.TimeoutExpired:
            self._server.kill()
            self._server.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # our own test node
            [str(CTL), "-n", self.name, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
