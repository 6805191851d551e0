"""The tabulation benchmark runs end to end (on a small election) and reports its figures."""

from __future__ import annotations

import json

import pytest

from domain.rules import Method
from infra.bench.tabulation import main


def test_benchmark_prints_a_table_and_a_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--options", "5", "--ballots", "3000", "--distinct", "60", "--repeat", "1"]
    status = main([*argv, "--adds", "20"])
    lines = capsys.readouterr().out.strip().splitlines()
    report = json.loads(lines[-1])
    assert status == 0
    assert report["ok"] is True
    assert report["ballots"] == 3000
    figures = report["figures"]
    for method in Method:
        assert figures[f"{method.value}: result()"]["unit"] == "ms"
        assert figures[f"{method.value}: add() one ballot"]["ok"] is True
    assert any("irv: result()" in line for line in lines[:-1])  # the rich table
