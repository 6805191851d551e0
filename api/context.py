"""What endpoints take from a request: the running services, the caller, the ids, the body."""

from __future__ import annotations

import json
from typing import TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from api.auth import Authenticator
from api.ratelimit import BallotRateLimit
from domain.errors import ElectionNotFound, InvalidRequest
from infra.audit.chain import Signer
from infra.runtime.bootstrap import Services

M = TypeVar("M", bound=BaseModel)


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def auth(request: Request) -> Authenticator:
    return request.app.state.auth  # type: ignore[no-any-return]


def signer(request: Request) -> Signer | None:
    return request.app.state.signer  # type: ignore[no-any-return]


def rate_limit(request: Request) -> BallotRateLimit | None:
    return request.app.state.rate_limit  # type: ignore[no-any-return]


def election_id(request: Request) -> UUID:
    raw = request.path_params["election_id"]
    try:
        return UUID(raw)
    except ValueError:
        raise ElectionNotFound(raw) from None


async def body(request: Request, model: type[M]) -> M:
    """The request body validated as ``model`` (400 if not JSON, 422 if the wrong shape)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as error:
        if b"\\ud" not in raw.lower() or error.errors()[0]["type"] != "json_invalid":
            raise
    # JSON that escapes a lone UTF-16 surrogate ("\ud800") is well-formed, but the fast
    # parser stops at it without saying where. Parsed leniently, validation names the field.
    return model.model_validate(json.loads(raw))


def int_param(
    request: Request, name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    """A whole-number query parameter within bounds (422 naming it otherwise)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number; got {raw!r}", field=name) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise InvalidRequest(f"{name} must be {bound}; got {value}", field=name)
    return value
