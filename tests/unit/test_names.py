"""Connections are named in pg_stat_activity after what they do (infra/store/names.py)."""

from __future__ import annotations

import os

import pytest

from infra.store.names import connection_name, name_process_connections


def test_a_command_names_its_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGAPPNAME", raising=False)
    name_process_connections("serve")
    assert connection_name("writer") == "cardinal writer"

    assert os.environ["PGAPPNAME"] == "cardinal serve"
    name_process_connections("api")  # a child of serve inherits its parent's name
    assert os.environ["PGAPPNAME"] == "cardinal api"


def test_an_operators_name_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGAPPNAME", "election-night")
    name_process_connections("api")

    assert os.environ["PGAPPNAME"] == "election-night"
