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


# The import direction, top to bottom: a module may import from its own layer and the ones
# below it, never from above. Leaves import nothing of ours and may be imported anywhere.
LAYERS = [
    ("infra.cli",),
    ("infra.bench",),
    ("api", "infra.ingest"),
    ("infra.runtime",),
    ("infra.audit",),
    ("projections",),
    ("infra.broker",),
    ("infra.store",),
    ("domain",),
]
LEAVES = (
    "infra.metrics",
    "infra.batched_metrics",
    "infra.audit.chain",
    "infra.options",
    "infra.outage",
)
ROOT = DOMAIN.parent
OURS = ("domain", "projections", "api", "infra")


def _layer(module: str) -> int | None:
    if any(module == leaf or module.startswith(leaf + ".") for leaf in LEAVES):
        return None
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _module(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _our_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            # "from infra import metrics" imports the module infra.metrics
            found.update(
                n if _layer(n) is None and n.startswith(LEAVES) else node.module for n in names
            )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] in OURS}


def _violations(paths: list[Path], root: Path = ROOT) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        module = _module(path, root)
        rank = _layer(module)
        if rank is None:
            continue
        upward = sorted(
            imported
            for imported in _our_imports(path)
            if (other := _layer(imported)) is not None and other < rank
        )
        if upward:
            found[module] = upward
    return found


def test_imports_run_down_the_layers() -> None:
    paths = [p for package in OURS for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(paths) > 80  # the check looks at the real tree
    assert {_layer(_module(p)) for p in paths} >= set(range(len(LAYERS)))
    assert _violations(paths) == {}


def test_leaves_import_nothing_of_ours() -> None:
    for leaf in LEAVES:
        path = ROOT / (leaf.replace(".", "/") + ".py")
        assert _our_imports(path) == set(), leaf


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    package = tmp_path / "infra" / "store"
    package.mkdir(parents=True)
    module = package / "leaky.py"
    module.write_text(
        "from projections.status import projection_status\nfrom infra import metrics\n"
    )
    assert _violations([module], tmp_path) == {"infra.store.leaky": ["projections.status"]}
