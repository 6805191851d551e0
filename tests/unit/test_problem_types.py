"""Each kind of problem has a stable type URI (api/problems.py): a client tells problems
apart by it, not by their English titles; "about:blank" is left only to a problem whose
title is its status's phrase (RFC 9457 section 4.2.1)."""

from __future__ import annotations

import ast
import inspect
from http import HTTPStatus
from pathlib import Path

import orjson

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


def test_a_batch_items_503_says_when_to_retry_as_a_single_ballots_retry_after_does() -> None:
    """A ballot of a batch refused for a passing reason (busy, the store away, the
    database) is a 503 item in a 200 answer, whose Retry-After cannot speak for one item:
    the item said nothing of when to send it again, where the same refusal of a single
    ballot carries Retry-After (review). It carries ``retry_after``, the same seconds."""
    import psycopg
    from starlette.requests import Request

    from domain.ports import HeldBack, OutcomeUnknown, Overloaded, StoreUnavailable
    from infra.store.ratelimit import LimiterStoreDown, LimiterUnavailable

    request = Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/api/elections/e/ballots",
            "query_string": b"",
            "headers": [],
            "app": None,
        }
    )
    singles = [
        (Overloaded(), problems.overloaded),
        (StoreUnavailable("away"), problems.store_unavailable),
        (OutcomeUnknown("may have been"), problems.store_unavailable),
        (LimiterUnavailable("unanswered"), problems.store_unavailable),
        (LimiterStoreDown("away"), problems.store_unavailable),
        (psycopg.OperationalError("cut"), problems.database_unavailable),
    ]
    for error, handler in singles:
        item = problems.problem_of(error, "ballots[0]")
        assert item is not None, error
        assert item["status"] == 503, error
        single = handler(request, error)
        assert item["retry_after"] == int(single.headers["retry-after"]), error
        assert item["title"] == orjson.loads(bytes(single.body))["title"], error
    held = problems.problem_of(HeldBack("after its voter's earlier one"), "ballots[1]")
    assert held is not None
    assert held["retry_after"] >= 1
    # A refusal of the ballot itself is final: nothing to wait for.
    refused = problems.problem_of(errors.AlreadyVoted("x"), "ballots[0]")
    assert refused is not None
    assert "retry_after" not in refused


def test_the_contract_states_the_items_retry_after() -> None:
    schema = Problem.model_json_schema()["properties"]["retry_after"]
    assert "503" in schema["description"]
    assert "Retry-After" in schema["description"]
