"""A RabbitMQ node of a test's own, to stop and start without touching the machine's shared
one: its own node name, ports, data folder and Erlang cookie."""

from __future__ import annotations

import contextlib
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
    BOOT_TIMEOUT = 90.0  # seconds for the node to boot (tens of them on a loaded machine)

    def __init__(self, root: Path, config: str = "", advanced: str = "[].") -> None:
        """``config``: lines added to its rabbitmq.conf (``consumer_timeout = 3000``);
        ``advanced``: its advanced.config (``[{rabbit, [{channel_tick_interval, 500}]}].``:
        a channel checks its consumer_timeout once per tick, 60 s by default)."""
        self.root = root
        self.config = config
        self.advanced = advanced
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
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.root / "advanced.config"),
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
            f"loopback_users = none\nlisteners.tcp.default = 127.0.0.1:{self.port}\n" + self.config
        )
        (self.root / "advanced.config").write_text(self.advanced + "\n")
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

    def start(self, timeout: float | None = None) -> None:
        """Start the node and wait, up to ``timeout`` (BOOT_TIMEOUT), for it to boot. A node
        that does not is killed before the error is raised: raised from ``__enter__``, no
        ``__exit__`` would stop it, and a leaked beam.smp loads the machine for the rest of
        the run."""
        with (self.root / "server.log").open("ab") as log:
            self._server = subprocess.Popen(  # our own test node
                [str(SERVER)], env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + (self.BOOT_TIMEOUT if timeout is None else timeout)
        try:
            while True:
                left = deadline - time.monotonic()
                if self._server.poll() is not None or left <= 0:
                    raise RuntimeError(f"the test RabbitMQ node did not start; see {self.root}")
                # await_startup answers at once while the node is not reachable yet, else
                # waits (up to --timeout) for it to finish booting: on a loaded machine
                # that takes long, so each try may use all the time left.
                wait = max(1, round(left))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    # (the CLI's own VM needs time to start too, hence the margin)
                    booted = self._ctl("await_startup", "--timeout", str(wait), timeout=wait + 30)
                    if booted.returncode == 0:
                        return
                time.sleep(0.5)  # not reachable yet: try again
        except BaseException:
            self._kill()
            raise

    def stop(self) -> None:
        if self._server is None or self._server.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._ctl("stop", timeout=60)
        self._kill(grace=30)

    def _kill(self, grace: float = 0) -> None:
        """Reap the server, killing it unless it exits within ``grace`` seconds."""
        if self._server is None:
            return
        try:
            self._server.wait(grace)
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
