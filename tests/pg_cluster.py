"""A PostgreSQL cluster of a test's own, to stop, restart and fill without touching the
machine's shared server: initdb as the ``postgres`` user into a temporary folder, on a
port of its own, trust authentication for ``root``."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psutil
import psycopg

BIN = Path("/usr/lib/postgresql/15/bin")


def quiet_port() -> int:
    """A free port below the kernel's ephemeral range (32768 and up here): a server that
    restarts must find its port free again, and an outgoing connection could otherwise
    have taken it in the meantime."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 32_000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _as_postgres(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def _as_postgres_ok(*command: str) -> bool:
    try:
        _as_postgres(*command, timeout=30)
    except subprocess.CalledProcessError:
        return False
    return True


class Cluster:
    """initdb'd on enter, removed on exit; ``stop``/``start``/``restart`` in between.

    ``root`` must be a folder the ``postgres`` user can reach (not pytest's, which is
    private to root): a ``tempfile.mkdtemp()`` under /tmp."""

    START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections

    def __init__(
        self, root: Path, *, wal_dir: Path | None = None, wal_segment_mb: int = 16
    ) -> None:
        self.root = root
        self.data = root / "data"
        self.wal_dir = wal_dir
        self.wal_segment_mb = wal_segment_mb
        self.port = quiet_port()
        self.url = f"postgresql://root@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> Self:
        if not (BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL 15 is not installed in {BIN}")
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o755)
        args = [str(BIN / "initdb"), "-D", str(self.data), "-U", "root", "-A", "trust"]
        if self.wal_dir is not None:
            args += ["-X", str(self.wal_dir)]
        args += [f"--wal-segsize={self.wal_segment_mb}"]
        _as_postgres(*args, "--no-sync")
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def start(self) -> None:
        """Start the server; one that is not ready within START_TIMEOUT is killed before
        the error is raised (raised from ``__enter__``, no ``__exit__`` would stop it)."""
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        try:
            _as_postgres(
                str(BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "log"),
                "-o",
                options,
                "-w",
                "-t",
                str(self.START_TIMEOUT),
                "start",
                timeout=self.START_TIMEOUT + 30,  # pg_ctl gives up first, and says why
            )
        except BaseException:
            self._kill()
            raise

    def _kill(self) -> None:
        """SIGKILL this cluster's server and its children, and reap them."""
        data = str(self.data)
        for process in psutil.process_iter(["cmdline"]):
            command = process.info["cmdline"] or []
            if "-D" in command and data in command:  # the postmaster (not pg_ctl: gone)
                family = [process, *process.children(recursive=True)]
                for member in family:
                    with contextlib.suppress(psutil.Error):
                        member.kill()
                psutil.wait_procs(family, timeout=30)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions rolled back; ``immediate``: a crash)."""
        if not self.running():
            return
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def freeze(self, thaw: bool = False) -> None:
        """SIGSTOP (or SIGCONT) the server and every backend: a hang, not an outage. The
        kernel still accepts connections and acknowledges what is sent; nothing answers."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        sign = signal.SIGCONT if thaw else signal.SIGSTOP
        os.kill(postmaster, sign)
        # Its children, listed after it is stopped (none is forked after) and again until
        # the list holds no new one: a backend forked just before the stop would run on.
        # One that exits between the list and its signal is neither to stop nor to wake (a
        # fresh clone's run: "No such process" as a backend left at the thaw).
        signalled: set[int] = set()
        while True:
            children = {
                int(pid)
                for pid in subprocess.run(
                    ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
                ).stdout.split()
            }
            if children <= signalled:
                return
            for pid in children - signalled:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sign)
            signalled |= children

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists() and _as_postgres_ok(
            str(BIN / "pg_ctl"), "-D", str(self.data), "status"
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"


def reap_when_gone(owner: int, root: Path) -> None:
    """Wait for process ``owner`` to end, then kill the cluster under ``root`` and remove
    it. pg_ctl starts the server in a session of its own, so it outlives an owner that is
    interrupted or killed before it stops it (a pytest worker at Ctrl-C or a crash)."""
    with contextlib.suppress(psutil.Error):
        owned = psutil.Process(owner)
        while owned.is_running() and owned.status() != psutil.STATUS_ZOMBIE:
            time.sleep(1)
    if root.exists():
        cluster = Cluster.__new__(Cluster)  # (no port to find: only its folder)
        cluster.root, cluster.data = root, root / "data"
        cluster._kill()
        shutil.rmtree(root, ignore_errors=True)


def start_reaper(root: Path) -> None:
    """``reap_when_gone`` for this process and ``root``, in a process of its own that
    outlives this one (a session of its own: a Ctrl-C to the run's group spares it)."""
    subprocess.Popen(
        [sys.executable, "-m", "tests.pg_cluster", str(os.getpid()), str(root)],
        cwd=Path(__file__).parents[1],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    reap_when_gone(int(sys.argv[1]), Path(sys.argv[2]))
