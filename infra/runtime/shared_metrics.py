"""The folder `cardinal serve`'s API processes share their metrics through.

prometheus-client's multiprocess mode: each process writes its series to memory-mapped
files in PROMETHEUS_MULTIPROC_DIR, and whichever process answers /metrics merges them all.
The folder starts empty (files of earlier processes would add up into these sums), a child
that exits has its live gauges dropped, and the folder goes when the supervisor stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from prometheus_client import multiprocess

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class SharedMetrics:
    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="cardinal-metrics-"))

    def environment(self) -> dict[str, str]:
        """What an API child needs in its environment (before it imports prometheus)."""
        return {VARIABLE: str(self.path)}

    def process_exited(self, pid: int) -> None:
        """Drop a dead child's live gauges; its counters stay in the sums, as they should."""
        multiprocess.mark_process_dead(pid, str(self.path))  # type: ignore[no-untyped-call]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def child_exited(pid: int) -> None:
    """As ``SharedMetrics.process_exited``, from any process of the folder's (an API process
    whose own child, a rebuild started over HTTP, exited): its live gauges no longer count
    in the sums. Nothing where the metrics are not shared."""
    folder = os.environ.get(VARIABLE)
    if folder:
        multiprocess.mark_process_dead(pid, folder)  # type: ignore[no-untyped-call]
