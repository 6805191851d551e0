"""Metrics that alerts read must not raise false alarms in processes they do not describe."""

from __future__ import annotations

import subprocess
import sys

SCRAPE = (
    "import prometheus_client, infra.metrics{setup}; "
    "print(prometheus_client.generate_latest().decode())"
)


def _scrape(setup: str = "") -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRAPE.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line.startswith("cardinal_store_up")]


def test_store_up_is_shown_only_by_processes_with_a_writer() -> None:
    """The relay and projection processes have no writer: an unlabelled gauge showed 0
    there, and `min(cardinal_store_up) == 0` paged for ever (review helper-31)."""
    assert _scrape() == []
    with_writer = _scrape("; from infra.store.health import StoreHealth; StoreHealth()")
    assert with_writer == ['cardinal_store_up{component="writer"} 1.0']
