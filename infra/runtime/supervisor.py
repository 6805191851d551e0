"""`cardinal serve` on more than one core: a supervisor and its child processes.

Python runs one core per process, and on a two-core machine the API alone needs more than
one. So `serve` starts N API processes that share the listening port (SO_REUSEPORT: the
kernel spreads connections between them), one background process with the relay and
every projection, and with AMQP_URL one `cardinal ingest` (ballots from RabbitMQ). The
supervisor owns what is shared (the embedded PostgreSQL, generated credentials,
migrations), restarts a child that dies, and on SIGTERM, SIGINT or SIGHUP (the terminal
closed) stops them all before it stops the database. Killed outright, it takes its
children with it (see infra/runtime/lifecycle.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from infra.runtime.lifecycle import PARENT_ENV
from infra.runtime.settings import Settings
from infra.runtime.shared_metrics import SharedMetrics

log = logging.getLogger(__name__)

RESTART_DELAY = 1.0
STOP_TIMEOUT = 20.0


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = False
        api = [Child(f"api-{n + 1}", ["api", "--child"]) for n in range(settings.api_processes)]
        self.children = [Child("workers", ["project", "--relay", "--child"]), *api]
        if settings.amqp_url is not None:  # ballots from RabbitMQ too (issue 16)
            self.children.append(Child("ingest", ["ingest", "--child"]))
        self.metrics = SharedMetrics()  # /metrics of any API child reports them all

    def run(self) -> int:
        stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._stop) for sig in stops}
        try:
            for child in self.children:
                self._start(child)
            while not self.stopping:
                for child in self.children:
                    if child.process is not None and child.process.poll() is not None:
                        self._restart(child)
                time.sleep(0.2)
        finally:
            self._stop_children()
            self.metrics.remove()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _start(self, child: Child) -> None:
        env = {**os.environ, **self.settings.environment(), PARENT_ENV: str(os.getpid())}
        if child.command[0] in ("api", "ingest"):  # shown by every API process's /metrics
            env.update(self.metrics.environment())
        child.process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "infra.cli", *child.command], env=env
        )
        child.started_at = time.monotonic()

    def _restart(self, child: Child) -> None:
        assert child.process is not None
        code = child.process.returncode
        log.error("%s exited with status %s; restarting it", child.name, code)
        self.metrics.process_exited(child.process.pid)
        child.restarts += 1
        if time.monotonic() - child.started_at < RESTART_DELAY:
            time.sleep(RESTART_DELAY)  # a child that dies at once: do not spin
        self._start(child)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _stop_children(self) -> None:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
