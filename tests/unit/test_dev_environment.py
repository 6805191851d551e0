"""`cardinal serve` in development leaves its settings where other commands can source them."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from infra.cli.serve import write_environment
from infra.runtime.settings import Settings


def test_the_written_environment_sources_back_to_the_same_settings(tmp_path: Path) -> None:
    url = "postgresql://postgres:p%27a$s@/cardinal?host=/tmp/with space/pgdata"
    settings = Settings(
        database_url=url,
        data_dir=tmp_path,
        secret="s" * 40,
        role_tokens={"client": ("client-token",), "admin": ("admin-token",)},
    )
    path = write_environment(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the tokens and keys
    shown = subprocess.run(
        [
            "bash",
            "-c",
            f'. "{path}" && printf "%s|%s|%s" "$DATABASE_URL" '
            '"$CARDINAL_CLIENT_TOKEN" "$CARDINAL_SECRET"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == f"{url}|client-token|{'s' * 40}"
