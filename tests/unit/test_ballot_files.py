"""Reading ballot files: JSONL as the API takes ballots, CSV cast vote records by rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.cvr import MarkRules, Then
from infra.cli.ballot_files import Reading, read_ballots

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
    ballots = list(read_ballots(cvr, OPTIONS, rules=MarkRules(overvote=Then.SKIP), reading=reading))
    assert [b.body for b in ballots] == [
        {"voter_id": "101", "ranking": ["frey", "hodges"]},
        {"voter_id": "102", "ranking": ["hodges"]},
    ]
    assert reading.blank == 1
    assert reading.marks == {"overvote": 1, "write-in or unknown: UWI": 1}
    again = list(read_ballots(cvr, OPTIONS))
    assert [b.key for b in again] == [b.key for b in ballots]  # the same file, the same keys


def test_jsonl_ballots_keep_their_own_keys(tmp_path: Path) -> None:
    lines = tmp_path / "ballots.jsonl"
    lines.write_text(
        '{"voter_id": "a", "choice": "frey", "idempotency_key": "mine"}\n\n'
        '{"voter_id": "b", "choice": "hodges"}\n'
    )
    ballots = list(read_ballots(lines, OPTIONS))
    assert [(b.line, b.body, b.key[:7]) for b in ballots] == [
        (1, {"voter_id": "a", "choice": "frey"}, "mine"),
        (3, {"voter_id": "b", "choice": "hodges"}, "import-"),
    ]


def test_a_csv_without_rank_columns_says_what_it_needs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,vote\nada,frey\n")
    with pytest.raises(ValueError, match=r"rank1\.\.rankN"):
        list(read_ballots(bad, OPTIONS))
