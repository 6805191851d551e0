"""Ballot files an election office hands over, read as ballot bodies for the bulk path.

- **JSONL**: one ballot per line, shaped as ``POST .../ballots`` takes it (``voter_id`` and
  the method's field), with an optional ``idempotency_key``.
- **CSV cast vote records**, as jurisdictions publish them (Minneapolis 2017's, for one):
  a column per rank (``rank1``..``rankN``, or ``1st choice``..), each holding a candidate
  (an option's id or label, in any case and however many spaces within), ``overvote``,
  ``undervote`` or empty, a write-in mark (``UWI``, ``Write-in``), or another name that
  matches no option (``Reading.unknown`` counts these, for the import to refuse unless told
  what they do). A name written exactly as an option's id is that option, whatever another
  option's label says; any other name that matches more than one option (two options
  labelled "Smith", or one's id and another's label in another case) is ambiguous:
  ``Reading.ambiguous`` counts these, with the options each matches, for the import to
  refuse, as no rule can say which option the voter meant. Marks become a ranking by the
  rules chosen (``domain.cvr``). An optional ``voter_id``, ``ballot_id``, ``cvr_id`` or
  ``id`` column names the voter.

A ballot is named by its voter: the file's ``voter_id`` (or the CVR's voter column), else,
in a CVR record that names no voter, ``SOURCE`` and the record's number in the file
(``--source``: a name for the file's ballots that stays the same from one import to the
next). Its idempotency key is an HMAC, keyed by the client token the import sends with, of
its voter, its content and how many of its voter's ballots come before it in the file
(keyed, so that no one without the token can compute a ballot's key from a guess of its
vote and learn, by a replay, whether the guess was right). So importing a file again with
the same token counts nothing twice, and neither does importing it corrected, completed
with more rows, or saved again with other line endings: an unchanged ballot is replayed, a
corrected one revises its voter's (or is refused where revoting is off), a new one is cast.
A CVR without voter ids must keep its records in order (append, do not reorder or delete).

In an election whose voter ids are compared after Unicode NFC normalisation (``voter_ids``
"nfc" in the election's rules: every election created since 2026-12-06), each voter id is
normalised to NFC as it is read, before its key is made: the API takes "José" typed
precomposed and with a combining accent as one voter, and so does the import (one key,
one lane, one count of earlier ballots), whichever form the file, or a file saved again
elsewhere, holds. In an older election ("exact"), voter ids are read as written.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from api.context import json_document
from api.problems import MalformedBody
from domain.cvr import Marker, MarkRules, ranking

RANK_COLUMN = re.compile(r"^\s*(?:rank\s*_?(\d+)|(\d+)\s*(?:st|nd|rd|th)\b.*)\s*$", re.IGNORECASE)
VOTER_COLUMNS = ("voter_id", "ballot_id", "cvr_id", "id")
OVERVOTES = {"overvote", "over vote", "ov"}
UNDERVOTES = {"", "undervote", "under vote", "uv", "skipped", "blank"}
# Marks a CVR uses on purpose for a write-in (Minneapolis's UWI, "undeclared write-in"):
# these follow --write-in; any other name that matches no option is listed as unknown.
WRITE_INS = {"uwi", "write-in", "write in", "writein", "undeclared write-in", "write-ins"}


@dataclass
class FileBallot:
    """One ballot from a file: its line, its body for the API, and its idempotency key;
    ``refused``, if not empty, why it is not sent at all (a record of a CSV whose cells do
    not match its header; a JSONL line whose idempotency_key is not a string, or that
    orjson cannot write): the import refuses it on its own, by its line, as the API refuses
    an invalid ballot."""

    line: int
    body: dict[str, Any]
    key: str
    refused: str = ""


@dataclass
class Reading:
    """What reading a file found besides ballots: blank ballots, unusual marks, the names
    that match no option and those that match more than one (as written, spaces collapsed)
    with their counts, and the ids of the options each ambiguous name matches."""

    blank: int = 0
    marks: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    ambiguous: Counter[str] = field(default_factory=Counter)
    matching: dict[str, tuple[str, ...]] = field(default_factory=dict)


class NeedsSource(ValueError):
    """A CVR that names no voter, read without a source to name its ballots by."""


def read_ballots(
    path: Path,
    options: Sequence[dict[str, str]],
    *,
    rules: MarkRules | None = None,
    reading: Reading | None = None,
    source: str | None = None,
    token: str,
    voter_ids: str = "exact",
) -> Iterator[FileBallot]:
    """The ballots in a JSONL or CSV file (by its suffix), in file order, keyed by
    ``token`` (the client token they are sent with); ``voter_ids`` is the election's rule
    for voter ids ("nfc": normalised to NFC as read)."""
    content = path.read_bytes()
    found = reading if reading is not None else Reading()
    voters = _Voters(token, normalise=voter_ids == "nfc")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        yield from _jsonl(content, voters)
    else:
        text = _text(content)
        yield from _csv(text, options, rules or MarkRules(), found, source, voters=voters)


def ballot_key(body: dict[str, Any], earlier: int, token: str) -> str:
    """An import's idempotency key for a ballot: an HMAC-SHA256, keyed by the client token
    it is sent with, of its voter, its content, and how many ballots of its voter come
    before it in the file (so that a voter's A, B, then A again is three changes, not a
    replay of the first), so that the same ballot sent again is replayed, however the file
    around it changed."""
    content = orjson.dumps([body, earlier], option=orjson.OPT_SORT_KEYS)
    return f"import-{hmac.new(token.encode(), content, hashlib.sha256).hexdigest()[:32]}"


class _Voters:
    """How many ballots of each voter a file has shown so far."""

    def __init__(self, token: str, *, normalise: bool = False) -> None:
        self.token = token
        self.normalise = normalise  # the election's voter ids are NFC-normalised
        self.seen: Counter[str] = Counter()

    def name(self, body: dict[str, Any]) -> None:
        """In an "nfc" election, make the ballot's voter id NFC (in the body sent, too), so
        that the two forms of one name are one voter here (its key, its lane) as there."""
        if self.normalise and isinstance(body.get("voter_id"), str):
            body["voter_id"] = unicodedata.normalize("NFC", body["voter_id"])

    def key(self, body: dict[str, Any]) -> str:
        return ballot_key(body, self.count(body), self.token)

    def count(self, body: dict[str, Any]) -> int:
        """Count the ballot as its voter's; how many of theirs came before it."""
        self.name(body)
        voter = str(body.get("voter_id"))
        earlier = self.seen[voter]
        self.seen[voter] += 1
        return earlier


