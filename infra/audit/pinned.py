"""What an auditor brings to `audit verify` from outside the store, so that a store
rewritten wholesale (log, chain and checkpoints, re-sealed with the real key) cannot pass:

- ``--previous FILE``: an earlier export; every checkpoint it holds, and its own signed
  head (which also signs the file: chain.py), must still be on the chain, signing the
  same head at the same position;
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

from infra.audit.verifier import Checkpoint


class PinnedError(ValueError):
    """A file given to pin the audit that does not read as one (a person can act on it)."""


@dataclass(frozen=True)
class Pinned:
    checkpoints: tuple[Checkpoint, ...] = ()
    served: tuple[dict[str, Any], ...] = ()

    def served_at(self) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {}
        for document in self.served:
            found.setdefault(int(document["position"]), []).append(document)
        return found


NOTHING_PINNED = Pinned()


def pinned(previous: list[Path], served: list[Path]) -> Pinned:
    checkpoints: list[Checkpoint] = []
    documents: list[dict[str, Any]] = []
    for path in previous:
        checkpoints.extend(earlier_checkpoints(path))
    for path in served:
        saved, heads = saved_results(path)
        documents.extend(saved)
        checkpoints.extend(heads)
    return Pinned(tuple(checkpoints), tuple(documents))


def earlier_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoints of an earlier export, and its own signed head at its end: all of
    them must still be on the chain (the head covers what came after the last checkpoint)."""
    found: list[Checkpoint] = []
    origin = f"the earlier export {path}"
    read = hashlib.sha256()
    try:
        with path.open("rb") as source:
            first = source.readline()
            header = orjson.loads(first or b"null")
            if not isinstance(header, dict) or header.get("kind") != "header":
                raise PinnedError(f"{path} is not an export: it does not start with its header")
            signs_file = header.get("format") != "cardinal-audit/1"
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
    if not ended:
        # Its checkpoints alone would pin less than it covered, silently.
        raise PinnedError(
            f"{path} does not end with its signed head (a copy cut short, or an export "
            "written without CARDINAL_AUDIT_KEY): it cannot pin what it covered"
        )  # (format 1 too: its head at least pins the chain at its end)
    return found


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
                    )
                )
            except (KeyError, TypeError, ValueError) as error:
                raise PinnedError(
                    f"document {index} of {path}: its final_chain_head does not read ({error!r})"
                ) from None
    return documents, heads
