"""Where the verifier's entries come from: the live store (read in one snapshot) or an
export file (no database needed), and how a run is split over two cores (the chain in this
process, the replay in another).
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import sql

from domain.election import ElectionStatus
from domain.rules import ElectionRules
from infra.audit.export_file import read_export
from infra.audit.pinned import NOTHING_PINNED, Pinned
from infra.audit.verifier import (
    Checkpoint,
    Discrepancy,
    Entry,
    FileChanged,
    Report,
    UnknownElection,
    Verifier,
    set_aside_notes,
)
from infra.store import EVENTS_TABLE
from infra.store.log import event_type
from infra.store.names import COMMAND_CONNECTION
from projections.queries import tally_snapshot
from projections.results import results_document

PAGE = 20_000
# The replay needs no links: the entries alone, a cheaper read.
ENTRIES = f"""
SELECT notification_id, uuid_send(originator_id), originator_version, topic, state, NULL,
       NULL, NULL
FROM {EVENTS_TABLE} WHERE notification_id > %(after)s ORDER BY notification_id LIMIT %(n)s
"""
# Entries and chain links side by side: a link whose entry is gone still shows up.
JOINED = f"""
SELECT coalesce(e.notification_id, c.position), uuid_send(e.originator_id),
       e.originator_version, e.topic, e.state, c.hash, c.entry_hash, uuid_send(c.election_id)
FROM (SELECT * FROM {EVENTS_TABLE} WHERE notification_id > %(after)s
      ORDER BY notification_id LIMIT %(n)s) e
FULL JOIN (SELECT * FROM audit_chain WHERE position > %(after)s
           ORDER BY position LIMIT %(n)s) c ON c.position = e.notification_id
ORDER BY 1 LIMIT %(n)s
"""


async def verify_database(
    database_url: str,
    *,
    public_keys: dict[str, bytes],
    election: UUID | None,
    validate: bool,
    progress: Any = None,
    pinned: Pinned = NOTHING_PINNED,
) -> Report:
    """Verify the live store: chain and checkpoints here, the replay of every election
    against the read models' results in a second process, at the same time.

    Both halves read one snapshot: this one's transaction exports it and the replay's
    imports it (``SET TRANSACTION SNAPSHOT``), and the transaction stays open until the
    replay is done. With a snapshot each, a change committed between the two (a read model
    edited, entries appended) was seen by one half only."""
    with _second_core() as pool:
        async with await snapshot_connection(database_url) as conn:
            # It waits for the replay idle in its transaction (the snapshot's): a server's
            # idle_in_transaction_session_timeout would end it, and the run with it.
            await conn.execute("SET LOCAL idle_in_transaction_session_timeout = 0")
            cursor = await conn.execute("SELECT pg_export_snapshot()")
            row = await cursor.fetchone()
            assert row is not None
            replaying = pool.submit(
                _replay_database, database_url, election, validate, pinned, str(row[0])
            )
            chain = await _database_half(
                conn, public_keys, election, validate, progress, pinned=pinned, chain=True
            )
            report = _combine(chain, replaying.result())
            report.notes.extend(set_aside_notes(await set_aside_records(conn)))
    return report


def verify_file(
    path: Path,
    *,
    election: UUID | None,
    validate: bool,
    public_keys: dict[str, bytes] | None = None,
    progress: Any = None,
    pinned: Pinned = NOTHING_PINNED,
    accept_format_1: bool = False,
) -> Report:
    """Verify an export with no database: chain and checkpoints here, the replay against
    the exported results in a second process, at the same time. An export of format 1
    (whose end nothing attests) fails unless ``accept_format_1``."""
    with _second_core() as pool:
        replaying = pool.submit(_replay_file, path, election, validate, pinned)
        chain = _file_half(
            path,
            election,
            validate,
            public_keys,
            progress,
            pinned=pinned,
            chain=True,
            accept_format_1=accept_format_1,
        )
        return _combine(chain, replaying.result())


Outcome = tuple[Report | None, Discrepancy | None]


@contextmanager
def _no_cyclic_collection() -> Iterator[None]:
    """A replay holds every voter's ballot: a million long-lived objects the cyclic
    collector would walk again and again. Nothing here makes cycles."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _second_core() -> ProcessPoolExecutor:
    # A fresh interpreter, not a fork: the parent holds an event loop and connections.
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def _combine(chain: Outcome, replay: Outcome) -> Report:
    """One report from the two halves, or the earlier of their discrepancies."""
    found = [d for _, d in (chain, replay) if d is not None]
    if found:
        first = min(found, key=_first_finding)
        also = [d for d in found if d is not first and d.position == first.position]
        if isinstance(first, FileChanged) and also and first.position is not None:
            # What the other half found there may be the edit's doing (a changed line read
            # as a different count): the file changed, and this is where it shows.
            raise FileChanged(
                first.position,
                f"{first.what}; at this position the other half also finds: {also[0].what}",
            )
        raise first
    chain_report, replay_report = chain[0], replay[0]
    assert chain_report is not None
    assert replay_report is not None
    chain_report.results = replay_report.results
    chain_report.elections = replay_report.elections
    chain_report.compared = replay_report.compared
    chain_report.set_aside = replay_report.set_aside
    chain_report.notes.extend(replay_report.notes)
    return chain_report


