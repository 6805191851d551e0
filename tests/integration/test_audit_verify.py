"""`cardinal audit verify` finds every kind of tampering, at its exact position."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import random
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from domain.recount import Recount
from domain.rules import ElectionRules
from domain.voter import Voter
from infra.audit import records
from infra.audit import sources as verify_module
from infra.audit.chain import GENESIS, Signer, chain_hash, entry_hash
from infra.audit.export import export
from infra.audit.pinned import Pinned, PinnedError, earlier_checkpoints, pinned, saved_results
from infra.audit.sealer import SEALER_LOCK, ChainAltered, Sealer
from infra.audit.sources import (
    database_entries,
    served_results,
    snapshot_connection,
    verify_database,
    verify_file,
)
from infra.audit.verifier import Discrepancy, Entry, FileChanged, UnknownElection
from infra.store import open_application
from infra.store.log import event_type
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from projections import PROJECTIONS, projection
from projections.queries import tally_snapshot
from projections.results import recounted_snapshot, results_document
from projections.runtime import ProjectionRunner
from tests.databases import SERVER_URL, create_database, drop_database, lock_holder
from tests.integration.test_projection_runtime import _fill
from tests.servers import TEST_AUDIT_KEY

ROOT = Path(__file__).resolve().parents[2]


async def catch_up_every_projection(url: str) -> None:
    """Every projection prepared and caught up with the log (as `cardinal project` would)."""
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
    await pool.open()
    try:
        for name in PROJECTIONS:
            runner = ProjectionRunner(projection(name), pool)
            await runner.prepare()
            await runner.catch_up()
    finally:
        await pool.close()


SIGNER = Signer(TEST_AUDIT_KEY)
KEYS = {SIGNER.key_id: SIGNER.public_key}


@pytest.fixture(scope="module")
async def sealed_template() -> AsyncIterator[str]:
    """A database with two closed elections' worth of ballots, sealed, checkpointed and
    projected; each test gets a copy of it."""
    url = create_database("cardinal_audit_template")
    migrate(url)
    # Sealed in two rounds of small pages, as a live sealer does: the second round starts
    # from the chain tip the sealer remembers, not from one read back.
    sealer = Sealer(url, SIGNER, page_size=64)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await _fill(url, random.Random(21), ballots=300)
        first_round = await sealer.seal_pending(conn)
        await _fill(url, random.Random(22), ballots=200)
        second_round = await sealer.seal_pending(conn)
        assert first_round > 64
        assert second_round > 64
        assert await sealer.seal_pending(conn) == 0
        await sealer.checkpoint_head(conn, "test")
    await catch_up_every_projection(url)
    yield url
    drop_database(url)


@pytest.fixture
def store(sealed_template: str) -> Iterator[str]:
    template = psycopg.conninfo.conninfo_to_dict(sealed_template)["dbname"]
    name = f"cardinal_audit_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(str(template))
            )
        )
    url = psycopg.conninfo.make_conninfo(SERVER_URL, dbname=name)
    yield url
    drop_database(url)


def _tamper(url: str, statement: str, *params: object) -> None:
    """Change the log behind the application's back, as a database superuser could."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE cardinal_events DISABLE TRIGGER USER")
        conn.execute(statement, params)
        conn.execute("ALTER TABLE cardinal_events ENABLE TRIGGER USER")


def _rewrite_entry(url: str, position: int) -> None:
    """Change an entry's payload in the store, as whoever can write to the database could."""
    _tamper(
        url,
        "UPDATE cardinal_events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
        '\'"request_key":\', \'"request_key":"x","was":\'), \'UTF8\') '
        "WHERE notification_id = %s",
        position,
    )


def _positions(url: str, topic_suffix: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT notification_id FROM cardinal_events WHERE topic LIKE %s "
            "ORDER BY notification_id",
            (f"%{topic_suffix}",),
        ).fetchall()
    return [int(row[0]) for row in rows]


async def _verify(url: str) -> None:
    await verify_database(url, public_keys=KEYS, election=None, validate=True)


async def test_an_untouched_store_verifies_and_so_does_its_export(
    store: str, tmp_path: Path
) -> None:
    report = await verify_database(store, public_keys=KEYS, election=None, validate=True)
    assert report.entries > 500
    assert report.sealed == report.entries
    assert report.checkpoints >= 3  # two closes and the head
    assert report.results == 2
    exported = tmp_path / "audit.ndjson"
    assert await export(store, exported, SIGNER) == report.entries
    from_file = verify_file(exported, election=None, validate=True)
    assert (from_file.entries, from_file.results) == (report.entries, report.results)
    for verified in (report, from_file):  # (for the summary: per election)
        assert verified.elections == 2
        assert sorted(verified.compared.values()) == [1, 1]
        assert verified.keys == {SIGNER.key_id: verified.checkpoints}


async def test_elections_under_either_voter_id_rule_verify(store: str) -> None:
    """The template's elections pin ``"voter_ids": "nfc"`` in their chained Created event;
    one stored before the rule (no ``voter_ids``: exact comparison) replays just the same."""
    created = ElectionRules.create(
        options=[{"id": i, "label": i} for i in "ab"], method="plurality"
    )
    assert created.to_json()["voter_ids"] == "nfc"
    stored = {k: v for k, v in created.to_json().items() if k != "voter_ids"}
    app = open_application(store)
    writer = GroupCommitWriter(app, store)
    app.writer = writer
    writer.start()
    try:
        election_id = (await app.create_election("Before", ElectionRules.from_json(stored))).id
        await app.open_election(election_id)
        for n, choice in enumerate("abba"):
            await app.cast_ballot(election_id, Voter(f"e{n}", f"e{n}"), {"choice": choice}, None)
        await app.close_election(election_id)
    finally:
        await writer.stop()
        app.close()
    async with await psycopg.AsyncConnection.connect(store, autocommit=True) as conn:
        sealer = Sealer(store, SIGNER, page_size=64)
        assert await sealer.seal_pending(conn) > 0
        await sealer.checkpoint_head(conn, "test")
    await catch_up_every_projection(store)
    report = await verify_database(store, public_keys=KEYS, election=None, validate=True)
    assert report.results == 3
    with psycopg.connect(store) as conn:
        rules = [
            orjson.loads(bytes(row[0]))["rules"]
            for row in conn.execute(
                "SELECT state FROM cardinal_events WHERE topic LIKE '%Created'"
            ).fetchall()
        ]
    assert sorted(r.get("voter_ids", "exact") for r in rules) == ["exact", "nfc", "nfc"]


async def test_an_altered_payload_is_found_at_its_position(store: str) -> None:
    target = _positions(store, "Ballot.Cast")[40]
    _tamper(
        store,
        "UPDATE cardinal_events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
        "'\"ranking\":[', '\"ranking\":[\"d\",'), 'UTF8') WHERE notification_id = %s",
        target,
    )
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == target
    assert "changed" in found.value.what


async def test_a_deleted_entry_is_found_at_its_position(store: str) -> None:
    target = _positions(store, "Ballot.Cast")[25]
    _tamper(store, "DELETE FROM cardinal_events WHERE notification_id = %s", target)
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == target
    assert "deleted" in found.value.what


async def test_two_reordered_entries_are_found_at_the_first(store: str) -> None:
    casts = _positions(store, "Ballot.Cast")
    first, second = casts[10], casts[30]
    _tamper(
        store,
        "UPDATE cardinal_events e SET state = o.state "
        "FROM cardinal_events o WHERE (e.notification_id, o.notification_id) IN "
        "((%s, %s), (%s, %s))",
        first,
        second,
        second,
        first,
    )
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == first


async def test_a_forged_checkpoint_is_found(store: str) -> None:
    target = _positions(store, "Ballot.Cast")[50]
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_checkpoints (position, head_hash, key_id, signature, reason) "
            "VALUES (%s, %s, %s, %s, 'forged')",
            (target, bytes(32), SIGNER.key_id, bytes(64)),
        )
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == target
    assert "signature does not verify" in found.value.what


async def test_a_validly_signed_checkpoint_of_another_head_is_found(store: str) -> None:
    target = _positions(store, "Ballot.Cast")[60]
    wrong_head = bytes(range(32))
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO audit_checkpoints (position, head_hash, key_id, signature, reason) "
            "VALUES (%s, %s, %s, %s, 'forged')",
            (target, wrong_head, SIGNER.key_id, SIGNER.sign(target, wrong_head)),
        )
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == target
    assert "chain there is different" in found.value.what


