"""SIGTERM, as Kubernetes or systemd stop a process: a one-shot command it stops did not
finish, and says so with exit status 143; a service drains and exits 0 (review helper-40:
every command exited 0, so an interrupted import, rebuild or export was recorded as done)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from infra.store.migrations import migrate
from tests.databases import create_database, drop_database
from tests.integration.test_audit_verify import catch_up_every_projection
from tests.integration.test_projection_runtime import _fill
from tests.servers import TEST_AUDIT_KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def store() -> AsyncIterator[str]:
    """A log with an election's ballots, and every projection live over it."""
    url = create_database("cardinal_sigterm")
    migrate(url)
    await _fill(url, random.Random(5), ballots=200)
    await catch_up_every_projection(url)
    yield url
    drop_database(url)


def _start(*args: str, database_url: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "METRICS_PORT": "0",
        "CARDINAL_AUDIT_KEY": TEST_AUDIT_KEY,
    }
    env.pop("AMQP_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stopped(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return process.returncode, " ".join(err.split())


def _until(condition: str, database_url: str, process: subprocess.Popen[str]) -> None:
    """Until a query on pg_stat_activity finds a row (the command got that far)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(database_url, autocommit=True) as conn:
        while conn.execute(condition).fetchone() is None:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"never: {condition}"
            time.sleep(0.05)


def _waiting_for_a_lock(command: str) -> str:
    return (
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        f"AND application_name = 'cardinal {command}' AND wait_event_type = 'Lock'"
    )


@pytest.fixture
def held(store: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A transaction that may lock a table, so that a command waits at a known point."""
    with psycopg.connect(store) as conn:
        yield conn
        conn.rollback()


def test_an_interrupted_rebuild_exits_143_and_says_so_in_its_registry(
    store: str, held: psycopg.Connection[tuple[object, ...]]
) -> None:
    with psycopg.connect(store) as conn:
        before = conn.execute(
            "SELECT active_version FROM projections WHERE name = 'tally'"
        ).fetchone()
    held.execute("LOCK TABLE cardinal_events IN ACCESS EXCLUSIVE MODE")  # the pages wait
    rebuild = _start("rebuild", "tally", database_url=store)
    _until(_waiting_for_a_lock("rebuild"), store, rebuild)
    code, err = _stopped(rebuild)
    held.rollback()
    assert code == 143, err
    assert (
        "cardinal rebuild was interrupted (SIGTERM): the previous version keeps serving; "
        "run the rebuild again"
    ) in err
    assert "Traceback" not in err
    with psycopg.connect(store) as conn:
        row = conn.execute(
            "SELECT active_version, building_version, state, detail FROM projections "
            "WHERE name = 'tally'"
        ).fetchone()
    assert row is not None
    active, building, state, detail = row
    assert (active,) == before
    assert (state, detail) == (
        "failed",
        f"rebuild of version {building} was interrupted: its process was stopped",
    )


def test_an_interrupted_export_exits_143_and_leaves_no_file_that_looks_whole(
    store: str, held: psycopg.Connection[tuple[object, ...]], tmp_path: Path
) -> None:
    output = tmp_path / "audit.ndjson"
    output.write_text("an earlier export\n")
    partial = tmp_path / "audit.ndjson.partial"
    held.execute("LOCK TABLE audit_chain IN ACCESS EXCLUSIVE MODE")  # the events wait
    exporting = _start("audit", "export", "--output", str(output), database_url=store)
    _until(_waiting_for_a_lock("audit"), store, exporting)
    assert partial.exists()  # it was writing when it was stopped
    code, err = _stopped(exporting)
    held.rollback()
    assert code == 143, err
    assert "cardinal audit was interrupted (SIGTERM): no export was written; run it again" in err
    assert "Traceback" not in err
    assert output.read_text() == "an earlier export\n"  # neither cut short nor replaced
    assert not partial.exists()


def test_an_interrupted_import_exits_143_and_says_that_running_it_again_resumes(
    tmp_path: Path,
) -> None:
    ballots = tmp_path / "ballots.jsonl"
    ballots.write_text('{"voter": "v1", "vote": {"choice": "a"}}\n')
    with socket.socket() as silent:  # an API that takes the connection and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(60)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        importing = _start(
            "import",
            str(ballots),
            "--election",
            "e",
            "--url",
            url,
            "--token",
            "t",
            database_url="",
        )
        accepted, _ = silent.accept()
        with accepted:
            code, err = _stopped(importing)
    assert code == 143, err
    assert (
        "cardinal import was interrupted (SIGTERM): running the same import again with the "
        "same token resumes it (it records nothing twice)"
    ) in " ".join(err.split())
    assert "Traceback" not in err


def test_a_service_stopped_by_sigterm_exits_0(store: str) -> None:
    projecting = _start("project", "tally", database_url=store)
    _until(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'cardinal projections'",
        store,
        projecting,
    )
    code, err = _stopped(projecting)
    assert code == 0, err
    assert "interrupted" not in err
