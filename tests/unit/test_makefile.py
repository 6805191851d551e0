"""What `make run` and `make test` install on a fresh clone, read from `make -n` (nothing is
installed): `make run` the runtime alone (it installed the tests' 1.3 GB of tools, quietly,
for over a minute), the others the tests' tools too, after which `make run` installs
nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _planned(clone: Path, target: str) -> str:
    # Under `make test` these run in a sub-make's environment: without its flags, a plain one.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", "--no-print-directory", "-n", target],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout


def test_make_test_runs_every_test_once() -> None:
    """make test runs one pytest over the whole tests folder, on workers (pytest-xdist),
    each test file on one worker (a file's module fixtures, its cluster or node, once), and
    leaves out only the chaos scenarios `make chaos` runs in full."""
    made = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    target = made[made.index("\ntest: ") :]
    recipe = target[: target.index("\n\n")]
    runs = [line.split() for line in recipe.splitlines() if "$(BIN)/pytest" in line]
    assert len(runs) == 1, recipe
    run = runs[0]
    assert run[-1] == "tests"
    assert "-n" in run
    assert run[run.index("--dist") + 1] == "loadfile"
    assert run[run.index("-m") + 1 :][:3] == ['"not', 'chaos_full"', "tests"]


def test_make_run_on_a_fresh_clone_installs_the_runtime_only_and_says_so(clone: Path) -> None:
    planned = _planned(clone, "run")
    assert "pip install --quiet -e ." in planned
    assert "[dev]" not in planned
    assert "installing Cardinal Vote's dependencies into .venv (first run only" in planned
    assert planned.rstrip().endswith(".venv/bin/cardinal serve")


def test_make_test_installs_the_tests_tools_and_then_make_run_installs_nothing(
    clone: Path,
) -> None:
    assert "pip install --quiet -e '.[dev]'" in _planned(clone, "test")
    # What that install leaves: both stamps, newer than pyproject.toml.
    (clone / ".venv").mkdir()
    later = time.time() + 5
    for stamp in (".installed", ".installed-runtime"):
        (clone / ".venv" / stamp).touch()
        os.utime(clone / ".venv" / stamp, (later, later))
    assert _planned(clone, "run").strip() == ".venv/bin/cardinal serve"
    assert "pip install" not in _planned(clone, "check")


def test_make_run_in_a_venv_installed_before_the_runtime_stamp_installs_nothing(
    clone: Path,
) -> None:
    (clone / ".venv").mkdir()
    later = time.time() + 5
    (clone / ".venv" / ".installed").touch()
    os.utime(clone / ".venv" / ".installed", (later, later))
    # The recipe's guard, run for real (it only touches the stamp).
    subprocess.run(
        ["make", "-s", ".venv/.installed-runtime"], cwd=clone, check=True, capture_output=True
    )
    assert (clone / ".venv" / ".installed-runtime").exists()
    assert _planned(clone, "run").strip() == ".venv/bin/cardinal serve"
