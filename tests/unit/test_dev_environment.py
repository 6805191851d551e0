"""`cardinal serve` in development leaves its settings where other commands can source them."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

from infra.cli.environment import console
from infra.cli.serve import _banner, is_embedded, write_environment
from infra.runtime.credentials import complete
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


def test_the_written_environment_puts_cardinal_on_path(tmp_path: Path) -> None:
    """`cardinal` lives in the venv's bin, which is not on PATH: sourcing the file puts the
    running interpreter's directory first, so the README's `cardinal import` works."""
    settings = Settings(database_url="postgresql://db.example/cardinal", data_dir=tmp_path)
    path = write_environment(settings)
    found = subprocess.run(
        ["bash", "-c", f'PATH=/usr/bin:/bin; . "{path}" && command -v cardinal; echo "$PATH"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    scripts = Path(sys.executable).parent
    assert found[-1] == f"{scripts}:/usr/bin:/bin"  # first, the rest kept
    if (scripts / "cardinal").exists():  # (an installed checkout: the venv's entry point)
        assert found[0] == str(scripts / "cardinal")


def test_a_missing_data_folder_is_made(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql://db.example/cardinal", data_dir=tmp_path / "new")
    assert write_environment(settings).is_file()


def test_the_embedded_servers_own_url_starts_it_again(tmp_path: Path) -> None:
    """After `. .cardinal/env`, DATABASE_URL is the embedded server's: serve must start
    that server again (it stopped with the last serve), not assume it is running."""
    own = f"postgresql://postgres:pw@/cardinal?host={tmp_path}/pgdata"
    assert is_embedded(Settings(database_url=own, data_dir=tmp_path))
    other = "postgresql://root@127.0.0.1:5432/cardinal"
    assert not is_embedded(Settings(database_url=other, data_dir=tmp_path))
    elsewhere = f"postgresql://postgres@/cardinal?host={tmp_path}/other"
    assert not is_embedded(Settings(database_url=elsewhere, data_dir=tmp_path))


def test_the_banner_says_where_tokens_came_from_and_where_to_go(tmp_path: Path) -> None:
    """The first start generates the tokens; later starts read them back from the data
    folder, and said "generated" all the same. The banner shows the dashboards and the
    API's reference, not only the health check."""
    settings = Settings(database_url="postgresql://db.example/cardinal", data_dir=tmp_path)
    kept = tmp_path / "credentials.json"
    shown = []
    for _ in range(2):
        credentials = complete(settings)
        with console.capture() as captured:
            _banner(credentials.settings, credentials.generated_roles, credentials.read_back)
        shown.append(captured.get())
    first, again = shown
    assert "client token: cv_client_" in first
    assert f"(generated, kept in {kept})" in first
    assert "generated" not in again
    assert re.search(rf"client token: cv_client_\S+  \(from {re.escape(str(kept))}\)", again)
    base = f"http://{settings.host}:{settings.port}"
    assert f"  dashboards: {base}/\n" in first
    assert f"  API: {base}/api/health  (reference: {base}/docs)\n" in first
