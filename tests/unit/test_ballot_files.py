"""Reading ballot files: JSONL as the API takes ballots, CSV cast vote records by rank."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from domain.cvr import MarkRules, Then
from infra.cli.ballot_files import NeedsSource, Reading, read_ballots

TOKEN = "client-token"
OPTIONS = [{"id": "frey", "label": "Jacob Frey"}, {"id": "hodges", "label": "Betsy Hodges"}]


def test_a_cvr_with_choice_columns_and_ballot_ids(tmp_path: Path) -> None:
    cvr = tmp_path / "mayor.csv"
    cvr.write_text(
        "Cvr_Id,1ST CHOICE MAYOR,2ND CHOICE MAYOR,3RD CHOICE MAYOR\n"
        "101,JACOB FREY,overvote,Betsy Hodges\n"
        "102,UWI,hodges,\n"
        "103,,,\n"
    )
    reading = Reading()
    ballots = list(
        read_ballots(
            cvr, OPTIONS, rules=MarkRules(overvote=Then.SKIP), reading=reading, token=TOKEN
        )
    )
    assert [b.body for b in ballots] == [
        {"voter_id": "101", "ranking": ["frey", "hodges"]},
        {"voter_id": "102", "ranking": ["hodges"]},
    ]
    assert reading.blank == 1
    assert reading.marks == {"overvote": 1, "write-in: UWI": 1}
    assert not reading.unknown  # UWI is a write-in mark, not a name that matches no option
    again = list(read_ballots(cvr, OPTIONS, rules=MarkRules(overvote=Then.SKIP), token=TOKEN))
    assert [b.key for b in again] == [b.key for b in ballots]  # the same file, the same keys


def test_jsonl_ballots_keep_their_own_keys(tmp_path: Path) -> None:
    lines = tmp_path / "ballots.jsonl"
    lines.write_text(
        '{"voter_id": "a", "choice": "frey", "idempotency_key": "mine"}\n\n'
        '{"voter_id": "b", "choice": "hodges"}\n'
    )
    ballots = list(read_ballots(lines, OPTIONS, token=TOKEN))
    assert [(b.line, b.body, b.key[:7]) for b in ballots] == [
        (1, {"voter_id": "a", "choice": "frey"}, "mine"),
        (3, {"voter_id": "b", "choice": "hodges"}, "import-"),
    ]


def test_a_csv_without_rank_columns_says_what_it_needs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,vote\nada,frey\n")
    with pytest.raises(ValueError, match=r"rank1\.\.rankN"):
        list(read_ballots(bad, OPTIONS, token=TOKEN))


CVR = "Precinct,Rank1,Rank2\nP-1,Jacob Frey,hodges\nP-1,hodges,\nP-2,frey,\n"


def test_a_cvr_without_voters_names_its_ballots_by_source_and_record(tmp_path: Path) -> None:
    cvr = tmp_path / "p.csv"
    cvr.write_text(CVR)
    with pytest.raises(NeedsSource, match="give --source"):
        list(read_ballots(cvr, OPTIONS, token=TOKEN))
    ballots = list(read_ballots(cvr, OPTIONS, source="ward-3", token=TOKEN))
    assert [b.body["voter_id"] for b in ballots] == ["cvr-ward-3-1", "cvr-ward-3-2", "cvr-ward-3-3"]
    # Saved again with other line endings, a byte order mark, a blank line, and completed
    # with a record: the same ballots keep their keys (replayed); the new one is new.
    cvr.write_bytes(b"\xef\xbb\xbf" + (CVR + "\nP-3,hodges,frey\n").replace("\n", "\r\n").encode())
    again = list(read_ballots(cvr, OPTIONS, source="ward-3", token=TOKEN))
    assert [b.key for b in again[:3]] == [b.key for b in ballots]
    assert again[3].body == {"voter_id": "cvr-ward-3-4", "ranking": ["hodges", "frey"]}
    # Corrected: that ballot's key changes (its voter's ballot is revised), no other.
    cvr.write_text(CVR.replace("P-1,hodges,", "P-1,frey,"))
    corrected = list(read_ballots(cvr, OPTIONS, source="ward-3", token=TOKEN))
    assert [a.key == b.key for a, b in zip(corrected, ballots, strict=True)] == [True, False, True]
    assert corrected[1].body["voter_id"] == "cvr-ward-3-2"


def test_refused_ballots_are_found_by_the_line_they_start_on(tmp_path: Path) -> None:
    cvr = tmp_path / "lines.csv"
    cvr.write_text('id,rank1,rank2\n\n7,frey,"hodges\n"\n\n8,hodges,\n')
    assert [(b.line, b.body["voter_id"]) for b in read_ballots(cvr, OPTIONS, token=TOKEN)] == [
        (3, "7"),
        (6, "8"),
    ]


def test_jsonl_keys_follow_the_ballot_not_its_line(tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    first.write_bytes(b'\xef\xbb\xbf{"voter_id": "a", "choice": "frey"}\n')
    second = tmp_path / "b.jsonl"
    second.write_text(
        '\n{"choice": "frey", "voter_id": "a"}\n{"voter_id": "b", "choice": "frey"}\n'
    )
    (one,) = read_ballots(first, OPTIONS, token=TOKEN)
    same, other = read_ballots(second, OPTIONS, token=TOKEN)
    assert same.key == one.key
    assert other.key != one.key


def test_a_file_that_is_not_utf8_says_where_and_what_to_do(tmp_path: Path) -> None:
    cvr = tmp_path / "latin1.csv"
    cvr.write_bytes("id,rank1\n1,frey\n2,Hod\u00e9ges\n".encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"line 3 is not UTF-8 \(byte 0xe9\): save the file as UTF-8"
    ):
        list(read_ballots(cvr, OPTIONS, token=TOKEN))


def test_a_voter_column_with_an_empty_cell_needs_a_source_too(tmp_path: Path) -> None:
    cvr = tmp_path / "ids.csv"
    cvr.write_text("id,rank1\n7,frey\n,hodges\n")
    with pytest.raises(NeedsSource, match="the record on line 3 names no voter"):
        list(read_ballots(cvr, OPTIONS, token=TOKEN))
    named = [b.body["voter_id"] for b in read_ballots(cvr, OPTIONS, source="p1", token=TOKEN)]
    assert named == ["7", "cvr-p1-2"]


def test_a_voter_changing_back_is_a_change_not_a_replay(tmp_path: Path) -> None:
    lines = tmp_path / "changes.jsonl"
    lines.write_text(
        "".join(f'{{"voter_id": "x", "choice": "{c}"}}\n' for c in ("frey", "hodges", "frey"))
    )
    keys = [b.key for b in read_ballots(lines, OPTIONS, token=TOKEN)]
    assert len(set(keys)) == 3
    assert keys == [b.key for b in read_ballots(lines, OPTIONS, token=TOKEN)]  # and stable


def test_an_import_key_is_keyed_by_the_client_token(tmp_path: Path) -> None:
    # Unkeyed, anyone holding a client token could compute a ballot's key from a guess of
    # its voter and vote, send it, and learn from a replay that the guess was right.
    lines = tmp_path / "ballots.jsonl"
    lines.write_text('{"voter_id": "a", "choice": "frey"}\n')
    (ballot,) = read_ballots(lines, OPTIONS, token=TOKEN)
    unkeyed = orjson.dumps([ballot.body, 0], option=orjson.OPT_SORT_KEYS)
    assert ballot.key != f"import-{hashlib.sha256(unkeyed).hexdigest()[:32]}"
    (again,) = read_ballots(lines, OPTIONS, token=TOKEN)
    (other,) = read_ballots(lines, OPTIONS, token="another-client-token")
    assert again.key == ballot.key  # the same token and file: the same keys (a replay)
    assert other.key != ballot.key


def test_names_match_in_any_spacing_and_those_matching_no_option_are_counted(
    tmp_path: Path,
) -> None:
    cvr = tmp_path / "names.csv"
    cvr.write_text(
        "id,rank1,rank2,rank3\n"
        "1,Jacob  Frey, betsy hodges ,\n"
        '2,"Frey, Jacob",hodges,Write-in\n'
        '3,"Frey,  Jacob",Jacob Fry,\n'
    )
    reading = Reading()
    ballots = list(read_ballots(cvr, OPTIONS, reading=reading, token=TOKEN))
    assert [b.body["ranking"] for b in ballots] == [["frey", "hodges"], ["hodges"]]
    assert reading.unknown == {"Frey, Jacob": 2, "Jacob Fry": 1}
    assert reading.marks["write-in: Write-in"] == 1
    assert reading.blank == 1


def test_an_exact_id_wins_and_a_name_matching_two_options_is_ambiguous(tmp_path: Path) -> None:
    options = [
        {"id": "a", "label": "B"},
        {"id": "b", "label": "A"},
        {"id": "s1", "label": "Smith"},
        {"id": "s2", "label": "Smith"},
    ]
    cvr = tmp_path / "names.csv"
    cvr.write_text("voter_id,rank1,rank2\nv1,a,b\nv2,Smith,b\nv3, smith ,A\nv4,Smith,s1\n")
    reading = Reading()
    ballots = list(read_ballots(cvr, options, reading=reading, token=TOKEN))
    # "a" is option a's id, written exactly: option a, not the option labelled "A".
    assert ballots[0].body["ranking"] == ["a", "b"]
    # "Smith" is two options' label, and "A" is one's id and another's label in another
    # case: neither says which option it means.
    assert reading.ambiguous == {"Smith": 2, "smith": 1, "A": 1}
    assert reading.matching == {"Smith": ("s1", "s2"), "smith": ("s1", "s2"), "A": ("a", "b")}
    assert not reading.unknown


def test_voter_ids_are_read_as_nfc_where_the_election_compares_them_so(tmp_path: Path) -> None:
    """One voter, written precomposed then decomposed: in an "nfc" election one voter
    here too (one count of earlier ballots, one lane), and the same file saved in the
    other form has the same keys; in an "exact" (older) election, read as written."""
    nfc, nfd = "Jos\u00e9", "Jose\u0301"
    lines = tmp_path / "ballots.jsonl"
    lines.write_text(
        f'{{"voter_id": "{nfc}", "choice": "frey"}}\n'
        f'{{"voter_id": "{nfd}", "choice": "frey", "idempotency_key": "own"}}\n'
        f'{{"voter_id": "{nfd}", "choice": "frey"}}\n',
        encoding="utf-8",
    )
    read = list(read_ballots(lines, OPTIONS, token=TOKEN, voter_ids="nfc"))
    assert [b.body["voter_id"] for b in read] == [nfc, nfc, nfc]
    assert len({read[0].key, read[2].key}) == 2  # the voter's second keyed ballot
    saved = tmp_path / "saved.jsonl"
    saved.write_text(lines.read_text(encoding="utf-8").replace(nfc, nfd), encoding="utf-8")
    again = list(read_ballots(saved, OPTIONS, token=TOKEN, voter_ids="nfc"))
    assert [(b.body, b.key) for b in again] == [(b.body, b.key) for b in read]
    exact = list(read_ballots(lines, OPTIONS, token=TOKEN))
    assert [b.body["voter_id"] for b in exact] == [nfc, nfd, nfd]
    assert exact[0].key == read[0].key  # an all-NFC file keys as it always did
    assert exact[2].key != read[2].key