async def test_a_deleted_checkpoint_of_an_election_close_is_found(
    store: str, tmp_path: Path
) -> None:
    """Also with an earlier export that holds it (--previous): its copy satisfied the
    check, so giving more evidence turned a failing run into a pass (audit review, low)."""
    earlier = tmp_path / "earlier.ndjson"
    await export(store, earlier, SIGNER)
    close = _positions(store, "Election.Closed")[0]
    with psycopg.connect(store, autocommit=True) as conn:
        deleted = conn.execute("DELETE FROM audit_checkpoints WHERE position = %s", (close,))
        assert deleted.rowcount == 1
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == close
    assert "checkpoint of the chain head at its close is missing" in found.value.what
    pins = Pinned(tuple(earlier_checkpoints(earlier)))
    assert close in {checkpoint.position for checkpoint in pins.checkpoints}
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, pins)
    assert found.value.position == close
    assert "checkpoint of the chain head at its close is missing" in found.value.what
    later = tmp_path / "later.ndjson"  # an export of the store as it is now: the same
    await export(store, later, SIGNER)
    with pytest.raises(Discrepancy) as found:
        verify_file(later, election=None, validate=True, pinned=pins)
    assert found.value.position == close
    assert "checkpoint of the chain head at its close is missing" in found.value.what


