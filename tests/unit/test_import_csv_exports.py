"""`cardinal import` reading CSV files as spreadsheets and exporters write them (merge review
of the strict reading, 4be5e7f): a trailing comma on the header or on the records, trailing
empty cells left out, a space after a closing quote and old Mac line ends were all refused,
where the release before imported them; what the strict reading stops (an unclosed quote,
text glued to a closing quote, a record with more cells that are not blank) it still stops."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.cli.ballot_files import FileBallot, Reading, read_ballots

TOKEN = "client-token"
OPTIONS = [
    {"id": "pizza", "label": "Pizza"},
    {"id": "sushi", "label": "Sushi"},
    {"id": "tacos", "label": "Tacos"},
]
READ = [["pizza", "sushi", "tacos"], ["sushi", "pizza"], ["tacos"]]


def _read(path: Path, text: str, reading: Reading | None = None) -> list[FileBallot]:
    path.write_bytes(text.encode())
    return list(read_ballots(path, OPTIONS, token=TOKEN, source="w1", reading=reading))


def _rankings(ballots: list[FileBallot]) -> list[list[str]]:
    assert [b.refused for b in ballots] == [""] * len(ballots)
    return [b.body["ranking"] for b in ballots]


@pytest.mark.parametrize(
    "text",
    [
        # a header with a trailing comma: "not sent: 4 cells, where the header has 5", all 3
        "Precinct,Rank1,Rank2,Rank3,\nP-1,Pizza,Sushi,Tacos\nP-1,Sushi,Pizza,\nP-2,Tacos,,\n",
        # records with a trailing comma, under a header without one
        "Precinct,Rank1,Rank2,Rank3\nP-1,Pizza,Sushi,Tacos,\nP-1,Sushi,Pizza,,\nP-2,Tacos,,,\n",
        # trailing empty cells left out
        "Precinct,Rank1,Rank2,Rank3\nP-1,Pizza,Sushi,Tacos\nP-1,Sushi,Pizza\nP-2,Tacos\n",
        # both, and a header with two trailing commas
        "Precinct,Rank1,Rank2,Rank3,,\nP-1,Pizza,Sushi,Tacos,,\nP-1,Sushi,Pizza\nP-2,Tacos,\n",
    ],
)
def test_trailing_commas_and_left_out_trailing_cells_are_read(tmp_path: Path, text: str) -> None:
    assert _rankings(_read(tmp_path / "hdr.csv", text)) == READ


def test_the_same_records_have_the_same_keys_with_or_without_a_trailing_comma(
    tmp_path: Path,
) -> None:
    plain = "Precinct,Rank1,Rank2,Rank3\nP-1,Pizza,Sushi,Tacos\nP-1,Sushi,Pizza,\nP-2,Tacos,,\n"
    commas = "Precinct,Rank1,Rank2,Rank3,\nP-1,Pizza,Sushi,Tacos,\nP-1,Sushi,Pizza,,\nP-2,Tacos,,,"
    a = _read(tmp_path / "a.csv", plain)
    b = _read(tmp_path / "b.csv", commas)
    assert [x.key for x in a] == [x.key for x in b]


def test_a_space_after_a_closing_quote_is_read(tmp_path: Path) -> None:
    """strict=True stopped the whole import: "',' expected after '"'"."""
    text = (
        "Precinct,Rank1,Rank2,Rank3\n"
        'P-1,"Pizza" ,Sushi,Tacos\n'
        'P-1,"Sushi"\t,"Pizza"  \n'
        '"P-2" ,"Tacos",,\n'
    )
    assert _rankings(_read(tmp_path / "space.csv", text)) == READ


