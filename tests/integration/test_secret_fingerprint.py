"""The store records which CARDINAL_SECRET it is used with; a process with another is
refused at start (disaster-recovery review: a restore started under another secret
refused every voter token 403 and took a second ballot from a client voter, silently)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from infra.runtime.fingerprint import SecretMismatch, check_secret, fingerprint
from infra.store.migrations import migrate
from tests.databases import create_database, drop_database

FIRST = "f" * 40
OTHER = "o" * 40
REFUSED = "CARDINAL_SECRET is not the secret this database is used with"


@pytest.fixture
def migrated_url() -> Iterator[str]:
    url = create_database("cardinal_secret")
    migrate(url)
    yield url
    drop_database(url)


def _cardinal(
    *args: str, database_url: str, secret: str, data_dir: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARDINAL_", "AMQP"))}
    env.update(
        {
            "DATABASE_URL": database_url,
            "CARDINAL_SECRET": secret,
            "CARDINAL_ENV": "test",
            "CARDINAL_DATA_DIR": str(data_dir),
            "CARDINAL_NAMESPACE": "fix_secret",
            "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "HOST": "127.0.0.1",
            "PORT": "18301",
            "METRICS_PORT": "0",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _rows(url: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT fingerprint FROM secret_fingerprint").fetchall()


@pytest.mark.parametrize(
    "command", [["api"], ["ingest"], ["relay"], ["project", "tally"]], ids=" ".join
)
def test_every_process_using_the_secret_refuses_another_at_start(
    migrated_url: str, tmp_path: Path, command: list[str]
) -> None:
    """The first process records its secret's fingerprint; a process of any kind that
    uses the secret (the API's voter keys, ingest's, the relay's and the workers' page
    key) then refuses to start with another, exit 2, naming what differs and what to do,
    never the secret. (Before, `cardinal api` served under it: this run would not end.)"""
    check_secret(migrated_url, FIRST)  # the process that came first
    assert _rows(migrated_url) == [(fingerprint(FIRST),)]
    refused = _cardinal(*command, database_url=migrated_url, secret=OTHER, data_dir=tmp_path)
    said = " ".join(refused.stderr.split())
    assert refused.returncode == 2, refused.stderr
    assert REFUSED in said
    assert "cardinal accept-secret" in said
    assert "Traceback" not in refused.stderr
    assert FIRST not in refused.stderr
    assert OTHER not in refused.stderr
    assert _rows(migrated_url) == [(fingerprint(FIRST),)]  # the record is left as it was


def test_processes_starting_at_once_record_one_secret(migrated_url: str) -> None:
    """Started together on a store with no record (a new store, or the first start of the
    release with migration 0013), processes with two secrets: one secret wins, every
    process with it starts, and every process with the other is refused."""
    outcomes: dict[str, list[bool]] = {FIRST: [], OTHER: []}
    together = threading.Barrier(8)

    def start(secret: str) -> None:
        together.wait()
        try:
            check_secret(migrated_url, secret)
        except SecretMismatch:
            outcomes[secret].append(False)
        else:
            outcomes[secret].append(True)

    threads = [threading.Thread(target=start, args=(s,)) for s in [FIRST, OTHER] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(tuple, outcomes.values())) == [(False,) * 4, (True,) * 4]
    (recorded,) = _rows(migrated_url)
    won = FIRST if all(outcomes[FIRST]) else OTHER
    assert recorded == (fingerprint(won),)


def test_accept_secret_records_a_new_secret_on_purpose(migrated_url: str, tmp_path: Path) -> None:
    """The threat model has the secret rotated between elections: `cardinal accept-secret`
    with the new one replaces the record; the old secret is refused from then on."""
    check_secret(migrated_url, FIRST)
    accepted = _cardinal(
        "accept-secret", database_url=migrated_url, secret=OTHER, data_dir=tmp_path
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "in place of another" in accepted.stderr
    check_secret(migrated_url, OTHER)
    with pytest.raises(SecretMismatch, match=REFUSED):
        check_secret(migrated_url, FIRST)
    again = _cardinal("accept-secret", database_url=migrated_url, secret=OTHER, data_dir=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "(it was already)" in again.stderr


def test_the_fingerprint_is_no_other_key_of_the_secret() -> None:
    from infra.broker.signing import page_key
    from infra.runtime.voters import VoterKeys

    mark = fingerprint(FIRST)
    assert mark == fingerprint(FIRST) != fingerprint(OTHER)
    assert len(mark) == 64
    assert FIRST not in mark
    assert mark != page_key(FIRST, "cardinal").hex()
    assert mark not in VoterKeys(FIRST)._mac(b"")