async def test_an_audit_reads_one_snapshot_while_the_sealer_works(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages read while the sealer links the tail agree with each other: none of them
    shows entries sealed after ones an earlier page showed unsealed."""
    await _fill(store, random.Random(23), ballots=60)  # an unsealed tail
    monkeypatch.setattr(verify_module, "PAGE", 10)
    seen: list[Entry] = []
    tail_sealed = False
    async with await snapshot_connection(store) as conn:
        async for entry in database_entries(conn):
            seen.append(entry)
            if entry.stored_hash is None and not tail_sealed:
                # The first unsealed entry read: now the sealer links the whole tail.
                async with await psycopg.AsyncConnection.connect(store, autocommit=True) as w:
                    assert await Sealer(store, SIGNER).seal_pending(w) > 30
                tail_sealed = True
    sealed = [e.stored_hash is not None for e in seen]
    first_unsealed = sealed.index(False)
    assert not any(sealed[first_unsealed:])
    assert len(sealed) - first_unsealed > 30


@pytest.mark.parametrize(
    "state",
    [b"{}", b'{"election_id": 5}', b'{"election_id": {"a": 1}}', b'{"election_id": "x"}', b"[]"],
)
async def test_an_entry_naming_no_election_is_sealed_and_then_reported(
    store: str, state: bytes
) -> None:
    """One bad entry (written around the application) must not stop the sealer: it is
    sealed like any other, filed under no election, and verify names it."""
    with psycopg.connect(store, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
            "VALUES (gen_random_uuid(), 1, 'domain.ballot:Ballot.Cast', %s) "
            "RETURNING notification_id",
            (state,),
        ).fetchone()
    assert row is not None
    async with await psycopg.AsyncConnection.connect(store, autocommit=True) as conn:
        assert await Sealer(store, SIGNER).seal_pending(conn) == 1
    with psycopg.connect(store) as conn:
        filed = conn.execute(
            "SELECT election_id FROM audit_chain WHERE position = %s", (row[0],)
        ).fetchone()
    assert filed == (None,)
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == row[0]
    assert "cannot be replayed" in found.value.what
    # Without --strict, it is left out of the count, as the projections leave it out,
    # and reported.
    report = await verify_database(store, public_keys=KEYS, election=None, validate=False)
    assert report.set_aside == 1
    assert any(f"set aside position {row[0]}" in note for note in report.notes)


async def test_a_read_model_edited_by_hand_is_found(store: str) -> None:
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute(
            "UPDATE read_models.tally_counters SET value = value + 1 "
            "WHERE key = 'n' AND election_id = (SELECT min(election_id::text)::uuid "
            "FROM read_models.tally_counters)"
        )
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert "served results differ from the replay in 'ballots'" in found.value.what


def test_verify_file_runs_with_no_database_and_fails_on_an_edited_export(
    store: str, tmp_path: Path
) -> None:
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CARDINAL_AUDIT_KEY")}
    env["PGHOST"] = "/nonexistent"  # no database within reach
    command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--file", str(exported)]
    clean = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "everything checks out" in clean.stdout

    lines = exported.read_bytes().splitlines()
    edited = []
    target = None
    for line in lines:
        document = orjson.loads(line)
        if target is None and document.get("type") == "BallotCast":
            document["data"]["request_key"] = "tampered"
            target = document["position"]
        edited.append(orjson.dumps(document))
    exported.write_bytes(b"\n".join(edited) + b"\n")
    tampered = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert tampered.returncode == 1
    assert f"FAILED at position {target}" in tampered.stdout


def test_a_vote_edited_to_name_no_option_is_a_finding_not_a_traceback(
    store: str, tmp_path: Path
) -> None:
    """Without --strict the replay trusts stored votes; one edited to name an option its
    election lacks crashed the replay's process, and verify printed a traceback instead
    of the position (review helper-74)."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    # The last ballot entry before the first close: its voter's vote when the count ends.
    closed = next(n for n, d in enumerate(documents) if d.get("type") == "ElectionClosed")
    ballot = next(
        d for d in reversed(documents[:closed]) if d.get("type") in ("BallotCast", "BallotRevised")
    )
    data = ballot["data"]
    assert isinstance(data, dict)
    data["vote"] = {"ranking": ["zz"]}
    _write(exported, documents)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CARDINAL_AUDIT_KEY")}
    command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--file", str(exported)]
    found = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert found.returncode == 1
    assert "Traceback" not in found.stdout + found.stderr, found.stderr[-2000:]
    assert f"FAILED at position {ballot['position']}" in found.stdout, found.stdout[-2000:]


def test_verify_file_reports_a_damaged_or_cut_short_export_as_a_finding(
    store: str, tmp_path: Path
) -> None:
    """An export edited into lines that are not an export's, or cut short on a line
    boundary (an interrupted copy), is a finding with its line, not a traceback."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    lines = exported.read_bytes().splitlines()
    documents = [orjson.loads(line) for line in lines]
    events = [n for n, d in enumerate(documents) if d.get("kind") == "event"]

    def verify(edited: list[bytes]) -> str:
        exported.write_bytes(b"\n".join(edited) + b"\n")
        command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--file", str(exported)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stdout + done.stderr
        return " ".join(done.stdout.split())

    no_position = {k: v for k, v in documents[events[0]].items() if k != "position"}
    damaged = [*lines[: events[0]], orjson.dumps(no_position), *lines[events[0] + 1 :]]
    said = verify(damaged)
    # (a line, not a position: one sentence, and no Python repr in it)
    assert f"FAILED: line {events[0] + 1} of" in said
    assert "is not an export line as written: it has no 'position'" in said
    assert "is not a JSON object" in verify([lines[0], b"[1, 2]", *lines[1:]])
    last = documents[events[-3]]["position"]
    # Its last two entries gone, and with them what names them (results, a checkpoint).
    cut = [
        line
        for n, (line, document) in enumerate(zip(lines, documents, strict=True))
        if n not in events[-2:]
        and document.get("kind") != "result"
        and not (document.get("kind") == "checkpoint" and document["position"] > last)
    ]
    found = verify(cut)
    assert f"FAILED at position {last}" in found
    assert "it is cut short" in found


async def test_an_elections_unsealed_entries_are_read_page_by_page(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the chain, the log is read a page at a time for as long as it takes: a sealer
    behind by more than a page (another election's bulk import, say) once cut an
    election's entries short, and a recount then left ballots out."""
    monkeypatch.setattr(records, "TAIL_PAGE", 3)
    election, other = uuid.uuid4(), uuid.uuid4()
    written = []
    with psycopg.connect(store, autocommit=True) as conn:
        for n in range(12):
            named = election if n % 4 == 3 else other  # 3 of 12, far apart
            row = conn.execute(
                "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
                "VALUES (gen_random_uuid(), 1, 'domain.ballot:Ballot.Cast', %s) "
                "RETURNING notification_id",
                (orjson.dumps({"election_id": str(named), "vote": {}}),),
            ).fetchone()
            assert row is not None
            if named == election:
                written.append(row[0])
    async with await psycopg.AsyncConnection.connect(store) as conn:
        found = [e.position async for e in records.election_entries(conn, election, written[-1])]
    assert found == written


# What an audit must not let through: an export whose two halves read different payloads,
# a close nobody signed, a store rewritten and signed again, a chain row that misfiles an
# entry, and served results that leave out or misstate an election.


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _write(path: Path, documents: list[dict[str, object]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in documents))


def _write_signed(path: Path, documents: list[dict[str, object]]) -> None:
    """As an exporter holding the key would write these lines: its signed head over them
    (for a test of what the verifier finds inside a file whose signature holds)."""
    body = b"".join(orjson.dumps(d) + b"\n" for d in documents[:-1])
    last = dict(documents[-1])
    assert last["kind"] == "export_head"
    signature = SIGNER.sign_export(
        int(str(last["position"])),
        bytes.fromhex(str(last["head_hash"])),
        hashlib.sha256(body).digest(),
    )
    path.write_bytes(body + orjson.dumps({**last, "signature": signature.hex()}) + b"\n")


async def _verify_pinned(url: str, pinned: Pinned) -> None:
    await verify_database(url, public_keys=KEYS, election=None, validate=True, pinned=pinned)


def test_an_export_of_results_a_rebuild_mended_says_to_verify_a_new_export(
    store: str, tmp_path: Path
) -> None:
    """Results an earlier version served with entries set aside (score and STAR before
    5756f8d) fail in an export kept from then, after the rebuild too: the finding pointed
    to the rebuild alone, which mends the database, not the file (upgrade review 2)."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    index = next(i for i, d in enumerate(documents) if d.get("kind") == "result")
    result = documents[index]
    documents[index] = {**result, "ballots": int(str(result["ballots"])) - 1, "set_aside": 1}
    _write_signed(exported, documents)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "the tally set aside 1 of its entries" in found.value.what
    assert "keep it as the record, and verify a new export" in found.value.what


def test_an_export_line_cannot_show_the_chain_one_payload_and_the_count_another(
    store: str, tmp_path: Path
) -> None:
    """The chain hashed state_hex while the replay counted data: a vote changed in data,
    the original kept in state_hex, passed."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    ballot = next(d for d in documents if d.get("type") == "BallotCast")
    data = ballot["data"]
    assert isinstance(data, dict)
    ballot["state_hex"] = orjson.dumps(data, option=orjson.OPT_SORT_KEYS).hex()
    data["request_key"] = "changed"
    _write(exported, documents)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "both data and state_hex" in found.value.what


def test_a_close_that_is_not_signed_is_not_attested(store: str, tmp_path: Path) -> None:
    """An export whose tail from a close on is unsealed (hashes nulled, the close's
    checkpoint dropped) passed with a note: that tail can say anything."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    close = _positions(store, "Election.Closed")[-1]
    documents = [
        d
        for d in _lines(exported)
        if not (d.get("kind") == "checkpoint" and int(str(d["position"])) >= close)
    ]
    for document in documents:
        if document.get("kind") == "event" and int(str(document["position"])) >= close:
            document["hash"] = None
    _write_signed(exported, documents)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert found.value.position == close
    assert "closed here, but the close is not sealed and signed yet" in found.value.what


async def test_a_store_rewritten_and_signed_again_fails_against_an_earlier_export(
    store: str, tmp_path: Path
) -> None:
    """Someone with the database rewrites a ballot before a close, deletes the chain and
    checkpoints from there, and the sealer signs the new history with the real key: the
    store verifies on its own, but not against the checkpoints of an earlier export."""
    earlier = tmp_path / "earlier.ndjson"
    await export(store, earlier, SIGNER)
    close = _positions(store, "Election.Closed")[-1]
    ballot = max(p for p in _positions(store, "Ballot.Cast") if p < close)
    _rewrite_entry(store, ballot)
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_chain WHERE position >= %s", (ballot,))
        sealer = Sealer(store, SIGNER)
        async with await psycopg.AsyncConnection.connect(store, autocommit=True) as live:
            # The chain lost links it had signed: the sealer refuses to sign over them ...
            assert await sealer.lost_links(live) is not None
            conn.execute("DELETE FROM audit_checkpoints WHERE position >= %s", (ballot,))
            # ... unless the checkpoints are gone too; then only an earlier copy shows it.
            assert await sealer.lost_links(live) is None
            assert await sealer.seal_pending(live) > 0
            await sealer.checkpoint_head(live, "test")
    await _verify(store)
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned(tuple(earlier_checkpoints(earlier))))
    assert f"from the earlier export {earlier}" in found.value.what
    assert "the chain there is different" in found.value.what


async def test_a_sealer_whose_links_are_deleted_behind_it_stops_sealing_and_signing(
    store: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Links (and their checkpoints) deleted under a running sealer: it signed the shortened
    head at the next periodic checkpoint, then linked the next entry onto the tip it
    remembered, and signed a chain with a hole. It compares that tip with the table's
    before each round, and stops instead, saying where."""
    sealer = Sealer(store, SIGNER)
    ballots = _positions(store, "Ballot.Cast")
    gap = ballots[len(ballots) // 2]
    async with await psycopg.AsyncConnection.connect(store, autocommit=True) as live:
        assert await sealer.seal_pending(live) == 0  # (it knows the chain's tip now)
        head = sealer.position
        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute("DELETE FROM audit_checkpoints WHERE position >= %s", (gap,))
            conn.execute("DELETE FROM audit_chain WHERE position >= %s", (gap,))
            left = conn.execute("SELECT max(position) FROM audit_chain").fetchone()
            signed = conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone()
        assert left is not None
        with caplog.at_level("ERROR", logger="infra.audit.sealer"), pytest.raises(ChainAltered):
            await sealer.checkpoint_head(live, "periodic")
        said = caplog.text
        assert f"the chain's last link is at position {left[0]}" in said
        assert f"this sealer linked position {head} last: links were deleted" in said
        assert "Not sealing or signing" in said
        assert sealer.halted is not None
        assert REGISTRY.get_sample_value("cardinal_sealer_halted") == 1  # (an alert pages)
        await _fill(store, random.Random(23), ballots=5)  # the log goes on
        with pytest.raises(ChainAltered):
            await sealer.seal_pending(live)
        with pytest.raises(ChainAltered):
            await sealer.checkpoint_head(live, "periodic")
    with psycopg.connect(store) as conn:
        assert conn.execute("SELECT max(position) FROM audit_chain").fetchone() == left
        assert conn.execute("SELECT count(*) FROM audit_checkpoints").fetchone() == signed


async def test_links_deleted_under_a_signed_checkpoint_are_deleted_not_unsealed(
    store: str, tmp_path: Path
) -> None:
    """Links deleted from a ballot on, before the last close: verify said the close was
    "not sealed and signed yet ... verify again", though a checkpoint signed past them
    shows they had been sealed (they would never come): it says they were deleted, at the
    first of them (review: the sealer sealing over a hole)."""
    earlier = tmp_path / "earlier.ndjson"
    await export(store, earlier, SIGNER)
    close = _positions(store, "Election.Closed")[-1]
    gap = max(p for p in _positions(store, "Ballot.Cast") if p < close)
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_chain WHERE position >= %s", (gap,))
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == gap
    assert "their links were deleted" in found.value.what
    assert "not sealed" not in found.value.what
    # The checkpoints gone too, an earlier export's pin it.
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_checkpoints WHERE position >= %s", (gap,))
    with pytest.raises(Discrepancy) as found:
        await _verify(store)  # alone, the store cannot tell: not sealed yet, or deleted
    assert found.value.position == close
    assert f"the entries from position {gap:,} on never get their links" in found.value.what
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned(tuple(earlier_checkpoints(earlier))))
    assert found.value.position == gap
    assert f"(from the earlier export {earlier}) signs the chain" in found.value.what
    assert "their links were deleted" in found.value.what


async def test_a_running_sealer_halts_on_deleted_links_and_signs_nothing_after(
    store: str,
) -> None:
    """The scenario of the review, with the sealer running as deployed: links deleted
    under it, the periodic checkpoint due and the log growing; it signs nothing more."""
    sealer = Sealer(store, SIGNER, checkpoint_interval=0.1, poll_interval=0.1, linger=0.01)
    running = asyncio.create_task(sealer.run())
    try:
        for _ in range(100):
            if sealer.position:
                break
            await asyncio.sleep(0.05)
        assert sealer.position
        gap = _positions(store, "Ballot.Cast")[10]
        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute("DELETE FROM audit_checkpoints WHERE position >= %s", (gap,))
            conn.execute("DELETE FROM audit_chain WHERE position >= %s", (gap,))
        await _fill(store, random.Random(24), ballots=5)
        for _ in range(100):
            if sealer.halted:
                break
            await asyncio.sleep(0.05)
        assert sealer.halted is not None
        await asyncio.sleep(0.5)  # (rounds and periodic checkpoints that would have come)
        with psycopg.connect(store) as conn:
            linked = conn.execute("SELECT max(position) FROM audit_chain").fetchone()
            signed = conn.execute(
                "SELECT coalesce(max(position), 0) FROM audit_checkpoints"
            ).fetchone()
        assert linked is not None
        assert linked[0] < gap
        assert signed is not None
        assert signed[0] < gap
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_sealer_idle_from_an_empty_log_signs_on_without_halting(
    fresh_database_url: str,
) -> None:
    """On an empty log the sealer remembers the chain's tip as (0, genesis), and its first
    periodic checkpoint compared that with "no link": it halted for good, 30 s after the
    first start of a new deployment (`make run` left idle), and sealed nothing after."""
    url = fresh_database_url
    migrate(url)
    sealer = Sealer(url, SIGNER)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as live:
        assert await sealer.seal_pending(live) == 0
        await sealer.checkpoint_head(live, "periodic")
        assert sealer.halted is None
        await _fill(url, random.Random(31), ballots=3)
        assert await sealer.seal_pending(live) > 0
        await sealer.checkpoint_head(live, "periodic")
    assert sealer.halted is None


async def test_a_sealer_whose_last_link_is_rewritten_stops(store: str) -> None:
    sealer = Sealer(store, SIGNER)
    async with await psycopg.AsyncConnection.connect(store, autocommit=True) as live:
        await sealer.seal_pending(live)
        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute(
                "UPDATE audit_chain SET hash = %s WHERE position = %s",
                (bytes(32), sealer.position),
            )
        with pytest.raises(ChainAltered, match="links were rewritten"):
            await sealer.seal_pending(live)


async def test_saved_results_and_their_final_head_are_checked(store: str, tmp_path: Path) -> None:
    async with await snapshot_connection(store) as conn:
        served = [d for documents in (await served_results(conn)).values() for d in documents]
    saved = tmp_path / "saved.json"
    saved.write_bytes(orjson.dumps(served))
    documents, heads = saved_results(saved)
    await _verify_pinned(store, Pinned(tuple(heads), tuple(documents)))
    wrong = [{**served[0], "ballots": int(served[0]["ballots"]) + 1}]
    saved.write_bytes(orjson.dumps(wrong))
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned((), tuple(saved_results(saved)[0])))
    assert "in 'ballots'" in found.value.what
    # A results document as the API serves it after the close, with its final chain head.
    close = _positions(store, "Election.Closed")[0]
    with psycopg.connect(store) as conn:
        row = conn.execute(
            "SELECT id, head_hash, key_id, signature FROM audit_checkpoints WHERE position = %s",
            (close,),
        ).fetchone()
    assert row is not None
    final = next(d for d in served if d["closed_at_position"] == close)
    head = {
        "position": close,
        "hash": bytes(row[1]).hex(),
        "checkpoint_id": row[0],
        "key_id": row[2],
        "signature": bytes(row[3]).hex(),
    }
    forged = {**head, "hash": bytes(32).hex()}
    saved.write_bytes(orjson.dumps([{**final, "final_chain_head": head}]))
    await _verify_pinned(store, Pinned(tuple(saved_results(saved)[1])))
    saved.write_bytes(orjson.dumps([{**final, "final_chain_head": forged}]))
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned(tuple(saved_results(saved)[1])))
    assert "the signature does not verify" in found.value.what
    # From the command line: a file that is not results is one clear line.
    saved.write_text('{"hello": 1}')
    command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--served", str(saved)]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2
    assert "is not a results document as the API serves it" in " ".join(done.stdout.split())
    assert "Traceback" not in done.stdout + done.stderr


