"""The tabulation stays pure domain code; its benchmark depends on nothing but the domain."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_tabulation_imports_only_the_standard_library_and_the_domain() -> None:
    modules = sorted((ROOT / "domain" / "tabulation").glob("*.py"))
    assert len(modules) >= 10
    imported = set().union(*(top_level_imports(path) for path in modules))
    assert imported - set(sys.stdlib_module_names) == {"domain"}


def test_the_benchmark_imports_only_the_domain_rich_and_the_standard_library() -> None:
    imported = top_level_imports(ROOT / "infra" / "bench" / "tabulation.py")
    assert imported - set(sys.stdlib_module_names) == {"domain", "rich"}
