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
from infra.cli.importer import _batches, _outcome, _Outcomes, _refusals, _summary

TOKEN = "client-token"
OPTIONS = [
    {"id": "lee", "label": "Lee"},
    {"id": "smith", "label": "Smith"},
    {"id": "jones", "label": "Jones"},
]


def _read(path: Path, text: str, **options: str) -> list[FileBallot]:
    path.write_text(text)
    return list(read_ballots(path, OPTIONS, token=TOKEN, **options))  # type: ignore[arg-type]


# --- CSV: a quote not closed stops the import before anything is sent, naming its line


def test_an_unclosed_quote_stops_the_import_naming_its_line(tmp_path: Path) -> None:
    """It read as one cell to the end of the file: "0 ballots read", q40 and q50 gone."""
    cvr = tmp_path / "cvr.csv"
    text = 'voter_id,rank1,rank2\nq30,"a,b\nq40,a,b\nq50,b,a\n'
    with pytest.raises(ValueError, match=r"^line 2: a quote opened .* is never closed"):
        _read(cvr, text)


def test_a_cell_running_over_lines_stops_the_import_naming_its_line(tmp_path: Path) -> None:
    """A quote closed lines later: as many cells as the header, the lines between lost."""
    cvr = tmp_path / "cvr.csv"
    text = 'voter_id,rank1,rank2\nq1,lee,smith\nq30,"lee\nq40,lee",smith\nq50,smith,lee\n'
    with pytest.raises(ValueError, match=r"^line 3: a cell of the record .* runs on to line 4"):
        _read(cvr, text)


def test_text_after_a_closing_quote_stops_the_import_naming_its_line(tmp_path: Path) -> None:
    cvr = tmp_path / "cvr.csv"
    with pytest.raises(ValueError, match=r"^line 3: ',' expected after '\"'"):
        _read(cvr, 'voter_id,rank1,rank2\nq1,lee,smith\nq2,"lee"x,smith\n')


def test_a_quoted_cell_ending_in_a_line_break_is_still_read(tmp_path: Path) -> None:
    ballots = _read(tmp_path / "cvr.csv", 'id,rank1,rank2\n7,lee,"smith\n"\n8,smith,\n')
    assert [(b.line, b.body["ranking"]) for b in ballots] == [
        (2, ["lee", "smith"]),
        (4, ["smith"]),
    ]


# --- CSV: a record whose cells do not match the header is refused on its own


def test_a_record_with_more_cells_than_the_header_is_refused_by_its_line(
    tmp_path: Path,
) -> None:
    """`c8,Lee,Smith,Jones,Extra` was cast without a word (an unquoted "Smith, Jo" would
    shift every rank after it). A record with fewer cells is read as if the missing ones
    were blank: a cell left out at the end shifts no rank (test_import_csv_exports.py)."""
    text = "voter_id,rank1,rank2,rank3\nc7,Lee,Smith,\nc8,Lee,Smith,Jones,Extra\nc9,Jones\n"
    ballots = _read(tmp_path / "cvr.csv", text)
    assert [(b.line, b.body["voter_id"], b.refused) for b in ballots] == [
        (2, "c7", ""),
        (3, "c8", "not sent: 5 cells, where the header has 4"),
        (4, "c9", ""),
    ]
    assert ballots[0].body["ranking"] == ["lee", "smith"]
    assert "ranking" not in ballots[1].body
    assert ballots[2].body["ranking"] == ["jones"]


def test_a_refused_record_is_counted_so_correcting_it_keeps_the_later_keys(
    tmp_path: Path,
) -> None:
    header = "voter_id,rank1,rank2\n"
    broken = _read(tmp_path / "a.csv", header + "c8,Lee,Smith,Jones\nc8,Smith,Lee\n")
    fixed = _read(tmp_path / "b.csv", header + "c8,Lee,Smith\nc8,Smith,Lee\n")
    assert broken[1].key == fixed[1].key
    assert broken[0].refused
    assert not fixed[0].refused


def test_a_blank_record_with_an_extra_comma_is_still_blank(tmp_path: Path) -> None:
    reading = Reading()
    path = tmp_path / "cvr.csv"
    path.write_text("voter_id,rank1,rank2\n,,,\nc1,lee,\n")
    ballots = list(read_ballots(path, OPTIONS, token=TOKEN, reading=reading))
    assert [b.body["voter_id"] for b in ballots] == ["c1"]
    assert reading.blank == 1


# --- CSV: rank columns named twice or with a gap stop the import