async def test_a_chain_row_that_misfiles_its_entry_is_found(store: str) -> None:
    """A receipt is looked up by the chain row's entry digest, and an election's audit
    read follows the row's election: verify checked neither."""
    ballot = _positions(store, "Ballot.Cast")[3]
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("UPDATE audit_chain SET election_id = NULL WHERE position = %s", (ballot,))
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert found.value.position == ballot
    assert "files this entry under election None" in found.value.what
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute(
            "UPDATE audit_chain SET election_id = (SELECT election_id FROM audit_chain "
            "WHERE position = %s - 1), entry_hash = %s WHERE position = %s",
            (ballot, entry_hash(1, bytes(16), 1, "x", b""), ballot),
        )
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert "receipt digest for this entry is not the entry's own" in found.value.what


WHICH = "WHERE election_id = (SELECT min(election_id::text)::uuid FROM read_models.tally_elections)"


@pytest.mark.parametrize(
    ("changes", "finding"),
    [
        # (served as open again: counted in steps, and as of a position before the close)
        (["UPDATE read_models.tally_elections SET closed_at = NULL"], "differ from the replay"),
        (["UPDATE read_models.tally_elections SET entries = entries + 100"], "'ballot_entries'"),
        (["DELETE FROM read_models.tally_elections"], "no results are served for it"),
    ],
)
async def test_served_results_may_not_misstate_or_leave_out_an_election(
    store: str, changes: list[str], finding: str
) -> None:
    with psycopg.connect(store, autocommit=True) as conn:
        for change in changes:
            conn.execute(f"{change} {WHICH}")
    with pytest.raises(Discrepancy) as found:
        await _verify(store)
    assert finding in found.value.what


def _rehashed(documents: list[dict[str, Any]], start: int) -> None:
    """Recompute the chain from ``start`` on, as a forger holding the file could: links
    are plain hashes."""
    chain = GENESIS
    for document in documents:
        if document.get("kind") != "event":
            continue
        position = int(document["position"])
        if position < start and document["hash"] is not None:
            chain = bytes.fromhex(str(document["hash"]))
            continue
        state = orjson.dumps(document["data"], option=orjson.OPT_SORT_KEYS)
        stream = uuid.UUID(str(document["stream_id"])).bytes
        digest = entry_hash(
            position, stream, int(document["version"]), str(document["type"]), state
        )
        chain = chain_hash(chain, digest)
        if position >= start:
            document["hash"] = chain.hex()  # sealed, as a forger would have it


def test_an_exports_newest_entries_are_signed_by_its_own_head(store: str, tmp_path: Path) -> None:
    """Past the last checkpoint, an export's links are plain hashes: a ballot there could
    be rewritten, the chain computed again and the checkpoints after the last close
    dropped, and verify said OK (review helper-32). The export now signs its head."""
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_checkpoints WHERE reason = 'test'")  # the periodic one
    _tamper(store, "DELETE FROM audit_chain WHERE position > %s", _positions(store, "Closed")[-1])
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    assert documents[-1]["kind"] == "export_head"
    verify_file(exported, election=None, validate=True)  # untouched: it verifies
    ballot = next(
        d for d in reversed(documents) if d.get("type") == "BallotCast" and d["hash"] is None
    )
    data = ballot["data"]
    assert isinstance(data, dict)
    data["request_key"] = "forged"
    unsealed = [
        int(str(d["position"])) for d in documents if d.get("kind") == "event" and d["hash"] is None
    ]
    _rehashed(documents, min(unsealed))
    _write(exported, documents)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "the export's signed head does not verify: the file was changed" in found.value.what
    _write(exported, documents[:-1])  # and without the line that shows it
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "the export's signed head, its last line, is missing" in found.value.what


def test_an_export_cut_at_a_checkpoint_does_not_verify(store: str, tmp_path: Path) -> None:
    """A checkpoint signed the same message as the export's own head, and the header's
    head is not signed: a copy cut at a checkpoint, its header and results made to match,
    verified with no note, and whole elections vanished (review helper-42). The export's
    head now signs the whole file, and cannot be stood in for."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    cut = min(int(str(d["position"])) for d in documents if d.get("kind") == "checkpoint")
    kept: list[dict[str, object]] = []
    for document in documents:
        kind = document.get("kind")
        if kind == "header":
            kept.append({**document, "head": cut})
        elif kind != "export_head" and int(str(document["position"])) <= cut:
            kept.append(document)
    _write(exported, kept)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "the export's signed head, its last line, is missing" in found.value.what
    # A checkpoint's line made into the export's head does not verify as one.
    checkpoint = next(d for d in kept if d.get("kind") == "checkpoint")
    stand_in = {k: v for k, v in checkpoint.items() if k != "id"}
    _write(exported, [*kept, {**stand_in, "kind": "export_head"}])
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "the export's signed head does not verify" in found.value.what


def test_nothing_may_follow_an_exports_signed_head(store: str, tmp_path: Path) -> None:
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    result = next(d for d in documents if d.get("kind") == "result")
    _write(exported, [*documents, {**result, "ballots": 0}])
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "follows the export's signed head" in found.value.what


def test_an_export_of_format_1_verifies_with_a_note_when_asked(store: str, tmp_path: Path) -> None:
    """Exports written before format 2 signed their head as a checkpoint: they still
    verify, and the report says what that format does not attest."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    documents[0] = {**documents[0], "format": "cardinal-audit/1"}
    last = documents[-1]
    position, head = int(str(last["position"])), bytes.fromhex(str(last["head_hash"]))
    documents[-1] = {**last, "signature": SIGNER.sign(position, head).hex()}
    _write(exported, documents)
    with pytest.raises(Discrepancy) as found:  # by default: who holds it chose its format
        verify_file(exported, election=None, validate=True)
    assert "--accept-format-1" in found.value.what
    report = verify_file(exported, election=None, validate=True, accept_format_1=True)
    assert any("cardinal-audit/1" in note for note in report.notes)
    documents[0] = {**documents[0], "format": "cardinal-audit/9"}
    _write(exported, documents)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "which this version does not read" in found.value.what


