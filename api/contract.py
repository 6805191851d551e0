"""The published contract: OpenAPI 3.1, generated from the route table and pydantic models.

Each endpoint declares its operation beside its code (``@operation(Operation(...))``): its
id, request body model, answer model, the statuses it refuses with, its parameters and
links. ``openapi(routes)`` walks the app's routes (paths and methods come from there, so a
route cannot be documented under another path) and emits one document: request bodies in
validation mode (``additionalProperties: false``), answers in validation mode too (an answer
may carry more than it lists), every refusal as a problem+json, bearer security.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from api.documents import Problem
from domain.errors import InvalidRequest

REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"
F = TypeVar("F", bound=Callable[..., Any])

TITLES = {
    400: "The body is not one JSON document with unique keys",
    401: "No token, or one not recognised",
    403: "This token's role may not do this",
    404: "Not found",
    408: "The request was not sent in time",
    409: "Conflict with the current state",
    413: "The body is larger than the route takes (64 KiB; a batch: 4 MiB, 128,000 values)",
    415: "The body is not JSON",
    422: "A field breaks the schema or the rules, or a query parameter is unknown or given "
    "twice (the problem names it)",
    429: "A rate limit refused the request (Retry-After says when to try again)",
    503: "A dependency is unavailable or busy (Retry-After says when to try again)",
}
RATE_HEADERS = {
    "RateLimit-Policy": {
        "description": "the quota policies (draft-ietf-httpapi-ratelimit-headers)",
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": "units left in each policy, and for how long (t)",
        "schema": {"type": "string"},
    },
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
STREAM = "text/event-stream"
# How a stream's answer is framed (api/streams.py), for a client reading it without the source.
STREAM_FRAMES = (
    "Server-Sent Events. The first frame sets `retry: 2000` (reconnect after 2 s). Each event "
    "is `id: <position>` (the log position its document is as of), `event: results` and one "
    "`data:` line of JSON. The current document comes at once, then a new one each time it "
    "changes, at most 4 a second; a comment line (`: heartbeat`) every 15 s while nothing "
    "changes. Nothing missed is replayed: a reconnection (with or without Last-Event-ID) "
    "starts again with the current document, which holds every change before it."
)
# A stream holds one of its client address's slots while open (api/streams.py): past
# STREAMS_PER_CLIENT a new one is refused, 429 "Too many streams", with Retry-After.
TOO_MANY_STREAMS = (
    "Too many streams open from this client address (STREAMS_PER_CLIENT; type "
    "https://iana.org/assignments/http-problem-types#quota-exceeded): close one, or wait "
    "Retry-After seconds"
)
NO_STORE = {
    "Cache-Control": {
        "description": "no-store: the answer carries a token",
        "required": True,
        "schema": {"type": "string", "const": "no-store"},
    }
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path", "query" or "header"
    schema: Mapping[str, Any]
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """What the contract says about one method of one path."""

    operation_id: str
    summary: str
    tag: str
    auth: bool = True
    body: Any = None
    body_required: bool = True
    ok: Any = None
    status: int = 200
    # Other success statuses with the same answer (a revision answers 200, a cast 201).
    also: tuple[int, ...] = ()
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    limited: bool = False
    no_store: bool = False
    media: str = "application/json"
    ok_headers: Mapping[str, Any] = field(default_factory=dict)
    # Answers If-None-Match with 304 (and the ETag on every 200).
    conditional: bool = False
    # The token is optional: some resources (elections with public_results) need none.
    token_optional: bool = False
    # A stream's events: what each one's data holds (the frames are STREAM_FRAMES').
    stream_data: str = ""

    @property
    def streamed(self) -> bool:
        """Server-Sent Events: each stream takes a slot of its client address's, and is
        refused 429 past STREAMS_PER_CLIENT."""
        return self.media == STREAM

    def refusals(self) -> list[int]:
        # 422 on every operation: ``operation`` refuses an unknown or repeated query
        # parameter on each, those that take none too (GET /api/health?foo=1).
        found = set(self.errors) | {422, 503}
        if self.auth:
            found.add(401)
        if self.body is not None:
            found |= {400, 413, 415, 422}
        if self.limited or self.streamed:
            found.add(429)
        return sorted(found)


def operation(spec: Operation) -> Callable[[F], F]:
    """Declare an endpoint's operation (read by ``openapi``), and hold the endpoint to it:
    a query parameter the operation does not declare is refused with 422, not ignored
    (a misspelt ``min_postion`` would otherwise silently do nothing), and so is one given
    twice."""
    allowed = {p.name for p in spec.params if p.where == "query"}
    takes = ", ".join(sorted(allowed)) or "none"

    def declare(endpoint: F) -> F:
        @functools.wraps(endpoint)
        async def checked(request: Request) -> Any:
            if request.scope["query_string"]:
                seen: set[str] = set()
                for name, _ in request.query_params.multi_items():
                    if name not in allowed:
                        raise InvalidRequest(
                            f"unknown query parameter {name[:40]!r}; this operation takes {takes}",
                            field=name[:40],
                        )
                    if name in seen:  # (which one would count? neither, as with JSON keys)
                        raise InvalidRequest(
                            f"the query parameter {name!r} is given more than once; give it once",
                            field=name,
                        )
                    seen.add(name)
            return await endpoint(request)

        checked.__openapi__ = spec  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return declare


def declared(routes: Iterable[BaseRoute]) -> list[tuple[str, str, Operation | None]]:
    """(path, method, operation or None) for every route method the contract should list."""
    found = []
    for route in routes:
        if not isinstance(route, Route) or not route.include_in_schema:
            continue
        for method in sorted((route.methods or set()) - {"HEAD"}):
            spec = getattr(route.endpoint, "__openapi__", None)
            found.append((route.path, method.lower(), spec))
    return found


def openapi(
    routes: Sequence[BaseRoute], *, title: str, version: str, description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these routes."""
    operations = [(path, method, spec) for path, method, spec in declared(routes) if spec]
    inputs: list[tuple[Any, JsonSchemaMode, TypeAdapter[Any]]] = [
        (("problem",), "validation", TypeAdapter(Problem))
    ]
    for _, _, spec in operations:
        if spec.body is not None:
            inputs.append(((spec.operation_id, "body"), "validation", TypeAdapter(spec.body)))
        if spec.ok is not None:
            inputs.append(((spec.operation_id, "ok"), "validation", TypeAdapter(spec.ok)))
    keys, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF)
    problem = {PROBLEM: {"schema": keys[(("problem",), "validation")]}}
    paths: dict[str, dict[str, Any]] = {}
    for path, method, spec in operations:
        paths.setdefault(path, {})[method] = _operation(spec, keys, problem)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a role token, a voter token (cvt_...), or an access "
                    "token from POST /api/auth/login (a JWT acting as the admin role)",
                }
            },
        },
    }


