"""domain/ stays pure: it imports no infrastructure and none of the outer packages."""

from __future__ import annotations

import ast
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "domain"
FORBIDDEN = {
    "api",
    "infra",
    "projections",
    "psycopg",
    "psycopg_pool",
    "aio_pika",
    "aiormq",
    "starlette",
    "pydantic",
    "uvicorn",
    "orjson",
    "prometheus_client",
    "eventsourcing.postgres",
    "socket",
    "asyncio.subprocess",
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in FORBIDDEN)


def test_domain_imports_no_infrastructure() -> None:
    modules = sorted(DOMAIN.rglob("*.py"))
    assert len(modules) > 5  # the check looks at the real package
    offenders = {
        str(path.relative_to(DOMAIN.parent)): sorted(m for m in _imports(path) if _forbidden(m))
        for path in modules
    }
    assert {path: bad for path, bad in offenders.items() if bad} == {}


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "leaky.py"
    module.write_text("import psycopg\nfrom infra.store import EVENTS_TABLE\nimport json\n")
    assert sorted(m for m in _imports(module) if _forbidden(m)) == ["infra.store", "psycopg"]