def test_a_format_2_export_cut_and_labelled_format_1_fails(store: str, tmp_path: Path) -> None:
    """Cut at a checkpoint, its head dropped and its header saying format 1, a genuine
    export passed with a note, and both elections vanished (review helper-46)."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    cut = min(int(str(d["position"])) for d in documents if d.get("kind") == "checkpoint")
    kept = [{**documents[0], "format": "cardinal-audit/1", "head": cut}] + [
        d
        for d in documents[1:]
        if d.get("kind") not in ("export_head", "result") and int(str(d["position"])) <= cut
    ]
    _write(exported, kept)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True, public_keys=KEYS)
    assert "whose end nothing attests" in found.value.what


def test_nothing_but_the_end_of_the_file_may_follow_its_signed_head(
    store: str, tmp_path: Path
) -> None:
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    exported.write_bytes(exported.read_bytes() + b"\n   \n")
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert "follows the export's signed head" in found.value.what


def test_an_earlier_export_cut_short_pins_nothing(store: str, tmp_path: Path) -> None:
    """Without its signed head, an earlier export pinned its checkpoints alone, silently
    less than it covered (review helper-46)."""
    earlier = tmp_path / "earlier.ndjson"
    asyncio.run(export(store, earlier, SIGNER))
    documents = _lines(earlier)
    _write(earlier, documents[:-1])
    with pytest.raises(PinnedError, match="does not end with its signed head"):
        earlier_checkpoints(earlier)
    _write(earlier, [*documents, documents[1]])
    with pytest.raises(PinnedError, match="follows its signed head"):
        earlier_checkpoints(earlier)
    # A format-1 export without its head pinned its checkpoints alone, silently (helper-51):
    # now only when asked (the next test).
    _write(earlier, [{**documents[0], "format": "cardinal-audit/1"}, *documents[1:-1]])
    with pytest.raises(PinnedError, match="--accept-format-1"):
        earlier_checkpoints(earlier)
    # A format-2 export cut short stays refused, asked or not.
    _write(earlier, documents[:-1])
    with pytest.raises(PinnedError, match="does not end with its signed head"):
        earlier_checkpoints(earlier, accept_format_1=True)


def _without_head_as_format_1(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An export as written before 3cc8d44 (2026-12-06): format 1, no signed head at its end."""
    assert documents[-1]["kind"] == "export_head"
    return [{**documents[0], "format": "cardinal-audit/1"}, *documents[1:-1]]


async def test_an_earlier_export_written_before_signed_heads_pins_its_checkpoints_when_asked(
    store: str, tmp_path: Path
) -> None:
    """An export written before exports ended with a signed head (format 1, complete and
    signed) was refused as "cut short, or written without CARDINAL_AUDIT_KEY", and
    --accept-format-1 did nothing for --previous (upgrade review). Asked, it pins its
    checkpoints and says what it does not pin; unasked, the refusal says why and the flag."""
    with psycopg.connect(store, autocommit=True) as conn:  # entries after its last checkpoint
        conn.execute("DELETE FROM audit_checkpoints WHERE reason = 'test'")  # (the periodic one)
    earlier = tmp_path / "earlier.ndjson"
    await export(store, earlier, SIGNER)
    documents = _without_head_as_format_1(_lines(earlier))
    _write(earlier, documents)
    checkpoints = [d for d in documents if d.get("kind") == "checkpoint"]
    last = max(int(d["position"]) for d in checkpoints)
    # As --file, it fails where its entries run past its last checkpoint, saying why (it
    # said "the export's signed head is missing (it is written by ... with
    # CARDINAL_AUDIT_KEY set)", of a file no release wrote with one).
    with pytest.raises(Discrepancy) as found:
        await asyncio.to_thread(
            verify_file, earlier, election=None, validate=True, accept_format_1=True
        )
    assert found.value.position is not None
    assert found.value.position > last
    assert "has no signed head at its end, as exports written before" in found.value.what
    env = {**os.environ, "DATABASE_URL": store}
    command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--previous", str(earlier)]
    command += ["--public-key", SIGNER.public_key.hex()]
    refused = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    said = " ".join(refused.stdout.split())
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "is in the format cardinal-audit/1 and has no signed head at its end" in said, said
    assert "--accept-format-1" in said
    assert "written without CARDINAL_AUDIT_KEY" not in said
    accepted = await asyncio.to_thread(
        subprocess.run,
        [*command, "--accept-format-1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    said = " ".join(accepted.stdout.split())
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert f"it pins its signed checkpoints, up to position {last:,}, and not the entries" in said
    brought = pinned([earlier], [], accept_format_1=True)
    assert len(brought.checkpoints) == len(checkpoints)
    assert len(brought.notes) == 1
    # What it pins holds: a ballot before its last checkpoint rewritten in the store, the
    # chain and checkpoints from there sealed and signed again, does not pass.
    ballot = min(_positions(store, "Ballot.Cast"))
    assert ballot < last
    _rewrite_entry(store, ballot)
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_checkpoints WHERE position >= %s", (ballot,))
        conn.execute("DELETE FROM audit_chain WHERE position >= %s", (ballot,))
    sealer = Sealer(store, SIGNER)
    async with await psycopg.AsyncConnection.connect(store, autocommit=True) as live:
        assert await sealer.seal_pending(live) > 0
        await sealer.checkpoint_head(live, "test")
    await _verify(store)  # on its own, the rewritten store holds
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, brought)
    assert f"the earlier export {earlier}" in found.value.what
    # Holding no checkpoint, it pins nothing: refused, asked or not.
    _write(earlier, [d for d in documents if d.get("kind") != "checkpoint"])
    with pytest.raises(PinnedError, match="holds no signed checkpoint"):
        earlier_checkpoints(earlier, accept_format_1=True)


def test_an_export_without_the_audit_key_is_refused(store: str, tmp_path: Path) -> None:
    """Written without CARDINAL_AUDIT_KEY, an export said "wrote N events" and could never
    verify (review helper-46)."""
    env = {k: v for k, v in os.environ.items() if k != "CARDINAL_AUDIT_KEY"}
    env["DATABASE_URL"] = store
    output = tmp_path / "audit.ndjson"
    command = [sys.executable, "-m", "infra.cli", "audit", "export", "--output", str(output)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CARDINAL_AUDIT_KEY is not set" in " ".join((done.stdout + done.stderr).split())
    assert not output.exists()


async def test_an_earlier_exports_signed_head_pins_what_follows_its_last_checkpoint(
    store: str, tmp_path: Path
) -> None:
    """--previous read an earlier export's checkpoints but not its own signed head: a
    ballot after its last checkpoint, rewritten in the store and sealed again, passed
    (review helper-42)."""
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_checkpoints WHERE reason = 'test'")  # the periodic one
    earlier = tmp_path / "earlier.ndjson"
    await export(store, earlier, SIGNER)
    pins = earlier_checkpoints(earlier)
    last = max(_positions(store, "Ballot.Cast"))
    assert max(p.position for p in pins if p.file_hash is None) < last  # (checkpoints)
    assert any(p.file_hash is not None and p.position >= last for p in pins)
    await _verify_pinned(store, Pinned(tuple(pins)))  # untouched: it holds
    _rewrite_entry(store, last)
    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_chain WHERE position >= %s", (last,))
        sealer = Sealer(store, SIGNER)
        async with await psycopg.AsyncConnection.connect(store, autocommit=True) as live:
            assert await sealer.seal_pending(live) > 0
            await sealer.checkpoint_head(live, "test")
    await _verify(store)  # on its own, the rewritten store holds
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned(tuple(earlier_checkpoints(earlier))))
    assert f"the signed head of the earlier export {earlier}" in found.value.what
    # and an earlier export edited after it was written does not pin anything
    documents = _lines(earlier)
    _write(earlier, [documents[0], *documents[2:]])
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned(tuple(earlier_checkpoints(earlier))))
    assert "does not verify: the file was changed" in found.value.what


def test_an_election_the_log_does_not_hold_is_not_verified(store: str, tmp_path: Path) -> None:
    """`--election` with a mistyped id said "everything checks out" (review helper-40):
    nothing of that election had been checked."""
    unknown = uuid.uuid4()
    with pytest.raises(UnknownElection, match=f"the log holds no election {unknown}"):
        asyncio.run(verify_database(store, public_keys=KEYS, election=unknown, validate=True))
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    with pytest.raises(UnknownElection, match=f"the log holds no election {unknown}"):
        verify_file(exported, election=unknown, validate=True)
    env = {**os.environ, "DATABASE_URL": store}
    command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--election", str(unknown)]
    command += ["--public-key", SIGNER.public_key.hex()]
    refused = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join(refused.stdout.split())
    assert f"cannot verify: the log holds no election {unknown} (check the id)" in said
    assert "everything checks out" not in said
    # A real finding about the log still comes first.
    target = _positions(store, "Ballot.Cast")[40]
    _tamper(
        store,
        "UPDATE cardinal_events SET state = convert_to(replace(convert_from(state, 'UTF8'), "
        "'\"ranking\":[', '\"ranking\":[\"d\",'), 'UTF8') WHERE notification_id = %s",
        target,
    )
    with pytest.raises(Discrepancy) as found:
        asyncio.run(verify_database(store, public_keys=KEYS, election=unknown, validate=True))
    assert found.value.position == target


