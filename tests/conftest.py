"""Where the tests run under `make test` (pytest-xdist, `--dist loadgroup`): every test that
needs PostgreSQL, RabbitMQ, a browser or processes of its own stays on one worker, in the
order they are collected, as in a plain run (sharing the machine's services, their
connections, and the timing of their outages with nothing else of ours); the unit tests,
pure and CPU-bound, are spread over the other worker meanwhile."""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT = Path(__file__).parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if UNIT not in item.path.parents:
            item.add_marker(pytest.mark.xdist_group("services"))
