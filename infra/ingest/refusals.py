"""The headers a refused ballot is forwarded with, bounded.

A message's headers travel in one frame, which the broker takes up to its frame size
(131,072 bytes by default) and answers with closing the connection beyond it. A problem
quotes what it refuses (a field name, an unparsable stretch of JSON), so a ballot with a
200 KB key would make a refusal no broker takes: the batch it came in would be redelivered
until the delivery limit dead-lettered it, valid ballots included. So every string a
refusal's headers carry is shortened, and what the whole set holds stays a few KB.
"""

from __future__ import annotations

from typing import Any

import orjson

from infra.ingest.strings import sendable

MAX_DETAIL = 1000  # characters of the problem's detail (x-refusal)
MAX_TEXT = 200  # characters of any other string of the problem (x-refusal-problem)
MAX_ISSUES = 10  # entries of any list of the problem (a validation error's issues)
MAX_PROBLEM = 4096  # bytes of x-refusal-problem; beyond, only its title, status and detail
ESSENTIAL = ("type", "title", "status", "detail")


def refusal_headers(problem: dict[str, Any]) -> dict[str, Any]:
    """``x-refusal`` (the detail), ``x-refusal-status`` and ``x-refusal-problem`` (the
    problem document), each shortened where the problem is long: at most 10 KB in all."""
    detail = shortened(str(problem.get("detail", "")), MAX_DETAIL)
    document = orjson.dumps({**_bounded(problem), "detail": detail})
    if len(document) > MAX_PROBLEM:
        document = orjson.dumps(
            {
                **{name: _bounded(problem[name]) for name in ESSENTIAL if name in problem},
                "detail": detail,
            }
        )
    return {
        "x-refusal": detail,
        "x-refusal-status": problem["status"],
        "x-refusal-problem": document.decode(),
    }


def shortened(text: str, limit: int) -> str:
    """``text``, sendable, cut to ``limit`` characters (an ellipsis says it was cut)."""
    text = sendable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return shortened(value, MAX_TEXT)
    if isinstance(value, dict):
        return {shortened(str(k), MAX_TEXT): _bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bounded(v) for v in value[:MAX_ISSUES]]
    return value