def test_an_export_writes_through_a_link_and_into_a_pipe(store: str, tmp_path: Path) -> None:
    """Written under another name and renamed, an export replaced a symbolic link given as
    --output with a file, and a pipe's reader got nothing (review helper-49)."""
    real = tmp_path / "real.ndjson"
    real.write_text("before\n")
    link = tmp_path / "link.ndjson"
    link.symlink_to(real)
    asyncio.run(export(store, link, SIGNER))
    assert link.is_symlink()
    verify_file(real, election=None, validate=True)
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    copy = tmp_path / "copy.ndjson"
    reader = subprocess.Popen(["cp", str(pipe), str(copy)])
    try:
        asyncio.run(export(store, pipe, SIGNER))
    finally:
        reader.wait(timeout=60)
    assert not pipe.is_file()
    verify_file(copy, election=None, validate=True)


def test_an_export_to_stdout_goes_through_a_pipe_whole(store: str, tmp_path: Path) -> None:
    """`--output /dev/stdout | cat` failed (/proc/<pid>/fd/pipe:[N].partial), and the
    command's own words went into the export after its signed head (review helper-50)."""
    env = {**os.environ, "DATABASE_URL": store, "CARDINAL_AUDIT_KEY": TEST_AUDIT_KEY}
    piped = tmp_path / "piped.ndjson"
    with piped.open("wb") as out:
        exporting = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "audit", "export", "--output", "/dev/stdout"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        copying = subprocess.Popen(["cat"], stdin=exporting.stdout, stdout=out)
        assert exporting.stdout is not None
        exporting.stdout.close()
        _, err = exporting.communicate(timeout=120)
        copying.wait(timeout=60)
    assert exporting.returncode == 0, err
    assert b"wrote" in err
    verify_file(piped, election=None, validate=True)


# Served documents as the API makes them at any position (`?at=`), from a recount of the
# log: an auditor's (exact, at the position asked for) and everyone else's (stepped while
# open, at the last publication); and a log whose positions skip numbers.


def _recounted(url: str, positions: list[int], *, exact: bool) -> list[dict[str, Any]]:
    """Every election's document at each of ``positions`` (ascending) as ``?at=`` serves
    it to an auditor (``exact``) or to anyone else, from a recount of the log up to it."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id, topic, state FROM cardinal_events "
            "WHERE notification_id <= %s ORDER BY notification_id",
            (max(positions),),
        ).fetchall()
    recount = Recount(validate=False)
    documents: list[dict[str, Any]] = []
    wanted = iter(positions)
    at = next(wanted, None)
    for position, stream, topic, state in [*rows, (2**62, None, "", b"")]:
        while at is not None and position > at:
            for election_id, count in recount.elections.items():
                document = results_document(
                    election_id,
                    recounted_snapshot(count, at),
                    count.rules,
                    status=count.status,
                    exact=exact,
                )
                documents.append(orjson.loads(orjson.dumps(document)))
            at = next(wanted, None)
        if at is None:
            break
        recount.record(position, stream, event_type(topic), orjson.loads(bytes(state)))
    return documents


async def _gap_then_election(url: str, skipped: int) -> tuple[int, int]:
    """``skipped`` positions used up by transactions rolled back, then an election
    created after them (as a failed append leaves the log): the gap's first position and
    the new election's."""
    with psycopg.connect(url) as conn:
        for _ in range(skipped):
            conn.execute(
                "INSERT INTO cardinal_events (originator_id, originator_version, topic, state) "
                "VALUES (gen_random_uuid(), 1, 'domain.ballot:Ballot.Cast', '{}')"
            )
            conn.rollback()
        row = conn.execute("SELECT max(notification_id) FROM cardinal_events").fetchone()
    assert row is not None
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "ab"], method="plurality"
        )
        await app.create_election("After the gap", rules)
    finally:
        await writer.stop()
        app.close()
    created = _positions(url, "Election.Created")[-1]
    assert created == int(row[0]) + skipped + 1
    return int(row[0]) + 1, created


async def test_an_auditors_document_dated_in_a_gap_of_the_log_verifies(store: str) -> None:
    """Positions skip numbers (a rolled-back append), and an auditor's `?at=` a skipped
    position is served with that position: verify said the log was cut short there
    (review of the audit, F1). Only a document beyond the log's last entry is."""
    gap, created = await _gap_then_election(store, skipped=3)
    at_gap = _recounted(store, [gap + 1], exact=True)
    assert {d["position"] for d in at_gap} == {gap + 1}
    await _verify_pinned(store, Pinned((), tuple(at_gap)))
    beyond = [{**at_gap[0], "position": created + 1}]
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned((), tuple(beyond)))
    assert found.value.position == created + 1
    assert "the log is cut short" in found.value.what


def _stepped_and_exact(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first election's documents while it was open, at many positions: as anyone but
    an auditor is served them (stepped, at the last publication), and as an auditor is."""
    close = _positions(url, "Election.Closed")[0]
    ballots = [p for p in _positions(url, "Ballot.Cast") if p < close]
    sample = sorted({*ballots[::7], close - 1})
    stepped = [d for d in _recounted(url, sample, exact=False) if d["stepped"]]
    exact = _recounted(url, sample, exact=True)
    assert len({d["position"] for d in stepped}) > 5
    return stepped, exact


async def test_a_stepped_documents_ballot_entries_are_compared(store: str) -> None:
    """A stepped document's ballot_entries (rounded down to whole steps) were never
    compared: at its publication, they are the publication's count (audit review F2)."""
    stepped, _ = _stepped_and_exact(store)
    await _verify_pinned(store, Pinned((), tuple(stepped)))
    document = stepped[-1]
    wrong = {**document, "ballot_entries": int(document["ballot_entries"]) + 1}
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned((), (wrong,)))
    assert found.value.position == document["position"]
    assert "in 'ballot_entries'" in found.value.what


async def test_a_stepped_document_must_be_dated_at_a_publication(store: str) -> None:
    """An auditor's exact document at a position between two publications, relabelled
    stepped with its ballot entries rounded down, passed as published results (audit
    review F3). Every document a reader is served stepped still passes, the step index's
    (`?at=` between publications: the one before) and the creation's before any."""
    stepped, exact = _stepped_and_exact(store)
    step = int(stepped[0]["live_results_step"])
    assert step > 1
    published = {int(d["position"]) for d in stepped}
    with psycopg.connect(store) as conn:
        row = conn.execute("SELECT min(notification_id) FROM cardinal_events").fetchone()
    assert row is not None
    created = _recounted(store, [int(row[0])], exact=False)
    assert created[0]["stepped"]
    assert created[0]["ballot_entries"] == 0
    await _verify_pinned(store, Pinned((), (*stepped, *created)))
    # Time travel and the tally date a stepped reader's document at the Opened entry before
    # a first publication (where the status it shows changed), not at the creation.
    opened = _positions(store, "Election.Opened")[0]
    assert int(row[0]) < opened <= min(published - {int(row[0])})
    at_open = _recounted(store, [opened], exact=False)[0]
    assert at_open["stepped"]
    await _verify_pinned(store, Pinned((), ({**at_open, "position": opened},)))
    between = next(
        d for d in exact if int(d["position"]) not in published and int(d["ballot_entries"]) % step
    )
    entries = int(between["ballot_entries"])
    forged = {**between, "stepped": True, "ballot_entries": entries // step * step}
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned((), (forged,)))
    assert found.value.position == between["position"]
    assert "served stepped (as published) are dated at the publication" in found.value.what
    assert f"position {int(between['position']):,} is not one" in found.value.what
    # And the tally's own, for an open election (`audit export` writes it).
    app = open_application(store)
    writer = GroupCommitWriter(app, store)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "ab"], method="plurality"
        )
        election_id = (await app.create_election("Open", rules)).id
        await app.open_election(election_id)
        for n in range(25):
            await app.cast_ballot(
                election_id, Voter(f"o{n}", f"o{n}"), {"choice": "ab"[n % 2]}, None
            )
    finally:
        await writer.stop()
        app.close()
    await catch_up_every_projection(store)
    async with await snapshot_connection(store) as conn:
        live = [d for documents in (await served_results(conn)).values() for d in documents]
    assert [d["ballot_entries"] for d in live if d["stepped"]] == [20]
    report = await verify_database(store, public_keys=KEYS, election=None, validate=True)
    assert report.results == len(live)


async def test_a_document_dated_before_its_elections_creation_says_so(store: str) -> None:
    """It said "served for an unknown election" of an election the log does hold, created
    later (audit review F4)."""
    async with await snapshot_connection(store) as conn:
        served = [d for documents in (await served_results(conn)).values() for d in documents]
    created = _positions(store, "Election.Created")[-1]
    later = next(d for d in served if d["election_id"] == str(_created_ids(store)[-1]))
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned((), ({**later, "position": 5},)))
    assert found.value.position == 5
    assert (
        f"results are served as of position 5, before the election was created (at position "
        f"{created:,})" in found.value.what
    )
    unknown = {**later, "election_id": str(uuid.uuid4()), "position": 5}
    with pytest.raises(Discrepancy) as found:
        await _verify_pinned(store, Pinned((), (unknown,)))
    assert found.value.position == 5
    assert "served for an unknown election" in found.value.what