def test_text_glued_to_a_closing_quote_still_stops_the_import(tmp_path: Path) -> None:
    text = 'Precinct,Rank1,Rank2,Rank3\nP-1,"Pizza" ,Sushi,Tacos\nP-2,"Pizza" x,Sushi,\n'
    with pytest.raises(ValueError, match=r"^line 3: ',' expected after '\"'"):
        _read(tmp_path / "glued.csv", text)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # a space after a closing quote, then a quote never closed in the same record
        ('Precinct,Rank1,Rank2,Rank3\nP-1,"Pizza" ,"Sushi,Tacos\nP-1,Sushi,Pizza\n', 2),
        # the last record's, on its last line: one line, no line break read into a cell
        ('Precinct,Rank1,Rank2,Rank3\nP-1,Pizza,Sushi,Tacos\nP-2,"Tacos,Pizza\n', 3),
    ],
)
def test_a_quote_never_closed_still_stops_the_import(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(ValueError, match=rf"^line {line}: a quote opened .* is never closed"):
        _read(tmp_path / "open.csv", text)


def test_a_record_with_more_cells_is_refused_only_if_one_past_the_header_is_not_blank(
    tmp_path: Path,
) -> None:
    text = (
        "Precinct,Rank1,Rank2,Rank3,\n"
        "P-1,Pizza,Sushi,Tacos,,\n"
        "P-1,Pizza,Sushi,Tacos,Extra,,\n"
        "P-1,Pizza,Sushi, Tacos,,,Extra\n"
    )
    ballots = _read(tmp_path / "more.csv", text)
    assert [(b.line, b.refused) for b in ballots] == [
        (2, ""),
        (3, "not sent: 5 cells, where the header has 4"),
        (4, "not sent: 7 cells, where the header has 4"),
    ]


def test_every_record_with_the_same_extra_cells_is_said_once_about_the_header(
    tmp_path: Path,
) -> None:
    """A header that names too few columns made each record a refusal alike."""
    text = "Precinct,Rank1,Rank2\nP-1,Pizza,Sushi,Tacos\nP-1,Sushi,Pizza,Tacos\n\nP-2,,,Tacos\n"
    with pytest.raises(ValueError, match=r"^every record") as raised:
        _read(tmp_path / "short.csv", text)
    assert str(raised.value) == (
        "every record has more cells than the header has columns (4 cells, where the header "
        "has 3: 'Precinct', 'Rank1', 'Rank2'): name each of the records' columns in the header "
        "and import the file again"
    )


def test_records_that_misfit_unalike_or_beside_one_that_fits_are_refused_each(
    tmp_path: Path,
) -> None:
    unalike = "Precinct,Rank1,Rank2\nP-1,Pizza,Sushi,Tacos\nP-1,Sushi,Pizza,Tacos,Tacos\n"
    assert [b.line for b in _read(tmp_path / "a.csv", unalike) if b.refused] == [2, 3]
    beside = "Precinct,Rank1,Rank2\nP-1,Pizza,Sushi,Tacos\nP-1,Sushi,Pizza\nP-2,,,Tacos\n"
    ballots = _read(tmp_path / "b.csv", beside)
    assert [(b.line, bool(b.refused)) for b in ballots] == [(2, True), (3, False), (4, True)]


def test_a_file_with_old_mac_line_ends_is_read(tmp_path: Path) -> None:
    """Each \\r ended a line, as in the release before: strictly read, the whole file was
    one line and its 'new-line character seen in unquoted field' blamed a quote."""
    text = "Precinct,Rank1,Rank2,Rank3\rP-1,Pizza,Sushi,Tacos\rP-1,Sushi,Pizza,\rP-2,Tacos,,\r"
    ballots = _read(tmp_path / "mac.csv", text)
    assert _rankings(ballots) == READ
    assert [b.line for b in ballots] == [2, 3, 4]
    crlf = _read(tmp_path / "crlf.csv", text.replace("\r", "\r\n"))
    assert [b.key for b in crlf] == [b.key for b in ballots]


def test_a_minneapolis_style_cvr_with_quoted_cells_and_crlf_is_still_read(
    tmp_path: Path,
) -> None:
    text = (
        '"Precinct","1ST CHOICE","2ND CHOICE","3RD CHOICE"\r\n'
        '"P-1","PIZZA","overvote","Tacos"\r\n'
        '"P-1","UWI","sushi",""\r\n'
        '"P-2","","",""\r\n'
    )
    reading = Reading()
    ballots = _read(tmp_path / "mpls.csv", text, reading)
    assert [b.body["ranking"] for b in ballots] == [["pizza"], ["sushi"]]  # (overvote: exhaust)
    assert reading.blank == 1
    assert reading.marks == {"overvote": 1, "write-in: UWI": 1}


def test_a_refused_record_counts_toward_its_voters_keys_only_if_it_was_cast_before(
    tmp_path: Path,
) -> None:
    """A record with a non-blank cell past the header's is refused; the release before
    read it by position, leaving that cell out, and cast it only if its ranks were not
    blank. Counted among its voter's ballots regardless, a blank one gave the voter's next
    ballot another key than that release gave it: importing again a file it imported
    would record that ballot a second time (merge review, a differential fuzz)."""
    blank_misfit = _read(tmp_path / "a.csv", "id,rank1,rank2\nv1,,,x\nv1,Pizza,Sushi\n")
    without = _read(tmp_path / "b.csv", "id,rank1,rank2\nv1,Pizza,Sushi\n")
    assert [b.refused != "" for b in blank_misfit] == [True, False]
    assert blank_misfit[1].key == without[0].key
    # One with ranks was cast by that release: the ballot after it is its voter's second.
    ranked_misfit = _read(tmp_path / "c.csv", "id,rank1,rank2\nv1,Tacos,,x\nv1,Pizza,Sushi\n")
    both = _read(tmp_path / "d.csv", "id,rank1,rank2\nv1,Tacos,\nv1,Pizza,Sushi\n")
    assert ranked_misfit[1].key == both[1].key
