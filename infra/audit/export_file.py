"""An export file read for `audit verify --file`: its header, checkpoints, served results
and the projections' set-aside entries, and its events fed to a verifier in order. A line
that is not an export's, or an export that ends before the head its header names, is a
finding (Discrepancy), never a traceback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

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


def read_export(
    path: Path,
    election: UUID | None,
    validate: bool,
    public_keys: dict[str, bytes] | None,
    progress: Any,
    *,
    chain: bool,
    checkpoints: list[Checkpoint] | None = None,
    served: dict[int, list[dict[str, Any]]] | None = None,
    accept_format_1: bool = True,
) -> Report:
    """Verify one half of an export (``chain``: the hash chain and checkpoints; else the
    replay against the served results); a Discrepancy at the first thing that is wrong."""
    read = hashlib.sha256()  # every byte read so far: what an export's signed head signs
    lines = _lines(path, read)
    first = next(lines, None)
    header = first[1] if first is not None else None
    if header is None or header.get("kind") != "header":
        raise Discrepancy(None, f"{path} does not start with an export header")
    try:
        keys = {k["key_id"]: bytes.fromhex(k["public_key"]) for k in header.get("public_keys", [])}
        # (hints only: the store recorded them, and who holds the file may edit them)
        listed = {
            str(k["key_id"]): bytes.fromhex(k["public_key"]) if k["public_key"] else None
            for k in header.get("checkpoint_keys", [])
        }
        listed.update(keys)
        upto = int(header.get("head", 0))
        signs_file = _signs_file(header.get("format"))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise Discrepancy(
            None, f"line 1 of {path}, its header, does not read: {_reason(error)}"
        ) from None
    if chain and not signs_file and not accept_format_1:
        # Who holds the file chooses what its header says: a format-2 export cut at a
        # checkpoint and labelled format 1 would otherwise pass with a note.
        raise Discrepancy(
            None,
            f"{path} says it is in the format {FORMAT_1}, whose end nothing attests (a copy "
            "cut at any checkpoint verifies as well): export again with this version, or "
            "give --accept-format-1 to check an export written before 2026-12-06 as far as "
            "it goes",
        )
    if public_keys:  # the auditor's keys, the only ones trusted then
        keys = dict(public_keys)
    export = _Export(keys, election=election, validate=validate, chain=chain, listed=listed)
    export.checkpoints.extend(checkpoints or ())
    for position, documents in (served or {}).items():
        export.served.setdefault(position, []).extend(documents)
    export.signs_file = signs_file
    export.read(path, lines, read, progress, upto)
    if progress is not None:
        progress(upto, upto)
    verifier = export.verifier()
    if not chain:
        return verifier.finish()
    report = _chain_end(export, verifier, path, election, upto)
    exported_at = header.get("exported_at")
    report.exported_at = exported_at if isinstance(exported_at, str) else None
    if export.signed_head is not None:
        report.export_head = (export.signed_head.position, export.signed_head.head)
    return report


def _chain_end(
    export: _Export, verifier: Verifier, path: Path, election: UUID | None, upto: int
) -> Report:
    """The export's end: it reaches the head its header names, its signed head is there
    and holds, and every entry is under a signature."""
    last = verifier.report.head
    if election is None and last < upto:
        raise Discrepancy(
            last,
            f"the export ends at position {last:,}, but its header says the log reached "
            f"{upto:,}: it is cut short",
        )
    if export.signs_file and export.signed_head is None:
        raise Discrepancy(
            last,
            "the export's signed head, its last line, is missing: the file is cut short, "
            "or was written without CARDINAL_AUDIT_KEY (an export is attested only by it)",
        )
    if export.signed_head is not None:
        try:
            verifier.attest(export.signed_head)
        except FileChanged as changed:
            # It says that something changed; the checks at the end may say what and
            # where (a close whose checkpoint line was dropped): that, then.
            try:
                verifier.finish()
            except Discrepancy as specific:
                if specific.position is None or isinstance(specific, UnknownElection):
                    raise changed from None
                raise Discrepancy(
                    specific.position,
                    f"{specific.what}; and the export's signed head does not verify: the "
                    "file was changed after it was exported",
                ) from None
            raise
    report = verifier.finish()
    if verifier.signed_upto < report.head:
        # Links are plain hashes: past the last signature, the file could say anything.
        if not export.signs_file and export.signed_head is None:
            raise Discrepancy(
                report.head,
                f"no signature covers the entries after position {verifier.signed_upto:,}: "
                f"{path} is in the format {FORMAT_1} and has no signed head at its end, as "
                "exports written before 2026-12-06 (commit 3cc8d44) did not, so nothing "
                "attests those entries. Verify a new export (this one can still pin its "
                "checkpoints as --previous, with --accept-format-1)",
            )
        raise Discrepancy(
            report.head,
            f"no signature covers the entries after position {verifier.signed_upto:,}: "
            "the export's signed head is missing (it is written by `cardinal audit "
            "export` with CARDINAL_AUDIT_KEY set)",
        )
    report.notes.extend(set_aside_notes(export.aside))
    if not export.signs_file:
        report.notes.append(
            f"{path} is in the format {FORMAT_1}, whose signed head, where it has one, "
            "covers the chain but not the file: a copy cut at a checkpoint verifies as well. "
            "Export again with this version to have the whole file attested."
        )
    return report


FORMAT_1 = "cardinal-audit/1"
FORMAT_2 = "cardinal-audit/2"


def _signs_file(format_name: object) -> bool:
    """Whether the export's signed head covers the whole file (format 2) or only the
    chain (format 1); a format this version does not know is refused."""
    if format_name == FORMAT_2:
        return True
    if format_name == FORMAT_1:
        return False
    raise ValueError(f"the export's format is {format_name!r}, which this version does not read")


@dataclass
class _Export:
    """An export's lines as read so far: its checkpoints, served results and the
    projections' set-aside entries, and its events, fed to a verifier in order."""

    keys: dict[str, bytes]
    election: UUID | None
    validate: bool
    chain: bool
    checkpoints: list[Checkpoint] = field(default_factory=list)
    served: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    aside: list[dict[str, Any]] = field(default_factory=list)
    signed_head: Checkpoint | None = None  # the export's own, at its last entry
    file_hash: bytes | None = None  # what it signs besides (format 2): the file before it
    signs_file: bool = True
    listed: dict[str, bytes | None] = field(default_factory=dict)
    _verifier: Verifier | None = None

    @property
    def entries(self) -> int:
        return 0 if self._verifier is None else self._verifier.report.entries

    def verifier(self) -> Verifier:
        """Started at the first event, once every checkpoint and result is in."""
        if self._verifier is None:
            self._verifier = Verifier(
                self.keys,
                self.checkpoints,
                self.served,
                election=self.election,
                validate=self.validate,
                chain=self.chain,
                replay=not self.chain,
                listed_keys=self.listed,
                listed_in="The export's header",
            )
        return self._verifier

    def read(
        self,
        path: Path,
        lines: Iterator[tuple[int, dict[str, Any] | None]],
        read: Any,
        progress: Any,
        upto: int,
    ) -> None:
        """Every line after the header, in order (``read``: the hash of the bytes so far)."""
        for number, document in lines:
            if document is None and self.signed_head is None:
                continue  # a blank line (the signed head covers it all the same)
            if self.signed_head is not None:
                raise Discrepancy(
                    None,
                    f"line {number} of {path} follows the export's signed head, where the "
                    "export ends: something was added to the file",
                )
            assert document is not None
            if self.signs_file and document.get("kind") == "export_head":
                self.file_hash = read.digest()
            try:
                self.take(document)
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise Discrepancy(
                    None,
                    f"line {number} of {path} is not an export line as written: {_reason(error)}",
                ) from None
            if progress is not None and self.entries % 10_000 == 0 and document["kind"] == "event":
                progress(document["position"], upto)

    def take(self, document: dict[str, Any]) -> None:
        kind = document.get("kind")
        if kind == "checkpoint":
            self.checkpoints.append(Checkpoint.of_export(document))
        elif kind == "result":
            self.served.setdefault(document["position"], []).append(document)
        elif kind == "set_aside":
            self.aside.append(document)
        elif kind == "export_head":
            self.signed_head = Checkpoint.of_export(
                document, "the export's signed head", self.file_hash
            )
        elif kind == "event" and self.chain:
            self.verifier().link(_file_entry(document))
        elif kind == "event" and (payload := _payload(document)) is not None:
            # (a missing entry is the chain's finding) The stream as the chain takes it, as
            # the database's replay does: a ballot's by its 16 bytes, an election's UUID.
            event = document["type"]
            stream = _stream(document)
            self.verifier().count(
                document["position"], stream.bytes if event[0] == "B" else stream, event, payload
            )