async def test_results_served_before_the_tally_reaches_an_election_are_dated_at_its_creation(
    store: str,
) -> None:
    """They were dated at the tally's position, before the creation (0 for readers other
    than auditors), which no audit can re-derive: a poller that kept the first document it
    saw failed `verify --served` (mixed-paths review)."""
    app = open_application(store)
    writer = GroupCommitWriter(app, store)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "ab"], method="plurality", live_results_step=5
        )
        election_id = (await app.create_election("Not projected yet", rules)).id
        await app.open_election(election_id)
        status = (await app.election(election_id)).status
    finally:
        await writer.stop()
        app.close()
    created = _positions(store, "Election.Created")[-1]
    async with await psycopg.AsyncConnection.connect(store) as conn:
        snapshot = await tally_snapshot(conn, election_id)
    assert snapshot.rules is None  # the tally has not reached it: the case at hand
    documents = [
        results_document(election_id, snapshot, rules, status=status, exact=exact)
        for exact in (True, False)
    ]
    assert [d["position"] for d in documents] == [created, created]
    assert all(d["ballots"] == 0 for d in documents)
    await _verify_pinned(store, Pinned((), tuple(documents)))  # raises on a discrepancy


def _created_ids(url: str) -> list[uuid.UUID]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT originator_id FROM cardinal_events WHERE topic LIKE '%Election.Created' "
            "ORDER BY notification_id"
        ).fetchall()
    return [row[0] for row in rows]


def test_moved_lines_and_an_edited_result_are_found_where_they_are(
    store: str, tmp_path: Path
) -> None:
    """Two event lines swapped: the replay's "not an export line as written
    (ValueError(...))" had no position, so it came before the chain's finding at one; and
    an edited result line was reported as the signed head's failure at the same position,
    not as the result that differs (audit review F5)."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    events = [n for n, d in enumerate(documents) if d.get("kind") == "event"]
    first, second = events[100], events[101]
    moved = list(documents)
    moved[first], moved[second] = documents[second], documents[first]
    _write(exported, moved)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    earlier, later = documents[first]["position"], documents[second]["position"]
    assert found.value.position == earlier
    assert f"entry {earlier:,} comes after {later:,}" in found.value.what
    command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--file", str(exported)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    said = " ".join(done.stdout.split())
    assert f"FAILED at position {earlier}: entry {earlier:,} comes after" in said, said
    assert "Error(" not in said

    result = next(n for n, d in enumerate(documents) if d.get("kind") == "result")
    head = documents[-1]["position"]
    assert documents[result]["position"] == head  # (a tie with the signed head's finding)
    edited = list(documents)
    edited[result] = {**documents[result], "ballots": int(str(documents[result]["ballots"])) + 1}
    _write(exported, edited)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert found.value.position == head
    # The file changed (its signature says so), and what differs at that position with it:
    # the tally alone was blamed for what may be an edit of any line (audit review).
    assert isinstance(found.value, FileChanged)
    assert found.value.what.startswith("the export's signed head does not verify")
    assert "the other half also finds: election" in found.value.what
    assert "the served results differ from the replay in 'ballots'" in found.value.what


def test_a_passing_verify_says_when_the_export_was_written_and_what_pinned_it(
    store: str, tmp_path: Path
) -> None:
    """verify's success said nothing of what it checked: an old export presented as
    current passed without showing its date (audit review 4). It shows the export's
    exported_at and signed head, and how many pins were checked."""
    earlier = tmp_path / "earlier.ndjson"
    asyncio.run(export(store, earlier, SIGNER))
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    header, head = documents[0], documents[-1]
    close = _positions(store, "Election.Closed")[0]
    with psycopg.connect(store) as conn:
        row = conn.execute(
            "SELECT id, head_hash, key_id, signature FROM audit_checkpoints WHERE position = %s",
            (close,),
        ).fetchone()
    assert row is not None
    final = {
        "position": close,
        "hash": bytes(row[1]).hex(),
        "checkpoint_id": row[0],
        "key_id": row[2],
        "signature": bytes(row[3]).hex(),
    }
    results = [
        {k: v for k, v in d.items() if k != "kind"} for d in documents if d.get("kind") == "result"
    ]
    saved = tmp_path / "saved.json"
    saved.write_bytes(orjson.dumps([{**results[0], "final_chain_head": final}, *results[1:]]))
    checkpoints = sum(1 for d in _lines(earlier) if d.get("kind") == "checkpoint")
    command = [
        *(sys.executable, "-m", "infra.cli", "audit", "verify", "--file", str(exported)),
        *("--previous", str(earlier), "--served", str(saved)),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CARDINAL_AUDIT_KEY")}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert "OK: everything checks out" in said
    assert f"export written at: {header['exported_at']}" in said
    assert (
        f"export's signed head: position {int(str(head['position'])):,}, hash {head['head_hash']}"
        in said
    )
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in done.stdout.splitlines()
        if line.startswith("│")
    }
    assert rows["--previous: their checkpoints on the chain"] == str(checkpoints)
    assert rows["--previous: their signed heads on the chain"] == "1"
    assert rows["--served: documents equal to the replay"] == str(len(results))
    assert rows["--served: final chain heads on the chain"] == "1"


def test_a_copied_export_line_is_said_to_appear_twice(store: str, tmp_path: Path) -> None:
    """An event line copied right after itself: "entry 112 comes after 112: entries are
    out of order" (audit review); it appears twice."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents = _lines(exported)
    line = [n for n, d in enumerate(documents) if d.get("kind") == "event"][100]
    position = documents[line]["position"]
    _write(exported, [*documents[: line + 1], documents[line], *documents[line + 1 :]])
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert found.value.position == position
    assert f"entry {position:,} appears twice" in found.value.what
    assert "comes after" not in found.value.what


ROTATED = Signer("44" * 32)  # the audit key after a rotation


async def _rotated(url: str) -> int:
    """The store after CARDINAL_AUDIT_KEY was rotated: one more election closed and its
    close signed with the new key. Returns that close's position."""
    await _fill(url, random.Random(24), ballots=40)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        sealer = Sealer(url, ROTATED)
        assert await sealer.seal_pending(conn) > 0
        await sealer.checkpoint_head(conn, "test")
    await catch_up_every_projection(url)
    return _positions(url, "Election.Closed")[-1]


async def test_after_the_audit_key_is_rotated_verify_takes_every_key_trusted(
    store: str, tmp_path: Path
) -> None:
    """Checkpoints signed before a rotation name the earlier key: verify took one key
    (a second --public-key replaced the first) and an export listed only the current one,
    so no verify could pass once the key was rotated (audit review, medium)."""
    close = await _rotated(store)
    both = {**KEYS, ROTATED.key_id: ROTATED.public_key}
    with pytest.raises(Discrepancy) as found:  # the earlier key alone: the new checkpoints
        await verify_database(store, public_keys=KEYS, election=None, validate=True)
    assert found.value.position == close
    assert f"signed by key {ROTATED.key_id}, which this run does not know" in found.value.what
    assert "earlier key" in found.value.what
    assert "another --public-key" in found.value.what
    assert ROTATED.public_key.hex() in found.value.what  # (recorded by the sealer: a hint)
    report = await verify_database(store, public_keys=both, election=None, validate=True)
    assert set(report.keys) == set(both)

    exported = tmp_path / "audit.ndjson"
    await export(store, exported, ROTATED)
    header = _lines(exported)[0]
    assert header["public_keys"] == [
        {"key_id": ROTATED.key_id, "algorithm": "Ed25519", "public_key": ROTATED.public_key.hex()}
    ]
    keys: Any = header["checkpoint_keys"]
    listed = {k["key_id"]: k["public_key"] for k in keys}
    assert listed == {s.key_id: s.public_key.hex() for s in (SIGNER, ROTATED)}
    # By default only the exporter's key is trusted (as before): never one the file lists
    # for its checkpoints, which whoever edits the store or the file could add.
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert f"signed by key {SIGNER.key_id}, which this run does not know" in found.value.what
    assert f"lists key {SIGNER.key_id} as {SIGNER.public_key.hex()}" in found.value.what
    verify_file(exported, election=None, validate=True, public_keys=both)

    command = [sys.executable, "-m", "infra.cli", "audit", "verify", "--file", str(exported)]
    for signer in (SIGNER, ROTATED):
        command += ["--public-key", signer.public_key.hex()]
    unused = Signer("55" * 32)  # trusted, and signed nothing here: shown all the same
    done = await _run([*command, "--public-key", unused.public_key.hex()])
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert f"signed by key {SIGNER.key_id}" in said
    assert f"signed by key {ROTATED.key_id}" in said
    assert f"signed by key {unused.key_id} │ 0" in said
    done = await _run(command[:-2])  # the earlier key only: it fails at the first new one
    assert done.returncode == 1
    assert f"FAILED at position {close}" in done.stdout


