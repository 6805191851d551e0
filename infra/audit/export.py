"""`cardinal audit export`: the log, its chain, checkpoints and served results, as NDJSON.

One JSON document per line, ``kind`` first:

    {"kind": "header", "format": "cardinal-audit/2", "exported_at": ..., "head": ...,
     "public_keys": [{"key_id", "algorithm", "public_key"}],
     "checkpoint_keys": [{"key_id", "algorithm", "public_key" (hex, or null)}]}
    {"kind": "checkpoint", "id", "position", "head_hash", "key_id", "signature"}
    {"kind": "result", "position", "election_id", ...the results the API serves}
    {"kind": "set_aside", "projection", "position", "election_id", "type", "reason"}
    {"kind": "event", "position", "stream_id", "version", "type", "data": {...}, "hash"}
    {"kind": "export_head", "position", "head_hash", "key_id", "signature"}

``public_keys`` holds the exporter's key, which signs the export's own head (the last line);
``checkpoint_keys`` every key id the checkpoints name, with its public key where the store
recorded it (after the audit key is rotated, earlier checkpoints name an earlier key): an
auditor pins each one only once the deployment confirms it (`verify --public-key`, once per
key). ``data`` is the entry's full state; the chain hashes its canonical JSON (keys sorted, no
whitespace, UTF-8). An entry whose state is not JSON carries ``"data": null`` and its
bytes in ``state_hex`` instead. ``hash`` is null for entries not sealed yet; an event with
no ``data`` and no ``state_hex`` is a chain link whose entry is gone. The last line signs the
chain's head at the last event (with ``CARDINAL_AUDIT_KEY``), so that no entry of the file
is left unsigned; it also signs the SHA-256 of every byte before it (chain.py), so the file
cannot be cut, nor any line of it changed, dropped or added, without its signature failing.
(Format 1 signed only the chain head there, as a checkpoint does: a copy cut at a
checkpoint still verified.) The file is everything `cardinal audit verify --file` needs, with no
database.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from infra.audit.chain import ALGORITHM, GENESIS, Signer, chain_hash, entry_hash
from infra.audit.sources import (
    checkpoints_of,
    database_entries,
    recorded_keys,
    served_results,
    set_aside_records,
    snapshot_connection,
)
from infra.audit.verifier import Checkpoint, Entry
from infra.store.log import head

FORMAT = "cardinal-audit/2"


async def export(
    database_url: str,
    output: Path,
    signer: Signer | None,
    progress: Any = None,
) -> int:
    """Write the export; return how many events it holds.

    Checkpoints and results come first, so that a verifier knows, while it streams the
    events, where to check a signed head and where to compare results. The file is written
    under another name and renamed once complete: an export that fails or is interrupted
    leaves no file behind (nor replaces an earlier one) that could pass for a whole export.
    A pipe or a device is written to directly, and a symbolic link's target replaced.
    """
    target, renamed = _where(output)
    if not renamed:
        return await _write(database_url, target, signer, progress)
    partial = target.with_name(target.name + ".partial")
    try:
        count = await _write(database_url, partial, signer, progress)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return count


def _where(output: Path) -> tuple[Path, bool]:
    """Where to write (a symbolic link's target, not the link), and whether under another
    name first: not a pipe or a device (/dev/stdout), which cannot be renamed onto; whoever
    reads one sees where the export ends by its signed head."""
    if output.exists() and not output.is_file():  # (stat follows links: /dev/stdout, a
        return output, False  # pipe behind it, is no file)
    target = output.resolve()
    return target, True


async def _write(database_url: str, output: Path, signer: Signer | None, progress: Any) -> int:
    async with await snapshot_connection(database_url) as conn:
        checkpoints = await checkpoints_of(conn)
        served = await served_results(conn)
        upto = await head(conn)
        with output.open("wb") as file:
            out = _Hashed(file)
            _line(
                out,
                {
                    "kind": "header",
                    "format": FORMAT,
                    "exported_at": datetime.datetime.now(datetime.UTC).isoformat(),
                    "head": upto,
                    "public_keys": (
                        [
                            {
                                "key_id": signer.key_id,
                                "algorithm": ALGORITHM,
                                "public_key": signer.public_key.hex(),
                            }
                        ]
                        if signer
                        else []
                    ),
                    # every key its checkpoints name, with its public key where the store
                    # recorded it (null: signed before migration 0012, by a key rotated out
                    # since): which keys to ask the deployment for, never trusted as such
                    "checkpoint_keys": await _checkpoint_keys(conn, checkpoints, signer),
                },
            )
            for checkpoint in checkpoints:
                _line(
                    out,
                    {
                        "kind": "checkpoint",
                        "id": checkpoint.id,
                        "position": checkpoint.position,
                        "head_hash": checkpoint.head.hex(),
                        "key_id": checkpoint.key_id,
                        "signature": checkpoint.signature.hex(),
                    },
                )
            for position, results in sorted(served.items()):
                for result in results:
                    _line(out, {"kind": "result", "position": position, **result})
            for record in await set_aside_records(conn):
                _line(out, {"kind": "set_aside", **record})
            count = 0
            tip = (0, GENESIS)  # the chain at the last entry written
            async for entry in database_entries(conn):
                if entry.position > upto:
                    break
                _line(out, _event(entry))
                tip = (entry.position, _linked(tip[1], entry))
                count += 1
                if progress is not None and count % 10_000 == 0:
                    progress(entry.position, upto)
            if signer is not None:
                # The export's own signed head, at its last entry, over the whole file:
                # without it, whoever holds the file could rewrite what follows its last
                # checkpoint (those links are plain hashes), or cut it at a checkpoint.
                position, chain = tip
                _line(
                    out,
                    {
                        "kind": "export_head",
                        "position": position,
                        "head_hash": chain.hex(),
                        "key_id": signer.key_id,
                        "signature": signer.sign_export(position, chain, out.digest()).hex(),
                    },
                )
    return count


async def _checkpoint_keys(
    conn: Any, checkpoints: list[Checkpoint], signer: Signer | None
) -> list[dict[str, Any]]:
    recorded = await recorded_keys(conn)
    if signer is not None:
        recorded[signer.key_id] = signer.public_key
    named = dict.fromkeys(checkpoint.key_id for checkpoint in checkpoints)
    return [
        {
            "key_id": named_id,
            "algorithm": ALGORITHM,
            "public_key": public.hex() if (public := recorded.get(named_id)) else None,
        }
        for named_id in named
    ]


def _linked(previous: bytes, entry: Entry) -> bytes:
    """The chain's hash at this entry: as sealed, or as the sealer will seal it."""
    if entry.stored_hash is not None:
        return entry.stored_hash
    digest = entry_hash(entry.position, entry.stream, entry.version, entry.kind, entry.state)
    return chain_hash(previous, digest)


def _event(entry: Entry) -> dict[str, Any]:
    if not entry.stream:  # a sealed link whose entry is gone: keep it visible
        return {
            "kind": "event",
            "position": entry.position,
            "data": None,
            "hash": entry.stored_hash.hex() if entry.stored_hash else None,
        }
    document: dict[str, Any] = {
        "kind": "event",
        "position": entry.position,
        "stream_id": str(entry.stream_id),
        "version": entry.version,
        "type": entry.kind,
        "hash": entry.stored_hash.hex() if entry.stored_hash else None,
    }
    try:
        readable = isinstance(orjson.loads(entry.state), dict)
    except orjson.JSONDecodeError:
        readable = False
    if not readable:  # its exact bytes, for the chain's sake
        document.update(data=None, state_hex=entry.state.hex())
    else:
        # The stored canonical JSON goes in as it is; a verifier hashes its canonical form.
        document["data"] = orjson.Fragment(entry.state)
    return document


class _Hashed:
    """The file being written, and the SHA-256 of what was written to it so far."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def _line(out: _Hashed, document: dict[str, Any]) -> None:
    out.write(orjson.dumps(document) + b"\n")
