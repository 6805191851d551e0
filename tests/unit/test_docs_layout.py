"""docs/architecture.md's package layout names every module and folder of each package, so
that it cannot go stale unnoticed (a docs review found fourteen modules and four
documents it did not name)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A package's modules and folders are named in the layout; a folder's own modules (routes/,
# tabulation/, tally/, static/ ...) are described by the folder's line, not one by one.
PACKAGES = [
    "domain",
    "projections",
    "api",
    "infra",
    *sorted(f"infra/{p.name}" for p in (ROOT / "infra").iterdir() if (p / "__init__.py").exists()),
]


def _layout() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text.split("## Package layout", 1)[1].split("```")[1]


def _named(layout: str, name: str) -> bool:
    # Whole names only: catalog.py must not count as log.py.
    return re.search(rf"(?<![\w.]){re.escape(name)}", layout) is not None


def test_the_package_layout_names_every_module() -> None:
    layout = _layout()
    missing = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).iterdir()):
            if path.name in ("__init__.py", "__pycache__") or path.name.startswith("."):
                continue
            if path.is_dir():
                if f"{package}/{path.name}" in PACKAGES:
                    continue  # a package of its own, with its own line
                name = f"{path.name}/"
            elif path.suffix == ".py":
                name = path.name
            else:
                continue
            if not _named(layout, name):
                missing.append(f"{package}/{name}")
    assert missing == []


def test_the_package_layout_names_every_document() -> None:
    layout = _layout()
    docs = ROOT / "docs"
    missing = [
        p.name + ("/" if p.is_dir() else "")
        for p in sorted(docs.iterdir())
        if p.name != "architecture.md" and not _named(layout, p.name + ("/" if p.is_dir() else ""))
    ]
    assert missing == []
