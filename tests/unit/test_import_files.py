"""`cardinal import` reading files no looser than the API reads a body, and printing what
it read safely (review of the import: an unclosed quote swallowing the rest of a CSV,
records with more cells than the header, rank headers named twice or with a gap, JSONL
keys named twice, idempotency keys that are not strings, refusals named by their place in
a request, control characters printed raw)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from infra.cli.ballot_files import FileBallot, Reading, read_ballots
from infra.cli.importer import _outcome, _refusals, _summary

TOKEN = "client-token"
OPTIONS = [
    {"id": "lee", "label": "Lee"},
    {"id": "smith", "label": "Smith"},
    {"id": "jones", "label": "Jones"},
]


def _read(path: Path, text: str, **options: str) -> list[FileBallot]:
    path.write_text(text)
    return list(read_ballots(path, OPTIONS, token=TOKEN, **options))  # type: ignore[arg-type]


# --- Refusals named by the field, not by the ballot's place in the request


def test_a_refusal_names_the_field_not_the_ballots_place_in_the_request(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`ballots[3].extra: ...` and `ballots[7].extra: ...` were two rows of the summary."""
    said = [
        _outcome({"status": 422, "detail": f"ballots[{n}].extra: Extra inputs are not permitted"})
        for n in (3, 7)
    ]
    assert said == ["422: extra: Extra inputs are not permitted"] * 2
    whole = _outcome({"status": 422, "detail": "ballots[0]: must be a JSON object"})
    assert whole == "422: the ballot: must be a JSON object"
    _summary(tmp_path / "b.jsonl", Counter(said), Reading(), 2, 0.1)
    out = capsys.readouterr().out
    assert out.count("extra: Extra inputs are not permitted") == 1
    assert "ballots[" not in out


# --- Control characters from the file are not printed raw


def test_control_characters_in_the_summary_and_refusals_are_printed_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A CSV cell `\\x1b[31mEVIL\\x1b[0m` recoloured the operator's terminal."""
    reading = Reading()
    reading.marks["matches no option: \x1b[31mEVIL\x1b[0m"] += 1
    reading.marks["matches no option: Lee\x00\x9b"] += 1
    refused = "422: option '\x1b]0;pwned\x07' is not one of the election's"
    _summary(tmp_path / "cvr.csv", Counter({refused: 1}), reading, 1, 0.1)
    _refusals(tmp_path / "cvr.csv", [(4, refused)])
    out = capsys.readouterr().out
    assert not [c for c in out if (ord(c) < 32 and c != "\n") or 127 <= ord(c) < 160]
    assert "\\x1b[31mEVIL\\x1b[0m" in out
    assert "Lee\\x00\\x9b" in out
    assert "line 4: 422: option '\\x1b]0;pwned\\x07'" in out
