"""Closing the terminal of `make run` (SIGHUP to its process group) stops `cardinal serve`
as SIGTERM does: its processes drain and its embedded PostgreSQL is stopped. (The
supervisor caught SIGTERM and SIGINT only: serve died at once and left the server running,
which the next serve then reused while saying it was starting one.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from tests.pg_cluster import quiet_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A folder of its own, not under pytest's: the wheel opens the path to the server's
    user once, when it creates the data folder, and pytest closes its own again (0700)
    whenever another run starts."""
    root = Path(tempfile.mkdtemp(prefix="cardinal-hangup-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _env(data: Path, processes: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARDINAL_", "DATABASE"))}
    env.update(
        {
            "CARDINAL_DATA_DIR": str(data),
            "PORT": str(quiet_port()),
            "METRICS_PORT": str(quiet_port()),
            "WEB_CONCURRENCY": str(processes),
            "LOG_LEVEL": "WARNING",
        }
    )
    env.pop("AMQP_URL", None)
    return env


@contextmanager
def _serve(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`cardinal serve` in its own session (as a terminal's foreground job), answering."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{env['PORT']}/api/health"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:  # the test failed before it stopped it
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


def _postgres(pgdata: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        if process.info["name"] == "postgres" and str(pgdata) in " ".join(
            process.info["cmdline"] or []
        ):
            found.append(process)
    return found


def _hang_up(process: subprocess.Popen[bytes], pgdata: Path, log: Path) -> None:
    """SIGHUP to the whole group, as a closed terminal sends it: everything stops."""
    children = psutil.Process(process.pid).children(recursive=True)
    assert _postgres(pgdata), log.read_text()
    os.killpg(process.pid, signal.SIGHUP)
    assert process.wait(timeout=60) == 0, log.read_text()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"still running after SIGHUP: {alive}\n{log.read_text()}"
    assert not _postgres(pgdata), f"the embedded PostgreSQL outlived SIGHUP\n{log.read_text()}"


@pytest.mark.parametrize("processes", [1, 2], ids=["one-process", "supervisor"])
def test_sighup_stops_serve_and_its_embedded_postgresql(data_root: Path, processes: int) -> None:
    data = data_root / "data"
    log = data_root / "serve.log"
    pgdata = (data / "pgdata").resolve()
    try:
        with _serve(_env(data, processes), log) as process:
            _hang_up(process, pgdata, log)
        assert "starting embedded PostgreSQL" in log.read_text()
    finally:
        for left in _postgres(pgdata):
            left.kill()


def test_a_server_left_running_is_reused_and_said_so(data_root: Path) -> None:
    data = data_root / "data"
    log = data_root / "serve.log"
    pgdata = (data / "pgdata").resolve()
    env = _env(data, 2)
    with _serve(env, log) as process:  # killed outright: it cannot stop its server
        process.kill()
        process.wait()
    left = _postgres(pgdata)
    try:
        assert left, log.read_text()
        (postmaster,) = left  # (its children's command lines do not name the folder)
        pid = postmaster.pid
        log.write_text("")
        deadline = time.monotonic() + 30  # the children stop on their parent's death
        while _port_bound(int(env["PORT"])) and time.monotonic() < deadline:
            time.sleep(0.2)
        with _serve(env, log) as again:
            said = log.read_text()
            assert f"reusing the embedded PostgreSQL left running (pid {pid})" in said, said
            assert "starting embedded PostgreSQL" not in said, said
            _hang_up(again, pgdata, log)
    finally:
        for server in _postgres(pgdata):
            server.kill()


def _port_bound(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
