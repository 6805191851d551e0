"""The administrator's sign-in: access tokens, rotating refresh tokens, logout.

Every failure is the same 401, whatever failed (unknown address, wrong password, a used,
revoked or expired refresh token), so that an answer never tells an attacker which part
was right. Failed sign-ins are limited per account, per address and for every address
together (api/ratelimit.py); argon2 checks wait in a bounded queue (api/login.py), and a
sign-in that finds it full is a 503 Busy, told to retry in a second.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api import context, documents
from api.contract import Operation, operation
from api.login import ChecksBusy, ClientGone
from api.problems import Unauthorized
from api.ratelimit import LoginAttempt
from api.responses import JSONResponse
from api.schemas import LoginIn, RefreshIn

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ROLE = "admin"
FAILED = "the email address or password is wrong, or this sign-in has ended; sign in again"
BUSY = "the server is checking as many sign-ins as it can right now; retry after a second"
BUSY_WAIT = 1


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
    if attempt.over_budget is not None:
        # Every address's failures together spent the global budget: nothing is hashed,
        # and only the administrator's own address and password pass (an HMAC, the same
        # work for any address). A failure still counts against its account and address.
        if not edge.admin.recognises or context.auth(request).access_tokens is None:
            # No one can pass here (no verifier in this process: a hashed setting no
            # sign-in has yet been accepted with; or no key to sign an access token): the
            # same 429 for any address and password, so it tells nothing and its units go
            # back. Kept, ten of the administrator's own retries would spend its account.
            await attempt.give_back()
            raise attempt.over_budget
        if not edge.admin.known(body.email, body.password):
            raise attempt.over_budget
    elif not edge.admin.configured or context.auth(request).access_tokens is None:
        # No account (or no key to sign an access token): no sign-in can succeed, and
        # there is no address to hide. The same 401, without argon2.
        raise Unauthorized(FAILED)
    elif not await _checked(request, attempt, body.email, body.password):
        raise Unauthorized(FAILED)
    if context.auth(request).access_tokens is None:
        raise Unauthorized(FAILED)
    await attempt.give_back()
    subject = edge.admin.email
    assert subject is not None
    return _tokens(request, subject, await edge.refresh_tokens.issue(subject))


async def _checked(request: Request, attempt: LoginAttempt, email: str, password: str) -> bool:
    """argon2's answer, in its turn; a 503 Busy at once (its units given back: nothing was
    checked) where the queue is full. A client that hangs up meanwhile is not checked."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        return await context.edge(request).admin.check(email, password, gone)
    except ChecksBusy:
        await attempt.give_back()
        raise HTTPException(503, BUSY, headers={"Retry-After": str(BUSY_WAIT)}) from None
    except ClientGone:
        raise ClientDisconnect from None  # (no one hears the answer)
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    """Until the client hangs up (its body has been read: nothing else comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