def _reason(error: Exception) -> str:
    """Why a line does not read, in words (not a Python repr)."""
    if isinstance(error, KeyError):
        return f"it has no {error.args[0]!r}" if error.args else "a field is missing"
    return str(error) or type(error).__name__


def _lines(path: Path, read: Any) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """The file's JSON lines (None for a blank one); ``read`` (a hash) is fed each line's
    bytes once it is used."""
    with path.open("rb") as source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                yield number, None
            else:
                try:
                    document = orjson.loads(line)
                except orjson.JSONDecodeError as error:
                    raise Discrepancy(
                        None, f"line {number} of {path} is not JSON: {error}"
                    ) from None
                if not isinstance(document, dict):
                    raise Discrepancy(None, f"line {number} of {path} is not a JSON object")
                yield number, document
            read.update(line)


def _payload(document: dict[str, Any]) -> dict[str, Any] | bytes | None:
    """What an event line holds: its data (whose canonical JSON the chain hashes), or the
    bytes of a state that is not a JSON object; None: a link whose entry is gone. The
    chain and the replay take the same one, so no line can show each half something else
    (and the same stream: ``_stream``).
    """
    data = document.get("data")
    if "state_hex" not in document:
        if data is not None and not isinstance(data, dict):
            raise ValueError("an event line's data is not a JSON object")
        return data
    if data is not None:
        raise ValueError("an event line carries both data and state_hex")
    return bytes.fromhex(document["state_hex"])


def _file_entry(document: dict[str, Any]) -> Entry:
    payload = _payload(document)
    stored = document.get("hash")
    if payload is None:
        return Entry(document["position"], b"", 0, "", b"", bytes.fromhex(stored or ""))
    return Entry(
        position=document["position"],
        stream=_stream(document).bytes,
        version=document["version"],
        kind=document["type"],
        # the canonical payload, or the bytes of one that is not JSON
        state=payload if isinstance(payload, bytes) else _canonical(payload),
        stored_hash=bytes.fromhex(stored) if stored else None,
    )


def _stream(document: dict[str, Any]) -> UUID:
    """An event line's stream id, which the export writes in one way only (lower case, with
    dashes): any other text of it is an edit. The chain hashes its 16 bytes, so a text
    that reads as the same UUID (upper-cased, dashes moved) would pass the chain, and a
    replay that told streams apart by their text would count a different ballot."""
    text = document["stream_id"]
    if not isinstance(text, str) or str(UUID(text)) != text:
        raise ValueError(
            f"its stream_id {text!r} is not written as an export writes one (a UUID in "
            "lower case, with dashes): the line was edited"
        )
    return UUID(text)


def _canonical(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
