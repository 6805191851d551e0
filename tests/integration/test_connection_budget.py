"""`cardinal serve`'s connections: counted in one place, checked against the server's
max_connections at start, and made room for by the embedded server."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest

from infra.cli import serve
from infra.runtime.supervisor import Supervisor
from infra.store import connections, store_environment
from infra.store.connections import (
    API_BRIEFLY,
    READS_POOL,
    STORE_POOL_OVERFLOW,
    STORE_POOL_SIZE,
    Room,
    check_room,
    embedded_max_connections,
    ingest,
    room,
    serve_needs,
    services,
)
from infra.store.embedded import EmbeddedPostgres
from projections import PROJECTIONS
from tests.pg_cluster import quiet_port
from tests.servers import settings_for

ROOT = Path(__file__).resolve().parents[2]
N = len(PROJECTIONS)


def _said(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The connection check's records: caplog.at_level(WARNING, logger=...) sets the level
    of caplog's handler too, which takes every logger's records, and the worker's session
    API stack, on the same server and loop, may warn meanwhile."""
    return [r for r in caplog.records if r.name == "infra.store.connections"]


def test_the_documented_maxima_are_the_codes() -> None:
    per_api = services(rate_limiter=True) + API_BRIEFLY
    with_broker = serve_needs(2, broker=True, projections=N) - 2 * per_api
    without = serve_needs(2, broker=False, projections=N) - 2 * per_api
    assert (per_api, with_broker, without) == (24, 31, 12)
    times = "\N{MULTIPLICATION SIGN}"
    for doc in ("README.md", "docs/architecture.md"):
        text = " ".join((ROOT / doc).read_text().split())
        assert f"`{per_api} {times} WEB_CONCURRENCY + {with_broker}`" in text, doc
        assert (
            f"`+ {without}`" in text or f"`{per_api} {times} WEB_CONCURRENCY + {without}`" in text
        )
        # A standalone ingest also holds its metrics task's connection (documentation
        # review: documented as serve's, one fewer).
        assert f"{per_api} {times} api + {ingest(metrics=True)} {times} ingest" in text, doc
    assert (ingest(metrics=True), ingest(metrics=False)) == (22, 21)
    assert f"each `ingest` {ingest(metrics=True)}" in " ".join(
        (ROOT / "README.md").read_text().split()
    )
    # The pools are sized from the same figures.
    env = store_environment("postgresql://u@h/d")
    assert (env["POSTGRES_POOL_SIZE"], env["POSTGRES_MAX_OVERFLOW"]) == (
        str(STORE_POOL_SIZE),
        str(STORE_POOL_OVERFLOW),
    )
    assert services(rate_limiter=True) == STORE_POOL_SIZE + STORE_POOL_OVERFLOW + READS_POOL + 5


def test_serve_warns_at_start_when_the_server_has_no_room_and_starts_anyway(
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = room(database_url)
    processes = found.max_connections // 24 + 1  # more than the whole server takes
    need = serve_needs(processes, broker=False, projections=N)
    assert need > found.max_connections
    started: list[int] = []

    def run(self: Supervisor) -> int:  # (starting them would take the shared server)
        started.append(len(self.children))
        return 0

    monkeypatch.setattr(Supervisor, "run", run)
    settings = settings_for(
        database_url,
        web_concurrency=processes,
        data_dir=tmp_path,
        port=quiet_port(),
        metrics_port=quiet_port(),
    )
    with caplog.at_level(logging.WARNING, logger="infra.store.connections"), ExitStack() as stack:
        assert serve._serve(settings, stack) == 0
    assert started == [processes + 1], "serve refused to start"
    warnings = [r.getMessage() for r in _said(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    said = warnings[0]
    assert f"may hold up to {need} PostgreSQL connections" in said
    assert f"max_connections {found.max_connections}" in said
    assert "Lower WEB_CONCURRENCY or raise max_connections" in said


def test_a_serve_that_fits_is_not_warned(
    database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exactly as many connections as there is room for: not warned. (The room is given:
    the shared server's, counted over every client of it, may really be full.)"""
    given = Room(max_connections=100, reserved=3, in_use=90)
    monkeypatch.setattr(connections, "room", lambda _url: given)
    with caplog.at_level(logging.WARNING, logger="infra.store.connections"):
        found = check_room(database_url, given.free, "seven connections")
    assert found == given
    assert _said(caplog) == []


def test_the_embedded_server_has_room_for_serve_also_when_its_folder_is_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    need = serve_needs(4, broker=True, projections=N)  # 127: more than the default 100
    wanted = embedded_max_connections(need)
    assert wanted > 100
    with EmbeddedPostgres(tmp_path, max_connections=wanted) as url:
        assert _max_connections(url) == wanted
        with caplog.at_level(logging.WARNING, logger="infra.store.connections"):
            assert check_room(url, need, "cardinal serve") is not None
        assert _said(caplog) == []
    # An earlier run's folder, started for more processes: raised on reuse.
    with EmbeddedPostgres(tmp_path, max_connections=wanted + 24) as url:
        assert _max_connections(url) == wanted + 24
    # ... and not lowered (nor restarted) for fewer.
    with EmbeddedPostgres(tmp_path, max_connections=110) as url:
        assert _max_connections(url) == wanted + 24


def _max_connections(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW max_connections").fetchone()
    assert row is not None
    return int(row[0])
