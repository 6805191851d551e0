"""Every end-to-end test starts processes and takes seconds: all of them are marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.routes import streams

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def every_election_in_the_overview(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overview shows at most OVERVIEW_LIMIT elections, the open ones first; this
    run's database holds the elections of every test before, hundreds of them open, so a
    test's closed election would be left out. Tests of the limit set their own."""
    monkeypatch.setattr(streams, "OVERVIEW_LIMIT", 1_000_000)