def _text(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        raise ValueError(
            f"line {line} is not UTF-8 (byte 0x{content[error.start]:02x}): save the file as "
            "UTF-8 (CSV UTF-8 in a spreadsheet) and import it again"
        ) from None


def _jsonl(content: bytes, voters: _Voters) -> Iterator[FileBallot]:
    """Each line read as the API reads a body (``json_document``: a key named twice, which
    parsers resolve differently, makes a line not JSON; so does NaN), and its
    idempotency_key as the API takes it: a string, or absent (null)."""
    content = content.removeprefix(b"\xef\xbb\xbf")  # a byte order mark, as some editors add
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            body = json_document(line, f"line {number}")
        except MalformedBody as error:
            raise ValueError(str(error)) from None
        if not isinstance(body, dict):
            raise ValueError(f"line {number} is not a JSON object")
        given = body.pop("idempotency_key", None)
        voters.name(body)
        if given is not None and not isinstance(given, str):
            # str() made 5 or {"a": 1} a key, where the API refuses such a body
            refused = f"not sent: idempotency_key must be a string, not {_json_kind(given)}"
            yield FileBallot(number, body, "", refused)
            continue
        try:  # what orjson, which sends it, cannot write (jiter reads it, as the API does)
            orjson.dumps(body)  # an integer past 64 bits, a lone surrogate ("\ud800")
        except orjson.JSONEncodeError as error:
            if given is None:
                voters.count(body)  # (as a ballot of its voter: corrected, it changes no key)
            yield FileBallot(number, body, "", f"not sent: {error}")
            continue
        yield FileBallot(number, body, voters.key(body) if given is None else given)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return "an object" if isinstance(value, dict) else "an array"


def _csv(
    text: str,
    options: Sequence[dict[str, str]],
    rules: MarkRules,
    found: Reading,
    source: str | None,
    *,
    voters: _Voters,
) -> Iterator[FileBallot]:
    """The records of a CVR. Its structure broken (a quote not closed, which would read the
    rest of the file as one cell; text after a closing quote; rank columns named twice or
    with one missing), it stops the import before anything is sent (a ValueError naming the
    line). A record is read against the header's columns, less those at its end that have
    no name (a trailing comma): one with fewer cells as if the missing ones were blank (a
    cell left out at the end shifts no rank), one with more cells only if those past the
    header's are blank (a trailing comma again). A record with more cells that are not (a
    name with a comma, not quoted: its ranks would be read shifted) is refused on its own,
    by its line, and the others are read; if every record is refused so, with as many
    cells, the import stops instead, naming the header as what is wrong."""
    lines = _Lines(text)
    reader = csv.reader(lines)  # not strict: _record checks the quotes as strict would
    header = _record(reader, lines, 0) or []
    columns = header[: _used(header)]  # a trailing comma names no column
    ranks = sorted(
        (
            (int(m.group(1) or m.group(2)), i)
            for i, c in enumerate(columns)
            if (m := RANK_COLUMN.match(c))
        ),
    )
    if not ranks:
        raise ValueError(
            "no rank columns: a CVR needs columns named rank1..rankN (or 1st choice..)"
        )
    _check_ranks(ranks, columns)
    voter_column = next(
        (i for i, c in enumerate(columns) if c.strip().lower() in VOTER_COLUMNS), None
    )
    if voter_column is None and not source:
        raise NeedsSource(
            f"this CVR names no voter (no {', '.join(VOTER_COLUMNS)} column): give --source, "
            "a name for this file's ballots that stays the same when you import it again "
            "(a precinct, a batch), and each ballot is named by it and its record's number"
        )
    names = _option_names(options)
    record = 0
    misfits: list[FileBallot] = []  # refused records, held until one record fits
    fitted = False
    while True:
        ended = reader.line_num  # the last line read so far: a record starts after it
        row = _record(reader, lines, ended)
        if row is None:
            break
        if not row:
            continue  # an empty line is no record
        record += 1
        cells = _used(row)  # (blank cells at the end, a trailing comma, change nothing)
        misfit = cells > len(columns)
        marks = [] if misfit else [_mark(_cell(row, i), names, found) for _, i in ranks]
        ranked = [] if misfit else ranking(marks, rules)
        if not ranked and not misfit:
            found.blank += 1
            continue
        voter = _cell(row, voter_column).strip() if voter_column is not None else ""
        if not voter and not source:
            raise NeedsSource(
                f"the record on line {ended + 1} names no voter: give --source, a name for this "
                "file's ballots that stays the same when you import it again (a precinct, a "
                "batch), and each ballot without a voter is named by it and its record's number"
            )
        if misfit:
            body: dict[str, Any] = {"voter_id": voter or f"cvr-{source}-{record}"}
            if _cast_before(row, ranks, names, rules):
                voters.count(body)
            misfits.append(
                FileBallot(
                    ended + 1,
                    body,
                    "",
                    f"not sent: {cells} cells, where the header has {len(columns)}",
                )
            )
            if fitted:
                yield from misfits
                misfits.clear()
            continue
        fitted = True
        yield from misfits
        misfits.clear()
        body = {"voter_id": voter or f"cvr-{source}-{record}", "ranking": ranked}
        yield FileBallot(ended + 1, body, voters.key(body))
    _check_header(misfits, columns)
    yield from misfits


def _cast_before(
    row: list[str], ranks: list[tuple[int, int]], names: _Names, rules: MarkRules
) -> bool:
    """Whether the release before records with cells past the header's were refused cast
    this one (its ranks read by position, those cells left out; a blank one not). A refused
    record counts among its voter's ballots only then, so that neither correcting it nor
    importing again a file that release imported changes the key of any ballot after it."""
    aside = Reading()  # (what this reading finds is not this file's)
    return bool(ranking([_mark(_cell(row, i), names, aside) for _, i in ranks], rules))


def _check_header(misfits: list[FileBallot], columns: list[str]) -> None:
    """Every record (of two or more) refused with as many cells past the header's is not
    said record by record: the header is what names too few columns."""
    if len(misfits) > 1 and len({b.refused for b in misfits}) == 1:
        raise ValueError(
            f"every record has more cells than the header has columns "
            f"({misfits[0].refused.removeprefix('not sent: ')}: "
            f"{_some(repr(c.strip()) for c in columns)}): name each of the records' columns "
            "in the header and import the file again"
        )


class _Lines:
    """The lines of a CVR's text, as its reader takes them, a lone carriage return (an old
    Mac's line end) ending a line as a line feed does; ``taken``, those of the record being
    read."""

    def __init__(self, text: str) -> None:
        self._lines = io.StringIO(text, newline=None)  # \r\n and \r read as \n
        self.taken: list[str] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.taken.append(line)
        return line


def _used(row: list[str]) -> int:
    """How many cells of ``row`` there are up to its last that is not blank."""
    cells = len(row)
    while cells and not row[cells - 1].strip():
        cells -= 1
    return cells


def _record(reader: Any, lines: _Lines, ended: int) -> list[str] | None:
    """The next record of ``reader`` (None at the end of the file), whose last line read
    was ``ended``: a ValueError, naming the line, if a quote breaks the file's structure,
    there or in a cell that runs on over a line break (a quote not closed where it should
    be: the lines after it would be read as part of the cell, their records lost)."""
    lines.taken.clear()
    try:
        row: list[str] | None = next(reader, None)
    except csv.Error as error:  # (a cell past the csv module's field size limit)
        raise ValueError(f"line {reader.line_num}: {error}") from None
    if any('"' in line for line in lines.taken):
        _quotes(lines.taken, ended)
    if (
        row is not None
        and reader.line_num > ended + 1
        and any("\n" in cell.strip() or "\r" in cell.strip() for cell in row)
    ):
        raise ValueError(
            f"line {ended + 1}: a cell of the record that starts there runs on to line "
            f"{reader.line_num} (a quote not closed where it should be?): a CVR's names "
            "hold no line breaks; correct it and import the file again"
        )
    return row


def _quotes(taken: list[str], ended: int) -> None:
    """A ValueError, naming the line, if the lines of a record that starts after line
    ``ended`` hold a quote never closed (the rest of the file read as one cell) or text
    other than spaces after a closing quote (``"Lee"x``: a cell glued together); spaces
    there (``"Lee" ,``, which a strict reader refuses) are read as part of the cell, which
    a name's match ignores. (The csv module reads them strictly first, fast, and only a
    record it refuses is looked at closely.)"""
    try:
        for _ in csv.reader(taken, strict=True):
            pass
    except csv.Error:
        unclosed, glued = _scan(taken)
        if glued:
            raise ValueError(
                f"line {ended + glued}: ',' expected after '\"' (a quoted cell must end at "
                "its closing quote; double a quote meant as text)"
            ) from None
        if unclosed:
            raise ValueError(
                f"line {ended + 1}: a quote opened in the record that starts there is never "
                "closed, so the rest of the file would be read as one cell; close it (or "
                "double a quote meant as text) and import the file again"
            ) from None


def _scan(taken: list[str]) -> tuple[bool, int]:
    """Whether the lines of a record end in a quoted cell (its quote never closed), and the
    line (1 for the first of ``taken``) where text other than spaces follows a closing
    quote, or 0; read as the csv module reads a record: a quote opens a quoted cell only
    where the cell starts, and two quotes in one stand for one."""
    quoted = after = False
    start = True  # at the start of a cell
    for number, line in enumerate(taken, start=1):
        at = 0
        while at < len(line):
            char = line[at]
            if quoted:
                if char == '"' and line[at + 1 : at + 2] == '"':
                    at += 1
                elif char == '"':
                    quoted, after = False, True
            elif char in ",\n":
                after, start = False, True
            elif after:
                if not char.isspace():
                    return False, number
            else:
                quoted, start = char == '"' and start, False
            at += 1
    return quoted, 0


def _check_ranks(ranks: list[tuple[int, int]], columns: list[str]) -> None:
    """Rank columns named twice, or with one missing, stop the import: read in order,
    they would be taken for consecutive ranks (rank1,rank3 for a first and second)."""
    numbers = Counter(number for number, _ in ranks)
    twice = [n for n, count in sorted(numbers.items()) if count > 1]
    if twice:
        named = "; ".join(
            f"rank {n}: " + ", ".join(repr(columns[i].strip()) for m, i in ranks if m == n)
            for n in twice
        )
        raise ValueError(
            f"more than one column for a rank ({named}): a CVR needs one column for each rank"
        )
    missing = [n for n in range(1, max(numbers) + 1) if n not in numbers]
    if missing:
        raise ValueError(
            f"no column for rank {_some(map(str, missing))} (the rank columns are "
            f"{_some(repr(columns[i].strip()) for _, i in ranks)}): a CVR needs one column "
            f"for each rank from 1 to {max(numbers)}"
        )


def _some(items: Iterable[str], shown: int = 10) -> str:
    """The first ``shown`` of ``items``, and how many more (a header's rank999 alone would
    otherwise list 998 missing ranks)."""
    listed = list(items)
    more = f" and {len(listed) - shown:,} more" if len(listed) > shown else ""
    return ", ".join(listed[:shown]) + more


def _cell(row: list[str], index: int) -> str:
    return row[index] if index < len(row) else ""


def _name(text: str) -> str:
    """A name as it is matched: in any case, with its spaces collapsed ("Jacob  Frey")."""
    return " ".join(text.split()).casefold()


@dataclass(frozen=True)
class _Names:
    """How a cell's name finds its option: written exactly as an option's id, that option;
    else by its matched form (``_name``), the options whose id or label has that form,
    more than one making the name ambiguous."""

    ids: frozenset[str]
    matches: dict[str, tuple[str, ...]]


def _option_names(options: Sequence[dict[str, str]]) -> _Names:
    matches: dict[str, list[str]] = {}
    for option in options:
        for text in (option["id"], option["label"]):
            found = matches.setdefault(_name(text), [])
            if option["id"] not in found:
                found.append(option["id"])
    return _Names(
        ids=frozenset(option["id"] for option in options),
        matches={name: tuple(ids) for name, ids in matches.items()},
    )


def _mark(cell: str, names: _Names, found: Reading) -> str | Marker:
    written = " ".join(cell.split())
    if written in names.ids:
        return written
    text = _name(cell)
    matched = names.matches.get(text, ())
    if len(matched) == 1:
        return matched[0]
    if matched:
        found.marks[f"matches more than one option: {written}"] += 1
        found.ambiguous[written] += 1
        found.matching[written] = matched
        return Marker.UNKNOWN
    if text in OVERVOTES:
        found.marks["overvote"] += 1
        return Marker.OVERVOTE
    if text in UNDERVOTES:
        return Marker.UNDERVOTE
    if text in WRITE_INS:
        found.marks[f"write-in: {written}"] += 1
    else:
        found.marks[f"matches no option: {written}"] += 1
        found.unknown[written] += 1
    return Marker.UNKNOWN
