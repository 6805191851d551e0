"""What `cardinal audit verify` says when everything checks out."""

from __future__ import annotations

import uuid

import pytest

from infra.audit.verifier import FINAL_HEAD, PREVIOUS_CHECKPOINT, PREVIOUS_HEAD, Report
from infra.cli import audit


def _rows(out: str) -> dict[str, str]:
    return {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if line.startswith("│")
    }


def test_the_summary_lists_the_elections_and_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    """The summary named no election (audit review): how many were replayed, and how many
    results each had compared; and each key that checked signatures, by its id."""
    first, second = sorted(uuid.uuid4() for _ in range(2))
    report = Report(entries=10, sealed=10, checkpoints=3, results=5, elections=2, head=10)
    report.compared = {second: 2, first: 3}
    report.keys = {"aaaa": 1, "bbbb": 2}
    audit._summary(report, 1.0)
    rows = _rows(capsys.readouterr().out)
    assert rows["elections replayed"] == "2"
    assert rows[f"election {first}"] == "3"
    assert rows[f"election {second}"] == "2"
    assert rows["signed by key aaaa"] == "1"
    assert rows["signed by key bbbb"] == "2"


def test_many_elections_are_counted_not_listed(capsys: pytest.CaptureFixture[str]) -> None:
    report = Report(results=30, elections=30)
    report.compared = {uuid.uuid4(): 1 for _ in range(audit.SUMMARY_ELECTIONS + 1)}
    audit._summary(report, 1.0)
    rows = _rows(capsys.readouterr().out)
    assert rows["elections replayed"] == "30"
    assert not any(row.startswith("election ") for row in rows)


def test_the_summary_says_when_the_export_was_written_and_what_pinned_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An old export presented as current passed without showing its date (audit review)."""
    report = Report(entries=10, head=10, exported_at="2026-12-01T10:00:00+00:00")
    report.export_head = (10, bytes(range(32)))
    report.pins = {PREVIOUS_CHECKPOINT: 4, PREVIOUS_HEAD: 1, FINAL_HEAD: 2}
    report.served_pinned = 3
    audit._summary(report, 1.0)
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows[PREVIOUS_CHECKPOINT] == "4"
    assert rows[PREVIOUS_HEAD] == "1"
    assert rows[FINAL_HEAD] == "2"
    assert rows["--served: documents equal to the replay"] == "3"
    assert "export written at: 2026-12-01T10:00:00+00:00" in out
    assert f"export's signed head: position 10, hash {bytes(range(32)).hex()}" in out
    assert out.rstrip().endswith("OK: everything checks out")
