"""The store remembers which CARDINAL_SECRET it is used with, and refuses another.

Voter keys are HMACs under CARDINAL_SECRET (infra/runtime/voters.py): a process started
with another secret on the same store (a restore into a deployment whose secret differs, a
development data folder whose credentials.json was lost) refuses every voter token issued
before, and lets every client voter cast a second ballot. Nothing in the store said so.
Now the store keeps a fingerprint of the secret (migration 0013), written by the first
process that starts against it, and every process that uses the secret (serve, api,
ingest, relay, project with a broker) compares its own at start and refuses to run on a
difference. `cardinal accept-secret` records a new secret's, for a deliberate change
between elections.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import psycopg

from infra.runtime.settings import SettingsError
from infra.store.names import COMMAND_CONNECTION

# The fingerprint is an HMAC of LABEL under a key of the secret's for this purpose only:
# it is no voter key, page key or rate-limit key, and, the secret being 32+ characters,
# it does not help guess the secret.
PURPOSE = b"cardinal-vote/secret-fingerprint/v1"
LABEL = b"the CARDINAL_SECRET of this store"


class SecretMismatch(SettingsError):
    """CARDINAL_SECRET is not the one the store's voter keys were made with."""


def fingerprint(secret: str) -> str:
    key = hmac.new(secret.encode(), PURPOSE, hashlib.sha256).digest()
    return hmac.new(key, LABEL, hashlib.sha256).hexdigest()


def check_secret(database_url: str, secret: str) -> None:
    """Record ``secret``'s fingerprint if the store has none yet (the first process of a
    new store, or of the first release with migration 0013); refuse, naming what to do,
    if the store's is another secret's."""
    mine = fingerprint(secret)
    with psycopg.connect(database_url, autocommit=True, **COMMAND_CONNECTION) as conn:
        # One row: of processes starting at once, one inserts and the others wait for its
        # commit, insert nothing, and read its row.
        conn.execute(
            "INSERT INTO secret_fingerprint (fingerprint) VALUES (%s) ON CONFLICT DO NOTHING",
            (mine,),
        )
        row = conn.execute("SELECT fingerprint, recorded_at FROM secret_fingerprint").fetchone()
    assert row is not None
    recorded, since = str(row[0]), row[1]
    if not hmac.compare_digest(recorded, mine):
        raise SecretMismatch(
            "CARDINAL_SECRET is not the secret this database is used with (its fingerprint, "
            f"recorded in the database {_day(since)}, differs): with it every voter token "
            "issued would be refused and every client voter could vote again. Start every "
            "process with the database's CARDINAL_SECRET (a restored database needs the "
            'secret of the deployment it was dumped from; in development, the "secret" of '
            "CARDINAL_DATA_DIR/credentials.json). To change the secret on purpose, between "
            "elections: `cardinal accept-secret` with the new one (docs/upgrading.md)"
        )


def accept_secret(database_url: str, secret: str) -> str:
    """Record ``secret``'s fingerprint in place of the store's; what the store held before:
    ``"none"``, ``"this"`` (this secret's) or ``"another"``."""
    mine = fingerprint(secret)
    with (
        psycopg.connect(database_url, autocommit=True, **COMMAND_CONNECTION) as conn,
        conn.transaction(),
    ):
        row = conn.execute("SELECT fingerprint FROM secret_fingerprint FOR UPDATE").fetchone()
        conn.execute(
            "INSERT INTO secret_fingerprint (fingerprint) VALUES (%s) ON CONFLICT (only_row) "
            "DO UPDATE SET fingerprint = excluded.fingerprint, recorded_at = now()",
            (mine,),
        )
    if row is None:
        return "none"
    return "this" if hmac.compare_digest(str(row[0]), mine) else "another"


def _day(when: object) -> str:
    if not isinstance(when, datetime):
        return "earlier"
    return f"on {when.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