async def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, capture_output=True, text=True, check=False
    )


def _as_format_1(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An export as format 1 wrote it: its head signed as a checkpoint, not the file."""
    last = documents[-1]
    position, head = int(last["position"]), bytes.fromhex(last["head_hash"])
    return [
        {**documents[0], "format": "cardinal-audit/1"},
        *documents[1:-1],
        {**last, "signature": SIGNER.sign(position, head).hex()},
    ]


def test_a_stream_id_written_otherwise_is_an_edit_in_either_format(
    store: str, tmp_path: Path
) -> None:
    """The chain read a stream id as its 16 bytes and the replay as its text: in format 1
    (whose signed head does not cover the lines) an upper-cased ballot stream passed the
    chain and was another ballot to the replay, so results could be edited to match
    (audit review, medium)."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    documents: list[dict[str, Any]] = [
        orjson.loads(line) for line in exported.read_bytes().splitlines()
    ]
    events = [d for d in documents if d.get("kind") == "event"]
    streams = [d["stream_id"] for d in events]
    # a ballot alone on its stream: written otherwise, it changes no count, and passed
    alone = next(
        n
        for n, d in enumerate(documents)
        if d.get("type") == "BallotCast" and streams.count(d["stream_id"]) == 1
    )
    withdrawn = next(n for n, d in enumerate(documents) if d.get("type") == "BallotWithdrawn")
    for line, text in (
        (alone, str(documents[alone]["stream_id"]).upper()),
        (alone, str(documents[alone]["stream_id"]).replace("-", "")),
        (withdrawn, str(documents[withdrawn]["stream_id"]).upper()),
    ):
        edited = list(documents)
        edited[line] = {**documents[line], "stream_id": text}
        _write(exported, _as_format_1(edited))
        with pytest.raises(Discrepancy) as found:
            verify_file(exported, election=None, validate=True, accept_format_1=True)
        assert f"line {line + 1} of {exported} is not an export line as written" in found.value.what
        assert "not written as an export writes one" in found.value.what
        # format 2: the same, before the file's signature (which fails too) is reached
        _write(exported, edited)
        with pytest.raises(Discrepancy) as found:
            verify_file(exported, election=None, validate=True)
        assert "not written as an export writes one" in found.value.what
    _write(exported, _as_format_1(documents))
    verify_file(exported, election=None, validate=True, accept_format_1=True)


def test_a_dropped_checkpoint_line_is_named_at_its_close(store: str, tmp_path: Path) -> None:
    """A close's checkpoint line dropped from an export was reported only as the signed
    head failing, at the export's end: the missing checkpoint is the specific finding."""
    exported = tmp_path / "audit.ndjson"
    asyncio.run(export(store, exported, SIGNER))
    close = _positions(store, "Election.Closed")[0]
    documents = _lines(exported)
    kept = [d for d in documents if not (d.get("kind") == "checkpoint" and d["position"] == close)]
    assert len(kept) == len(documents) - 1
    _write(exported, kept)
    with pytest.raises(Discrepancy) as found:
        verify_file(exported, election=None, validate=True)
    assert found.value.position == close
    assert "checkpoint of the chain head at its close is missing" in found.value.what
    assert "the export's signed head does not verify" in found.value.what


async def test_a_database_verify_outlasts_a_servers_idle_transaction_timeout(store: str) -> None:
    """Since both halves share a snapshot, the chain half's transaction waits, idle, for
    the replay (a process of its own, seconds to start). A server with
    idle_in_transaction_session_timeout set (common on managed PostgreSQL) ended that
    session under it, and the run failed after all its work (the second merge review)."""
    with psycopg.connect(store, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET idle_in_transaction_session_timeout = '200ms'").format(
                sql.Identifier(database[0])
            )
        )
    try:
        report = await verify_database(store, public_keys=KEYS, election=None, validate=True)
        assert report.results == 2
    finally:
        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} RESET idle_in_transaction_session_timeout").format(
                    sql.Identifier(database[0])
                )
            )


async def test_both_halves_of_a_database_verify_read_one_snapshot(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain half and the replay half took a snapshot each: a change committed between
    the two was seen by one half only. A read model edited once the run has begun (as the
    replay's process starts) is not what the run verifies: the store as of its start."""

    class EditedMeanwhile(ProcessPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            with psycopg.connect(store, autocommit=True) as conn:
                conn.execute(
                    "UPDATE read_models.tally_counters SET value = value + 1 WHERE key = 'n'"
                )
            return super().submit(fn, *args, **kwargs)

    def second_core() -> ProcessPoolExecutor:
        return EditedMeanwhile(1, mp_context=multiprocessing.get_context("spawn"))

    monkeypatch.setattr(verify_module, "_second_core", second_core)
    report = await verify_database(store, public_keys=KEYS, election=None, validate=True)
    assert report.results == 2
    with pytest.raises(Discrepancy) as found:  # (the edit is committed: a new run sees it)
        await _verify(store)
    assert "served results differ from the replay in 'ballots'" in found.value.what


async def test_a_format_1_export_with_an_unsealed_tail_still_verifies(
    store: str, tmp_path: Path
) -> None:
    """A format-1 export's signed head was signed at its last entry, linked or not: taken
    for a checkpoint of the sealer's (which signs only what it linked), such an export's
    unsealed tail was told its links were deleted (merge review of the deleted-links
    finding: genuine exports of 2026-12-06 05:03-07:51 failed)."""
    app = open_application(store)
    writer = GroupCommitWriter(app, store)
    app.writer = writer
    writer.start()
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "ab"], method="plurality"
        )
        election_id = (await app.create_election("Unsealed tail", rules)).id
        await app.open_election(election_id)
        for n, choice in enumerate("abbab"):
            await app.cast_ballot(election_id, Voter(f"t{n}", f"t{n}"), {"choice": choice}, None)
    finally:
        await writer.stop()
        app.close()
    await catch_up_every_projection(store)
    exported = tmp_path / "audit.ndjson"
    try:
        await export(store, exported, SIGNER)
        documents = _lines(exported)
        format_1 = tmp_path / "format-1.ndjson"
        _write(format_1, _as_format_1(documents))
        report = await asyncio.to_thread(
            verify_file, format_1, election=None, validate=True, accept_format_1=True
        )
        assert report.unsealed == 7  # the election's Created and Opened, and 5 ballots
        # Nothing signs an id on an export's head line (format 2 signs the file before it):
        # one written there does not make it the sealer's (final merge review).
        with_id = tmp_path / "head-with-id.ndjson"
        _write(with_id, [*documents[:-1], {**documents[-1], "id": 7}])
        report = await asyncio.to_thread(verify_file, with_id, election=None, validate=True)
        assert report.unsealed == 7
    finally:  # (the module's store is shared: leave it sealed)
        async with await psycopg.AsyncConnection.connect(store, autocommit=True) as conn:
            await Sealer(store, SIGNER).seal_pending(conn)


async def test_a_halted_sealer_keeps_its_session_and_lock_past_an_idle_timeout(
    store: str,
) -> None:
    """Halted, the sealer sent nothing for a minute at a time: the server's
    idle_session_timeout ended its session and its lock, and a standby (which knows of no
    halt) took over and sealed over the altered chain (merge review). It keeps its session
    alive now, holding the lock."""
    with psycopg.connect(store, autocommit=True) as conn:
        database = conn.execute("SELECT current_database()").fetchone()
        assert database is not None
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET idle_session_timeout = '1s'").format(
                sql.Identifier(database[0])
            )
        )
    sealer = Sealer(
        store,
        SIGNER,
        checkpoint_interval=0.1,
        poll_interval=0.1,
        linger=0.01,
        halted_keepalive=0.2,  # (this sealer's: not the module's, the session stack's too)
    )
    running = asyncio.create_task(sealer.run())

    def holder() -> int | None:
        return lock_holder(store, SEALER_LOCK)

    try:
        for _ in range(200):
            if sealer.position:
                break
            await asyncio.sleep(0.05)
        assert sealer.position
        gap = _positions(store, "Ballot.Cast")[-1]
        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute("DELETE FROM audit_chain WHERE position >= %s", (gap,))
            conn.execute("DELETE FROM audit_checkpoints WHERE position >= %s", (gap,))
        await _fill(store, random.Random(25), ballots=2)
        for _ in range(200):
            if sealer.halted is not None:
                break
            await asyncio.sleep(0.05)
        assert sealer.halted is not None
        held = holder()
        assert held is not None
        await asyncio.sleep(2.5)  # past the idle timeout, twice
        assert holder() == held  # the same session holds the lock
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} RESET idle_session_timeout").format(
                    sql.Identifier(database[0])
                )
            )
        # (the module's store is shared: the chain sealed again, from where it stops)
        async with await psycopg.AsyncConnection.connect(store, autocommit=True) as again:
            await Sealer(store, SIGNER).seal_pending(again)
