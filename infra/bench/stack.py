"""A deployment's processes, started as an operator starts them, on a scratch database and
RabbitMQ namespace of their own: what benchmarks measure and end-to-end tests drive.

Processes are `cardinal` commands (`serve`, or `api` + `relay` + `project`), each with its
log in a folder of the stack's; any one can be SIGKILLed, stopped or started again.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infra.broker.topology import delete_namespace
from infra.ingest.queues import delete_ingest_queues
from infra.store.names import PREFIX
from projections import PROJECTIONS

ROOT = Path(__file__).resolve().parents[2]
SEPARATE = {"api": ["api"], "relay": ["relay"], "projector": ["project"]}
SERVE = {"serve": ["serve"]}


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768 and up): one the kernel chose
    (bind to 0) is freed before the server binds it, and an outgoing connection, of which
    a benchmark opens many, could take it in the meantime."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


class Stack:
    """A database, a namespace, and processes over them."""

    def __init__(
        self,
        server_url: str,
        logs: Path,
        *,
        tokens: Mapping[str, str],
        commands: Mapping[str, list[str]] = SEPARATE,
        amqp_url: str | None = None,
        prefix: str = "stack",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.server_url = server_url
        self.logs = logs
        self.tokens = dict(tokens)
        self.commands = dict(commands)
        self.amqp_url = amqp_url
        self.prefix = prefix
        self.extra_env = dict(env or {})
        self.namespace = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.database_url = ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}

    def __enter__(self) -> Self:
        name = f"cardinal_{self.prefix.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.database_url = make_conninfo(self.server_url, dbname=name)
        try:
            for process in self.commands:
                self.start(process)
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for name in list(self.processes):
            self.stop(name)
        if self.amqp_url is not None:
            delete_namespace(self.amqp_url, self.namespace, PROJECTIONS)
            delete_ingest_queues(self.amqp_url, f"{self.namespace}.votes.aggregation")
        if self.database_url:
            dbname = str(conninfo_to_dict(self.database_url)["dbname"])
            with psycopg.connect(self.server_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )

    @property
    def env(self) -> dict[str, str]:
        """The environment every process of the stack starts with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CARDINAL_", "DATABASE"))}
        env.pop("AMQP_URL", None)
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "CARDINAL_NAMESPACE": self.namespace,
                "CARDINAL_ENV": "test",
                "CARDINAL_SECRET": "e" * 40,
                "CARDINAL_AUDIT_KEY": "42" * 32,
                "PORT": str(self.port),
                "METRICS_PORT": "0",
                "LOG_LEVEL": "INFO",
                # Its own: one serve at a time owns a data folder (stacks run side by side).
                "CARDINAL_DATA_DIR": str(self.logs / "data"),
            }
        )
        for role, token in self.tokens.items():
            env[f"CARDINAL_{role.upper()}_TOKEN"] = token
        if self.amqp_url is not None:
            env["AMQP_URL"] = self.amqp_url
        env.update(self.extra_env)
        return env

    def start(self, name: str, command: list[str] | None = None) -> None:
        """Start one process (``command``: its `cardinal` arguments, if not a known one)."""
        env = self.env
        if name not in ("api", "serve"):
            self.metrics_ports[name] = free_port()
            env["METRICS_PORT"] = str(self.metrics_ports[name])
        with (self.logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "infra.cli", *(command or self.commands[name])],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self, name: str) -> None:
        """SIGTERM, as an orchestrator stops a process; SIGKILL after 20 s."""
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def cardinal(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a one-off `cardinal` command against this stack, as an operator would."""
        return subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "infra.cli", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a one-off `cardinal` command in the background."""
        return subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "infra.cli", *args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until GET /api/ready answers 200; a process that exits meanwhile fails it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited during start-up:\n{self.log(name)}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/api/ready", timeout=1) as ready,  # noqa: S310
            ):
                if ready.status == 200 and self.listening_everywhere():
                    return
            time.sleep(0.1)
        name = next(iter(self.processes), "")
        raise RuntimeError(f"the stack did not become ready:\n{self.log(name) if name else ''}")

    def listening_everywhere(self) -> bool:
        """Whether every API process listens on the port. The first one ready answers
        /api/ready; clients that connect before its siblings listen all land on it
        (SO_REUSEPORT spreads only over the sockets listening), and keep-alive
        connections stay there: a benchmark would measure one process of two."""
        servers = listening = 0
        for name, process in self.processes.items():
            try:
                family = [psutil.Process(process.pid)]
                family += family[0].children(recursive=True)
            except psutil.Error:
                return False  # exited or exiting: the caller's next round says which
            api = 0
            for member in family:
                with contextlib.suppress(psutil.Error):  # one gone: the others still count
                    api += member is not family[0] and _role(member) == "serve: api"
                    listening += _listeners(member, self.port)
            servers += api or int(name in ("api", "serve"))
        return listening >= servers

    def peak_rss(self) -> dict[str, float]:
        """Peak resident memory (VmHWM, MiB) of every stack process, children included."""
        peaks: dict[str, float] = {}
        for name, process in self.processes.items():
            parent = psutil.Process(process.pid)
            family = [(name, parent)] + [
                (_role(child), child) for child in parent.children(recursive=True)
            ]
            for role, member in family:
                with contextlib.suppress(OSError, psutil.Error):
                    status = Path(f"/proc/{member.pid}/status").read_text()
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            label = role if role not in peaks else f"{role} ({member.pid})"
                            peaks[label] = round(int(line.split()[1]) / 1024, 1)
        return peaks

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system, seconds) so far of each role: the stack's processes
        (same-role children summed), the PostgreSQL backends serving its database, the
        server's own background processes (WAL writer, checkpointer: the commits' flushes)
        and, where the stack has a broker on this machine, the RabbitMQ node's."""
        spent: dict[str, float] = {}
        for role, member in self._members():
            with contextlib.suppress(psutil.Error):
                times = member.cpu_times()
                spent[role] = spent.get(role, 0.0) + times.user + times.system
        return spent

    def context_switches(self) -> dict[str, int]:
        """Context switches so far of each role, as ``cpu_seconds`` groups them, every
        thread's: each is a wake-up (or a preemption) the machine charges for."""
        switches: dict[str, int] = {}
        for role, member in self._members():
            switches[role] = switches.get(role, 0) + context_switches(member.pid)
        return switches

    def _members(self) -> Iterator[tuple[str, psutil.Process]]:
        """Every process whose work a benchmark counts, with its role."""
        for name, process in self.processes.items():
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(process.pid)
                family = parent.children(recursive=True)
                yield name, parent
                for child in family:
                    with contextlib.suppress(psutil.Error):
                        yield _role(child), child
        database = conninfo_to_dict(self.database_url).get("dbname", "")
        names = self._backend_names()
        found = psutil.process_iter(["name", "cmdline", "ppid"])
        postgres = [p for p in found if p.info["name"] == "postgres"]
        servers = set()
        for backend in postgres:
            if f" {database} " in f"{' '.join(backend.info['cmdline'] or ())} ":
                yield _backend_role(names.get(backend.pid, "")), backend
                servers.add(backend.info["ppid"])  # the postmaster
        for helper in postgres:
            command = " ".join(helper.info["cmdline"] or ())
            if helper.info["ppid"] in servers and any(a in command for a in SERVER_BACKGROUND):
                yield "PostgreSQL background", helper
        for node in self._broker_nodes():
            yield "RabbitMQ node", node

    def _backend_names(self) -> dict[int, str]:
        """Each backend of the stack's database: its application_name (infra/store/names.py)."""
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn,
        ):
            rows = conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
            return {int(pid): str(name) for pid, name in rows}
        return {}

    def _broker_nodes(self) -> list[psutil.Process]:
        """The RabbitMQ node serving the stack's AMQP port, where it runs on this machine."""
        if self.amqp_url is None:
            return []
        parts = urlsplit(self.amqp_url)
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        nodes = []
        for process in psutil.process_iter(["name"]):
            if process.info["name"] != "beam.smp":
                continue
            with contextlib.suppress(psutil.Error):
                if _listeners(process, port):
                    nodes.append(process)
        return nodes