def _first_finding(found: Discrepancy) -> tuple[bool, bool, int, bool]:
    """The finding reported of the two halves': one about the log before the news that
    --election named none of it; then the earliest position (one without a position last:
    the other half's says where); at the same one, the export's signed head failing (the
    file was changed), with what the other half found there: a finding of the replay at the
    signed head's position, such as results that differ, may only be that change's doing
    (a line edited so that the replay reads it otherwise), and blaming the results would
    send the auditor after the tally when the file is what changed."""
    return (
        isinstance(found, UnknownElection),
        found.position is None,
        found.position or 0,
        not isinstance(found, FileChanged),
    )


def _replay_database(
    database_url: str, election: UUID | None, validate: bool, pinned: Pinned, snapshot: str
) -> Outcome:
    with _no_cyclic_collection():
        return asyncio.run(_replay_half(database_url, election, validate, pinned, snapshot))


async def _replay_half(
    database_url: str, election: UUID | None, validate: bool, pinned: Pinned, snapshot: str
) -> Outcome:
    async with await snapshot_connection(database_url, snapshot) as conn:
        return await _database_half(conn, {}, election, validate, None, pinned=pinned, chain=False)


async def _database_half(
    conn: psycopg.AsyncConnection[Any],
    public_keys: dict[str, bytes],
    election: UUID | None,
    validate: bool,
    progress: Any,
    *,
    pinned: Pinned,
    chain: bool,
) -> Outcome:
    try:
        checkpoints = [*await checkpoints_of(conn), *pinned.checkpoints] if chain else []
        served = {} if chain else merged(await served_results(conn), pinned.served_at())
        cursor = await conn.execute(f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}")
        row = await cursor.fetchone()
        upto = int(row[0]) if row else 0
        verifier = Verifier(
            public_keys,
            checkpoints,
            served,
            election=election,
            validate=validate,
            chain=chain,
            replay=not chain,
            listed_keys=await recorded_keys(conn) if chain else None,
            listed_in="The store's audit_keys",
        )
        if chain:
            async for entry in database_entries(conn, links=True):
                verifier.feed(entry)
                if progress is not None and verifier.report.entries % 10_000 == 0:
                    progress(entry.position, upto)
            if progress is not None:
                progress(upto, upto)
        else:  # the replay half's hot loop: rows as they come, no Entry objects
            async for rows in _pages(conn, ENTRIES):
                for position, stream, _, topic, state, *_ in rows:
                    kind = event_type(topic)
                    verifier.count(
                        position, stream if kind[0] == "B" else UUID(bytes=stream), kind, state
                    )
        return verifier.finish(), None
    except Discrepancy as discrepancy:
        return None, discrepancy


def _replay_file(path: Path, election: UUID | None, validate: bool, pinned: Pinned) -> Outcome:
    with _no_cyclic_collection():
        return _file_half(path, election, validate, None, None, pinned=pinned, chain=False)


def _file_half(
    path: Path,
    election: UUID | None,
    validate: bool,
    public_keys: dict[str, bytes] | None,
    progress: Any,
    *,
    pinned: Pinned,
    chain: bool,
    accept_format_1: bool = True,
) -> Outcome:
    try:
        return read_export(
            path,
            election,
            validate,
            public_keys,
            progress,
            chain=chain,
            checkpoints=list(pinned.checkpoints),
            served=pinned.served_at(),
            accept_format_1=accept_format_1,
        ), None
    except Discrepancy as discrepancy:
        return None, discrepancy


def merged(
    served: dict[int, list[dict[str, Any]]], more: dict[int, list[dict[str, Any]]]
) -> dict[int, list[dict[str, Any]]]:
    """Served results by position, with more of them."""
    together = {position: list(documents) for position, documents in served.items()}
    for position, documents in more.items():
        together.setdefault(position, []).extend(documents)
    return together


