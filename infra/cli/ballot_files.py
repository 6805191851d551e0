"""Ballot files an election office hands over, read as ballot bodies for the bulk path.

- **JSONL**: one ballot per line, shaped as ``POST .../ballots`` takes it (``voter_id`` and
  the method's field), with an optional ``idempotency_key``.
- **CSV cast vote records**, as jurisdictions publish them (Minneapolis 2017's, for one):
  a column per rank (``rank1``..``rankN``, or ``1st choice``..), each holding a candidate
  (an option's id or label, in any case), ``overvote``, ``undervote`` or empty, or a
  write-in. Marks become a ranking by the rules chosen (``domain.cvr``). An optional
  ``voter_id``, ``ballot_id``, ``cvr_id`` or ``id`` column names the voter.

Every ballot gets an idempotency key derived from the file's content and the ballot's line,
so that importing the same file again (after a failure half-way, say) counts nothing twice.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from domain.cvr import Marker, MarkRules, ranking

RANK_COLUMN = re.compile(r"^\s*(?:rank\s*_?(\d+)|(\d+)\s*(?:st|nd|rd|th)\b.*)\s*$", re.IGNORECASE)
VOTER_COLUMNS = ("voter_id", "ballot_id", "cvr_id", "id")
OVERVOTES = {"overvote", "over vote", "ov"}
UNDERVOTES = {"", "undervote", "under vote", "uv", "skipped", "blank"}


@dataclass
class FileBallot:
    """One ballot from a file: its line, its body for the API, and its idempotency key."""

    line: int
    body: dict[str, Any]
    key: str


@dataclass
class Reading:
    """What reading a file found besides ballots: blank ballots and unusual marks."""

    blank: int = 0
    marks: Counter[str] = field(default_factory=Counter)


def read_ballots(
    path: Path,
    options: Sequence[dict[str, str]],
    *,
    rules: MarkRules | None = None,
    reading: Reading | None = None,
) -> Iterator[FileBallot]:
    """The ballots in a JSONL or CSV file (by its suffix), in file order."""
    content = path.read_bytes()
    digest = hashlib.sha256(content).hexdigest()[:16]
    found = reading if reading is not None else Reading()
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        yield from _jsonl(content, digest)
    else:
        yield from _csv(content.decode("utf-8-sig"), digest, options, rules or MarkRules(), found)


def _jsonl(content: bytes, digest: str) -> Iterator[FileBallot]:
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"line {number} is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise ValueError(f"line {number} is not a JSON object")
        key = str(body.pop("idempotency_key", f"import-{digest}-{number}"))
        yield FileBallot(number, body, key)


def _csv(
    text: str, digest: str, options: Sequence[dict[str, str]], rules: MarkRules, found: Reading
) -> Iterator[FileBallot]:
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    ranks = sorted(
        ((int(m.group(1) or m.group(2)), c) for c in columns if (m := RANK_COLUMN.match(c))),
    )
    if not ranks:
        raise ValueError(
            "no rank columns: a CVR needs columns named rank1..rankN (or 1st choice..)"
        )
    voter_column = next((c for c in columns if c.strip().lower() in VOTER_COLUMNS), None)
    names = _option_names(options)
    for number, row in enumerate(reader, start=2):
        marks = [_mark(row.get(column) or "", names, found) for _, column in ranks]
        ranked = ranking(marks, rules)
        if not ranked:
            found.blank += 1
            continue
        voter = (row.get(voter_column) or "").strip() if voter_column else ""
        body = {"voter_id": voter or f"cvr-{digest}-{number}", "ranking": ranked}
        yield FileBallot(number, body, f"import-{digest}-{number}")


def _option_names(options: Sequence[dict[str, str]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for option in options:
        names[option["label"].strip().casefold()] = option["id"]
        names[option["id"].casefold()] = option["id"]
    return names


def _mark(cell: str, names: dict[str, str], found: Reading) -> str | Marker:
    text = cell.strip().casefold()
    if text in names:
        return names[text]
    if text in OVERVOTES:
        found.marks["overvote"] += 1
        return Marker.OVERVOTE
    if text in UNDERVOTES:
        return Marker.UNDERVOTE
    found.marks[f"write-in or unknown: {cell.strip()}"] += 1
    return Marker.UNKNOWN
