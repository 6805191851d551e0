"""The administrator's sign-in: access tokens, rotating refresh tokens, logout.

Every failure is the same 401, whatever failed (unknown address, wrong password, a used,
revoked or expired refresh token), so that an answer never tells an attacker which part
was right. Failed sign-ins are limited per account and per address (api/ratelimit.py).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, operation
from api.problems import Unauthorized
from api.responses import JSONResponse
from api.schemas import LoginIn, RefreshIn

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ROLE = "admin"
FAILED = "the email address or password is wrong, or this sign-in has ended; sign in again"


@operation(
    Operation(
        "login",
        "Sign in as the administrator (SUPER_ADMIN_EMAIL): an access token and a refresh token",
        "auth",
        auth=False,
        body=LoginIn,
        ok=documents.Tokens,
        errors=(401,),
        limited=True,
        no_store=True,
    )
)
async def login(request: Request) -> Response:
    body = await context.body(request, LoginIn)
    edge = context.edge(request)
    attempt = await edge.limits.login_attempt(request, body.email)
    right = await edge.admin.check(body.email, body.password)
    if not right or context.auth(request).access_tokens is None:
        raise Unauthorized(FAILED)
    await attempt.give_back()
    subject = edge.admin.email
    assert subject is not None
    return _tokens(request, subject, await edge.refresh_tokens.issue(subject))


@operation(
    Operation(
        "refresh",
        "Trade a refresh token (once) for a new access token and the next refresh token",
        "auth",
        auth=False,
        body=RefreshIn,
        ok=documents.Tokens,
        errors=(401,),
        no_store=True,
    )
)
async def refresh(request: Request) -> Response:
    body = await context.body(request, RefreshIn)
    edge = context.edge(request)
    rotated = await edge.refresh_tokens.rotate(body.refresh_token)
    if rotated is None or rotated[0] != edge.admin.email:
        raise Unauthorized(FAILED)
    subject, following = rotated
    return _tokens(request, subject, following)


@operation(
    Operation(
        "logout",
        "End a sign-in: its refresh tokens stop working (access tokens expire on their own)",
        "auth",
        auth=False,
        body=RefreshIn,
        status=204,
    )
)
async def logout(request: Request) -> Response:
    body = await context.body(request, RefreshIn)
    await context.edge(request).refresh_tokens.revoke(body.refresh_token)
    return Response(status_code=204, headers=NO_STORE)


def _tokens(request: Request, subject: str, refresh_token: str) -> Response:
    access = context.auth(request).access_tokens
    if access is None:  # no JWT_SECRET_KEY: nothing can sign an access token
        raise Unauthorized(FAILED)
    return JSONResponse(
        {
            "access_token": access.issue(subject, ROLE),
            "token_type": "bearer",
            "expires_in": access.lifetime,
            "refresh_token": refresh_token,
        },
        headers=NO_STORE,
    )
