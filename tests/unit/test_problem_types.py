"""Each kind of problem has a stable type URI (api/problems.py): a client tells problems
apart by it, not by their English titles; "about:blank" is left only to a problem whose
title is its status's phrase (RFC 9457 section 4.2.1)."""

from __future__ import annotations

import ast
import inspect
from http import HTTPStatus
from pathlib import Path

from api import problems
from api.documents import Problem
from api.responses import problem_body
from domain import errors

ROOT = Path(__file__).resolve().parents[2]
# The calls that make a problem document, and where their status and title are.
MAKERS = {"problem": (0, 1), "problem_body": (0, 1), "_refusal": (0, 1)}


def test_every_domain_error_class_has_its_own_type() -> None:
    classes = [
        kind
        for _, kind in inspect.getmembers(errors, inspect.isclass)
        if issubclass(kind, errors.CardinalError) and kind is not errors.CardinalError
    ]  # (the base is never raised itself: it has no status)
    assert set(classes) == set(problems.DOMAIN_TYPES)
    assert len(set(problems.DOMAIN_TYPES.values())) == len(classes)
    for kind in classes:
        exc = kind.__new__(kind)
        exc.detail, exc.field = "x", None
        body = problems.problem_of(exc)
        assert body is not None
        assert body["type"] == problems.DOMAIN_TYPES[kind], kind
        assert body["type"].startswith(problems.PREFIX)
        assert body["title"] == kind.title


def _titles() -> list[tuple[str, object, str]]:
    """(where, status or None, title) of every problem the code makes with a literal title."""
    found: list[tuple[str, object, str]] = []
    for path in [*(ROOT / "api").rglob("*.py"), *(ROOT / "infra").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name in MAKERS and len(node.args) > 1:
                status, title = (node.args[i] for i in MAKERS[name])
                if isinstance(title, ast.Constant) and isinstance(title.value, str):
                    code = status.value if isinstance(status, ast.Constant) else None
                    if isinstance(code, bytes):
                        code = int(code[:3])
                    found.append((f"{path.name}:{node.lineno}", code, title.value))
    return found


def test_every_problem_the_code_makes_has_a_type_or_its_status_phrase() -> None:
    titles = _titles()
    assert len(titles) > 20, titles  # (the scan found them)
    for where, status, title in titles:
        if title in problems.TITLE_TYPES:
            continue
        assert isinstance(status, int), (where, title)
        assert title == HTTPStatus(status).phrase, (where, title)
    # The titles named elsewhere than in a call: a 403 before publication, http_error's.
    for title in ("Not published yet", "Not found", "Method not allowed", "Payload too large"):
        assert problems.type_of(404, title).startswith(problems.PREFIX)


def test_an_unknown_status_keeps_about_blank_with_its_phrase() -> None:
    body = problem_body(418, HTTPStatus(418).phrase, "x")
    assert body["type"] == "about:blank"


def test_the_contract_lists_the_types() -> None:
    described = Problem.model_json_schema()["properties"]["type"]["description"]
    for uri in problems.TITLE_TYPES.values():
        assert uri in described


def test_the_readme_lists_the_types() -> None:
    readme = (ROOT / "README.md").read_text()
    for uri in problems.TITLE_TYPES.values():
        assert f"`{uri}`" in readme, uri
