"""Every `cardinal` command explains itself."""

from __future__ import annotations

import pytest

from infra.cli import main

COMMANDS = [
    ["serve"],
    ["api"],
    ["relay"],
    ["project"],
    ["migrate"],
    ["ingest"],
    ["projections"],
    ["rebuild"],
    ["publish-test-votes"],
    ["bench"],
    ["bench", "http"],
    ["bench", "projection"],
    ["bench", "rebuild"],
    ["bench", "tabulation"],
    ["bench", "verify"],
    ["bench", "ingest"],
    ["audit"],
    ["audit", "export"],
    ["audit", "verify"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cardinal")
    assert len(out.splitlines()) > 3


def test_an_unknown_projection_is_refused_with_the_known_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["rebuild", "nonsense"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_ingest_without_a_broker_says_which_variable_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AMQP_URL", raising=False)
    assert main(["ingest"]) == 2
    assert "AMQP_URL is not set" in capsys.readouterr().err