# PostgreSQL's own processes that work for every database's commits (shared: a figure of
# the whole server, which the stack alone uses during a benchmark on this machine).
SERVER_BACKGROUND = ("walwriter", "checkpointer", "background writer")


def context_switches(pid: int | str = "self") -> int:
    """A process's context switches so far, voluntary or not, summed over its threads
    (/proc/PID/status alone counts its first thread's); 0 for a process that is gone."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # a thread (or the process) that ended meanwhile
            continue
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split(":")[1])
    return total


def _listeners(process: psutil.Process, port: int) -> int:
    """How many sockets of the process listen on the port."""
    return sum(
        conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
        for conn in process.net_connections("tcp")
    )


def _backend_role(application_name: str) -> str:
    """The figure a PostgreSQL backend's CPU counts toward: the stack's connections by what
    they are; the benchmark's own (its freshness watcher, its checks) apart, as part of
    the load generator, not of the system under test."""
    role = application_name.removeprefix(PREFIX) if application_name.startswith(PREFIX) else ""
    if role == "bench":
        return LOAD_GENERATOR_BACKENDS
    return f"PostgreSQL backends: {role or 'other'}"


LOAD_GENERATOR_BACKENDS = "load generator: PostgreSQL backends"


def _role(process: psutil.Process) -> str:
    """What a child of `cardinal serve` is, from its command line."""
    command = " ".join(process.cmdline())
    if "api --child" in command:
        return "serve: api"
    if "ingest" in command:
        return "serve: ingest"
    if "project" in command:
        return "serve: relay + projections"
    return process.name()