@pytest.mark.parametrize(
    ("header", "said"),
    [
        ("voter_id,rank1,rank1", r"more than one column for a rank \(rank 1: 'rank1', 'rank1'\)"),
        ("voter_id,rank1,1st choice", r"rank 1: 'rank1', '1st choice'"),
        ("voter_id,rank1,rank3", r"no column for rank 2 \(the rank columns are 'rank1', 'rank3'"),
        ("voter_id,rank2,rank3", r"no column for rank 1 "),
        ("voter_id,rank1,rank99", r"no column for rank 2, 3, .*, 11 and 87 more \(the rank"),
    ],
)
def test_rank_columns_named_twice_or_with_a_gap_stop_the_import(
    tmp_path: Path, header: str, said: str
) -> None:
    """They were read as consecutive ranks: rank1,rank3 as a first and a second choice."""
    with pytest.raises(ValueError, match=said):
        _read(tmp_path / "cvr.csv", f"{header}\nc1,lee,smith\n")


# --- JSONL: read as the API reads a body


def test_a_jsonl_line_naming_a_key_twice_stops_the_import_as_the_api_refuses_it(
    tmp_path: Path,
) -> None:
    """orjson kept the last voter_id, and j2b was cast; the API refuses such a body."""
    text = (
        '{"voter_id": "j1", "choice": "lee"}\n{"voter_id":"j2","voter_id":"j2b","choice":"lee"}\n'
    )
    with pytest.raises(ValueError, match=r"^line 2 is not valid JSON: .*duplicate key"):
        _read(tmp_path / "ballots.jsonl", text)


def test_a_jsonl_value_the_import_cannot_send_is_refused_on_its_own(tmp_path: Path) -> None:
    """Read as the API reads it, an integer past 64 bits is an int that orjson (which sends
    the ballots) cannot write: refused by its line, not a crash of the import. Corrected,
    it changes the key of no later ballot of its voter."""
    big = '{"voter_id": "j1", "scores": {"lee": 123456789012345678901234567890}}\n'
    later = '{"voter_id": "j1", "scores": {"lee": 2}}\n'
    refused, after = _read(tmp_path / "a.jsonl", big + later)
    assert refused.refused == "not sent: Integer exceeds 64-bit range"
    assert not after.refused
    _, same = _read(
        tmp_path / "b.jsonl", big.replace("123456789012345678901234567890", "1") + later
    )
    assert same.key == after.key


def test_an_idempotency_key_that_is_not_a_string_is_refused_on_its_own(tmp_path: Path) -> None:
    """str() made 5 the key "5" and {"a": 1} the key "{'a': 1}"; the API wants a string."""
    lines = [
        '{"voter_id": "j1", "choice": "lee", "idempotency_key": 5}',
        '{"voter_id": "j2", "choice": "lee", "idempotency_key": {"a": 1}}',
        '{"voter_id": "j3", "choice": "lee", "idempotency_key": true}',
        '{"voter_id": "j4", "choice": "lee", "idempotency_key": "mine"}',
        '{"voter_id": "j5", "choice": "lee", "idempotency_key": null}',
    ]
    ballots = _read(tmp_path / "ballots.jsonl", "\n".join(lines) + "\n")
    assert [b.refused for b in ballots] == [
        "not sent: idempotency_key must be a string, not a number",
        "not sent: idempotency_key must be a string, not an object",
        "not sent: idempotency_key must be a string, not true or false",
        "",
        "",
    ]
    assert ballots[3].key == "mine"
    assert ballots[4].key.startswith("import-")
    assert all("idempotency_key" not in b.body for b in ballots)


# --- A ballot refused as read is settled without being sent, its voter's later lines held


def test_a_ballot_refused_as_read_is_not_sent_and_holds_its_voters_later_lines() -> None:
    ballots = [
        FileBallot(2, {"voter_id": "a", "ranking": ["lee"]}, "k2"),
        FileBallot(3, {"voter_id": "b"}, "k3", "not sent: 5 cells, where the header has 4"),
        FileBallot(4, {"voter_id": "b", "ranking": ["lee"]}, "k4"),
        FileBallot(5, {"voter_id": "c", "ranking": ["smith"]}, "k5"),
    ]
    outcomes = _Outcomes(lambda _: None)
    sent = [[b.line for b in batch] for batch in _batches(ballots, 10, outcomes)]
    assert sent == [[2, 5]]
    assert outcomes.refusals == [(3, "not sent: 5 cells, where the header has 4")]
    assert outcomes.withheld == 1  # line 4, behind line 3


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
