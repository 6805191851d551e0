"""The README's first election, run as written (in bash, from the checkout's root, beside a
running `cardinal serve`): it sources .cardinal/env for the port and the tokens."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.e2e.test_hangup import _env, _hang_up, _postgres, _serve

ROOT = Path(__file__).resolve().parents[2]


def _first_election() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"## A first election\n.*?```sh\n(.*?)```", readme, re.DOTALL)
    assert found, "the README's first-election snippet"
    return found[1]


def test_the_readmes_first_election_runs_as_written() -> None:
    root = Path(tempfile.mkdtemp(prefix="cardinal-readme-"))  # (see test_hangup's data_root)
    data = root / ".cardinal"
    log = root / "serve.log"
    pgdata = (data / "pgdata").resolve()
    env = _env(data, 1)
    try:
        with _serve(env, log) as process:
            clean = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("CARDINAL_", "DATABASE")) and k not in ("PORT", "HOST")
            }
            done = subprocess.run(
                ["bash", "-e", "-c", _first_election()],
                check=False,
                cwd=root,
                env=clean,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            final = json.JSONDecoder().raw_decode(done.stdout[done.stdout.rindex('{"election') :])
            assert final[0]["status"] == "closed", done.stdout
            assert final[0]["ballots"] == 1, done.stdout
            _hang_up(process, pgdata, log)
    finally:
        for server in _postgres(pgdata):
            server.kill()
        shutil.rmtree(root, ignore_errors=True)