def _operation(
    spec: Operation, keys: Mapping[Any, Any], problem: Mapping[str, Any]
) -> dict[str, Any]:
    ok: dict[str, Any] = {"description": spec.summary}
    if spec.ok is not None:
        ok["content"] = {spec.media: {"schema": keys[((spec.operation_id, "ok"), "validation")]}}
    elif spec.streamed:
        frames = f"{STREAM_FRAMES} Each event's data: {spec.stream_data}"
        ok["content"] = {spec.media: {"schema": {"type": "string", "description": frames}}}
    elif spec.media != "application/json":
        ok["content"] = {spec.media: {"schema": {"type": "string"}}}
    headers = _ok_headers(spec)
    if headers:
        ok["headers"] = headers
    if spec.links:
        ok["links"] = {name: dict(link) for name, link in spec.links.items()}
    responses: dict[str, Any] = {str(status): ok for status in (spec.status, *spec.also)}
    if spec.conditional:
        responses["304"] = {
            "description": "Not modified: the document still has an ETag sent in If-None-Match "
            "(or that header is *, and the document exists)"
        }
    for status in spec.refusals():
        refusal: dict[str, Any] = {"description": TITLES.get(status, "Refused"), "content": problem}
        if status == 429 and spec.limited:
            refusal["headers"] = {**RATE_HEADERS, **RETRY_AFTER}
        elif status == 429:  # (a stream: no rate limit, a cap on open streams)
            refusal["description"] = TOO_MANY_STREAMS
            refusal["headers"] = dict(RETRY_AFTER)
        if status == 503:
            refusal["headers"] = {"Retry-After": {**RETRY_AFTER["Retry-After"], "required": False}}
        responses[str(status)] = refusal
    found: dict[str, Any] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "tags": [spec.tag],
        "responses": responses,
        "security": _security(spec),
    }
    if spec.params:
        found["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.required or p.where == "path",
                "schema": dict(p.schema),
                **({"description": p.description} if p.description else {}),
            }
            for p in spec.params
        ]
    if spec.body is not None:
        found["requestBody"] = {
            "required": spec.body_required,
            "content": {
                "application/json": {"schema": keys[((spec.operation_id, "body"), "validation")]}
            },
        }
    return found


def _security(spec: Operation) -> list[dict[str, list[str]]]:
    if not spec.auth:
        return []
    return [{"bearerAuth": []}, {}] if spec.token_optional else [{"bearerAuth": []}]


def _ok_headers(spec: Operation) -> dict[str, Any]:
    headers = {**spec.ok_headers}
    if spec.conditional:
        headers["ETag"] = {"required": True, "schema": {"type": "string"}}
    if spec.limited:
        headers.update(RATE_HEADERS)
    if spec.no_store:
        headers.update(NO_STORE)
    return headers