async def snapshot_connection(
    database_url: str, snapshot: str | None = None
) -> psycopg.AsyncConnection[Any]:
    """A read-only connection whose reads all see one snapshot of the store (``snapshot``:
    the one another transaction exported with ``pg_export_snapshot()``).

    The log, the chain, the checkpoints and the read models keep moving while an audit
    reads them page by page; in one REPEATABLE READ transaction, every page agrees with
    the others (no entry sealed on page 5 that was unsealed on page 4)."""
    conn = await psycopg.AsyncConnection.connect(database_url, **COMMAND_CONNECTION)
    await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
    await conn.set_read_only(True)
    if snapshot is not None:
        try:  # (the transaction's first statement, as it must be)
            await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        except BaseException:
            await conn.close()
            raise
    return conn


async def database_entries(
    conn: psycopg.AsyncConnection[Any], *, links: bool = True
) -> AsyncIterator[Entry]:
    """The log's entries (beside the chain's links, with ``links``) in position order.

    The next page is asked for before this one is worked through, so that PostgreSQL
    reads it on the other core meanwhile.
    """
    async for rows in _pages(conn, JOINED if links else ENTRIES):
        for position, stream, version, topic, state, link, receipt, election in rows:
            yield Entry(
                position,
                bytes(stream) if stream is not None else b"",
                version or 0,
                event_type(topic) if topic else "",
                bytes(state) if state is not None else b"",
                bytes(link) if link is not None else None,
                None if receipt is None else (bytes(receipt), election and bytes(election)),
            )


async def _pages(
    conn: psycopg.AsyncConnection[Any], query: str
) -> AsyncIterator[list[tuple[Any, ...]]]:
    """The query's pages in order, each asked for before the previous one is worked
    through."""
    pending = asyncio.ensure_future(_page(conn, query, 0))
    while True:
        rows = await pending
        if len(rows) == PAGE:
            pending = asyncio.ensure_future(_page(conn, query, rows[-1][0]))
            await asyncio.sleep(0)  # let the query go out before the work starts
        yield rows
        if len(rows) < PAGE:
            return


async def _page(
    conn: psycopg.AsyncConnection[Any], query: str, after: int
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(query, {"after": after, "n": PAGE}, binary=True)
    return await cursor.fetchall()


async def checkpoints_of(conn: psycopg.AsyncConnection[Any]) -> list[Checkpoint]:
    cursor = await conn.execute(
        "SELECT id, position, head_hash, key_id, signature FROM audit_checkpoints ORDER BY id"
    )
    return [
        Checkpoint(identifier, position, bytes(head), key, bytes(signature))
        for identifier, position, head, key, signature in await cursor.fetchall()
    ]


async def recorded_keys(conn: psycopg.AsyncConnection[Any]) -> dict[str, bytes | None]:
    """The public keys the sealers recorded, by key id (hints: never trusted); none in a
    store from before migration 0012 (a hint is worth no failure)."""
    cursor = await conn.execute("SELECT to_regclass('audit_keys') IS NOT NULL")
    row = await cursor.fetchone()
    if row is None or not row[0]:
        return {}
    cursor = await conn.execute("SELECT key_id, public_key FROM audit_keys")
    return {str(key): bytes(public) for key, public in await cursor.fetchall()}


async def served_results(conn: psycopg.AsyncConnection[Any]) -> dict[int, list[dict[str, Any]]]:
    """Every election's results as the API serves them, by the position they reflect:
    exact (as auditors, and everyone after the close, see them) and, for an open election
    counted in steps, as last published (as everyone else sees them)."""
    served: dict[int, list[dict[str, Any]]] = {}
    cursor = await conn.execute("SELECT election_id FROM read_models.tally_elections")
    for (election_id,) in await cursor.fetchall():
        snapshot = await tally_snapshot(conn, election_id)
        if snapshot.rules is None:
            continue
        rules = ElectionRules.from_json(snapshot.rules)
        for exact in (True, False):
            document = results_document(
                election_id, snapshot, rules, status=ElectionStatus.OPEN, exact=exact
            )
            if exact or document["stepped"]:
                served.setdefault(document["position"], []).append(
                    orjson.loads(orjson.dumps(document))
                )
    return served


async def set_aside_records(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """The entries each projection's active version has set aside."""
    cursor = await conn.execute(
        "SELECT s.name, s.position, s.election_id, s.type, s.reason FROM projection_set_aside s "
        "JOIN projections r ON r.name = s.name AND r.active_version = s.version "
        "ORDER BY s.position, s.name"
    )
    return [
        {
            "projection": name,
            "position": position,
            "election_id": str(election) if election else None,
            "type": kind,
            "reason": reason,
        }
        for name, position, election, kind, reason in await cursor.fetchall()
    ]
