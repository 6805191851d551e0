"""What an auditor brings to `audit verify` from outside the store, so that a store
rewritten wholesale (log, chain and checkpoints, re-sealed with the real key) cannot pass:

- ``--previous FILE``: an earlier export; every checkpoint it holds, and its own signed
  head (which also signs the file: chain.py), must still be on the chain, signing the
  same head at the same position (an export of format 1 written before exports ended with
  a signed head pins its checkpoints alone, and only with ``--accept-format-1``);
- ``--served FILE``: results documents saved as the API served them (a JSON document, an
  array of them, or one per line); each must equal the replay at the position it states,
  and the final chain head published with a closed election's results must be on the chain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from infra.audit.export_file import FORMAT_1
from infra.audit.verifier import FINAL_HEAD, PREVIOUS_CHECKPOINT, PREVIOUS_HEAD, Checkpoint


class PinnedError(ValueError):
    """A file given to pin the audit that does not read as one (a person can act on it)."""


@dataclass(frozen=True)
class Pinned:
    checkpoints: tuple[Checkpoint, ...] = ()
    served: tuple[dict[str, Any], ...] = ()
    # what the files brought pin less than they covered (for the report's notes)
    notes: tuple[str, ...] = ()

    def served_at(self) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {}
        for document in self.served:
            found.setdefault(int(document["position"]), []).append(document)
        return found


NOTHING_PINNED = Pinned()


def pinned(previous: list[Path], served: list[Path], *, accept_format_1: bool = False) -> Pinned:
    checkpoints: list[Checkpoint] = []
    documents: list[dict[str, Any]] = []
    notes: list[str] = []
    for path in previous:
        earlier = earlier_export(path, accept_format_1=accept_format_1)
        checkpoints.extend(earlier.checkpoints)
        if earlier.note is not None:
            notes.append(earlier.note)
    for path in served:
        saved, heads = saved_results(path)
        documents.extend(saved)
        checkpoints.extend(heads)
    return Pinned(tuple(checkpoints), tuple(documents), tuple(notes))


@dataclass(frozen=True)
class Earlier:
    """What an earlier export pins, and a note where that is less than it covered."""

    checkpoints: list[Checkpoint]
    note: str | None = None


def earlier_checkpoints(path: Path, *, accept_format_1: bool = False) -> list[Checkpoint]:
    return earlier_export(path, accept_format_1=accept_format_1).checkpoints


def earlier_export(path: Path, *, accept_format_1: bool = False) -> Earlier:
    """The checkpoints of an earlier export, and its own signed head at its end: all of
    them must still be on the chain (the head covers what came after the last checkpoint).
    An export of format 1 written before exports ended with a signed head (before commit
    3cc8d44, 2026-12-06) has its checkpoints alone: with ``accept_format_1`` they are what
    it pins, said in a note; without, it is refused, as one cut short is."""
    found: list[Checkpoint] = []
    origin = f"the earlier export {path}"
    read = hashlib.sha256()
    try:
        with path.open("rb") as source:
            first = source.readline()
            header = orjson.loads(first or b"null")
            if not isinstance(header, dict) or header.get("kind") != "header":
                raise PinnedError(f"{path} is not an export: it does not start with its header")
            signs_file = header.get("format") != FORMAT_1
            read.update(first)
            ended = False  # at its signed head: nothing may follow
            for number, line in enumerate(source, 2):
                if ended:
                    raise PinnedError(
                        f"line {number} of {path} follows its signed head, where the export "
                        "ends: the file was added to"
                    )
                # (events, most of the file, are told by their start, unparsed)
                start = line[:48]
                if b"checkpoint" in start or b"export_head" in start:
                    document = orjson.loads(line)
                    kind = document.get("kind")
                    if kind not in ("checkpoint", "export_head"):
                        read.update(line)
                        continue
                    head = kind == "export_head"
                    ended = head
                    try:
                        found.append(
                            Checkpoint.of_export(
                                document,
                                f"the signed head of {origin}" if head else origin,
                                read.digest() if head and signs_file else None,
                                PREVIOUS_HEAD if head else PREVIOUS_CHECKPOINT,
                            )
                        )
                    except (KeyError, TypeError, ValueError) as error:
                        raise PinnedError(
                            f"line {number} of {path} is not a checkpoint ({error!r})"
                        ) from None
                read.update(line)
    except OSError as error:
        raise PinnedError(f"cannot read {path}: {error.strerror}") from None
    except (orjson.JSONDecodeError, AttributeError) as error:
        raise PinnedError(f"{path} is not an export (not JSON lines: {error})") from None
    if ended:
        return Earlier(found)
    # Its checkpoints alone would pin less than it covered, silently.
    if signs_file:
        raise PinnedError(
            f"{path} does not end with its signed head (a copy cut short, or an export "
            "written without CARDINAL_AUDIT_KEY): it cannot pin what it covered"
        )
    # Format 1 without a head: as written before exports ended with one, or a copy cut
    # short at a checkpoint and labelled so (nothing tells them apart, as for --file).
    if not found:
        raise PinnedError(
            f"{path} is in the format {FORMAT_1} and holds no signed checkpoint and no "
            "signed head at its end: it pins nothing"
        )
    last = max(checkpoint.position for checkpoint in found)
    upto = header.get("head")
    tail = f" (to position {upto:,}, as its header says)" if isinstance(upto, int) else ""
    if not accept_format_1:
        raise PinnedError(
            f"{path} is in the format {FORMAT_1} and has no signed head at its end, as "
            "exports written before 2026-12-06 (commit 3cc8d44) did not: it can pin only "
            f"its signed checkpoints, up to position {last:,}, not the entries after it"
            f"{tail}; give --accept-format-1 to have it pin that much (a copy of a newer "
            "export cut at a checkpoint and labelled format 1 reads the same)"
        )
    return Earlier(
        found,
        f"the earlier export {path} is in the format {FORMAT_1}, written before exports "
        f"ended with a signed head: it pins its signed checkpoints, up to position "
        f"{last:,}, and not the entries after it{tail}",
    )


def saved_results(path: Path) -> tuple[list[dict[str, Any]], list[Checkpoint]]:
    """Results documents saved from the API, and the final chain heads they publish."""
    try:
        text = path.read_bytes()
    except OSError as error:
        raise PinnedError(f"cannot read {path}: {error.strerror}") from None
    try:
        whole = orjson.loads(text)
        documents = whole if isinstance(whole, list) else [whole]
    except orjson.JSONDecodeError:
        try:
            documents = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        except orjson.JSONDecodeError as error:
            raise PinnedError(
                f"{path} holds neither a JSON document, nor an array of them, nor one per "
                f"line ({error})"
            ) from None
    heads: list[Checkpoint] = []
    for index, document in enumerate(documents, 1):
        if not (
            isinstance(document, dict)
            and isinstance(document.get("election_id"), str)
            and isinstance(document.get("position"), int)
        ):
            raise PinnedError(
                f"document {index} of {path} is not a results document as the API serves it "
                "(it needs election_id and position)"
            )
        head = document.get("final_chain_head")
        if head is not None:
            try:
                heads.append(
                    Checkpoint(
                        int(head["checkpoint_id"]),
                        int(head["position"]),
                        bytes.fromhex(head["hash"]),
                        str(head["key_id"]),
                        bytes.fromhex(head["signature"]),
                        f"the final chain head of election {document['election_id']} in {path}",
                        pin=FINAL_HEAD,
                    )
                )
            except (KeyError, TypeError, ValueError) as error:
                raise PinnedError(
                    f"document {index} of {path}: its final_chain_head does not read ({error!r})"
                ) from None
    return documents, heads
