"""JSON responses rendered with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ProblemResponse(JSONResponse):
    """An RFC 9457 problem document."""

    media_type = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ProblemResponse:
    body = problem_body(status, title, detail, field=field, **extra)
    return ProblemResponse(body, status_code=status, headers=headers)


def problem_body(
    status: int, title: str, detail: str, *, field: str | None = None, **extra: Any
) -> dict[str, Any]:
    """An RFC 9457 problem document, as a response carries it or a batch's result does; its
    type is the title's in api/problems.py's table unless ``type`` is given in ``extra``."""
    from api.problems import type_of  # (api.problems renders its problems with this)

    body: dict[str, Any] = {"type": type_of(status, title), "title": title, "status": status}
    body["detail"] = detail
    if field is not None:
        body["field"] = field
    body.update(extra)
    return body
