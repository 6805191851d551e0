"""Development credentials are generated once, whoever starts first."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path
from typing import Any

from infra.runtime.credentials import CREDENTIALS_FILE, complete
from infra.runtime.settings import Settings

STARTED_AT_ONCE = 6


def _start(data_dir: str, ready: Any, out: Any) -> None:
    settings = Settings.from_env({"CARDINAL_DATA_DIR": data_dir})
    ready.wait()
    completed = complete(settings).settings
    out.put((completed.secret, completed.role_tokens["client"]))


def test_processes_started_at_once_on_a_fresh_folder_share_one_secret(tmp_path: Path) -> None:
    """Each process generated its own secret and token (the last write won the file): a
    voter then had a ballot key per process, and voted twice (review helper-54)."""
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Barrier(STARTED_AT_ONCE)
    out: Any = spawn.Queue()
    processes = [
        spawn.Process(target=_start, args=(str(tmp_path), ready, out))
        for _ in range(STARTED_AT_ONCE)
    ]
    for process in processes:
        process.start()
    seen = {out.get(timeout=60) for _ in processes}
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert len(seen) == 1, seen
    kept = tmp_path / CREDENTIALS_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    # and the next start reads what the first one kept
    again = complete(Settings.from_env({"CARDINAL_DATA_DIR": str(tmp_path)})).settings
    assert {(again.secret, again.role_tokens["client"])} == seen
