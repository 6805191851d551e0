"""`--help` gives an option's default, where it is a value a person can read."""

from __future__ import annotations

import pytest

from infra.cli import parser


def _help(*command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        parser().parse_args([*command, "--help"])
    return capsys.readouterr().out


def test_defaults_are_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help("import", capsys=capsys).split())
    assert "requests in flight (default: 2)" in text
    # said once, where the help already says it
    assert "(default 60) (default" not in text


def test_a_url_with_credentials_is_not_shown(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "9999")
    text = _help("import", capsys=capsys)
    assert "127.0.0.1:9999" in text
    import argparse

    from infra.options import ShowDefaults

    action = argparse.Action(["--url"], "url", default="amqp://u:secret@host/", help="where")
    assert ShowDefaults("x")._get_help_string(action) == "where"


def test_the_relays_help_says_it_seals_with_the_audit_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README says the relay seals the log with CARDINAL_AUDIT_KEY; its --help said
    only that it publishes (operator review L6)."""
    text = " ".join(_help("relay", capsys=capsys).split())
    assert "seal" in text
    assert "CARDINAL_AUDIT_KEY" in text
