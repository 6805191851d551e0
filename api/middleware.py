"""One pure ASGI middleware in front of the app: times requests, bounds bodies, puts the
security headers on every answer, and takes the ballot hot path straight to its endpoint.

On the ballot path every wrapping layer is a coroutine call per request; exception
middleware, router and request/response wrappers together cost about as much as the
endpoint's own work. Ballots therefore go straight from here to the same endpoint function,
with the same error table; everything else goes through Starlette as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Mapping, Set
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deadline import abandon
from api.responses import problem
from infra.batched_metrics import BatchedHistogram
from infra.metrics import HTTP_SECONDS

Handler = Callable[[Request, Exception], Response]
log = logging.getLogger(__name__)

# Reads answer within these or get a 503 (a recount from the log, `?at=`, may take longer).
READS = ("GET", "HEAD")
READ_DEADLINE = 15.0
LONG_READ = 120.0
# A read still waiting looks at the store's state (the writer's, infra/store/health.py) this
# often: once the store is marked down, it is answered 503 at once, not at its deadline
# (review D3: during a freeze, ballots were refused within 3.5 s, reads after 15 s). A read
# served without the store (the elections' listing, from the cache) is done before it looks.
STORE_LOOK = 0.25
# A read (not a recount) waiting this long has the writer probe the store, as a commit or a
# lookup waiting as long does (writer.STALLED_AFTER): reads alone on a frozen store are
# then answered within about 3.5 s too.
READ_SUSPECT_AFTER = 2.0
READ_UNREACHABLE = "the event store is unreachable: retry shortly"
# Reads that say the store's state themselves, within bounds of their own (/api/ready asks
# the database within 2 s, and names what is unreachable), or answer without it (/metrics:
# the process's own counters, the database's figures given up after 2 s; an outage is when
# operators need them): never cut for it.
OWN_ANSWER = ("/api/ready", "/api/health", "/metrics")

# On every answer: no MIME sniffing, no referrer leaving the API, never framed (both the old
# header and CSP's frame-ancestors, the latter only where the answer sets no policy of its own).
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
FRAME_POLICY = (b"content-security-policy", b"frame-ancestors 'none'")
# In production the API is reached over HTTPS (through a proxy that terminates TLS).
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
# Set in a request's scope by the HTTP protocol (api/protocol.py) where it answered the
# request itself (408: its body not sent in time) while the app was under way: the client
# saw that answer, never the app's, which ends on the hang-up. Such a request is counted in
# cardinal_http_protocol_refusals_total, and left out of the app's request metrics.
REFUSED_BY_PROTOCOL = "cardinal.refused"


def security_headers(production: bool) -> list[tuple[bytes, bytes]]:
    """What an answer that sets no policy of its own carries: the headers RequestGuard adds,
    and the ones the HTTP protocol's refusals written straight to the socket (api/protocol.py)
    carry, which never pass through it."""
    return [*SECURITY_HEADERS, FRAME_POLICY, *([HSTS] if production else [])]


class RequestGuard:
    """Refuse bodies over ``max_bytes`` with 413 (before reading them where the length is
    declared), and observe each request's duration by route template: election ids in the
    labels would make one series per election."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        hot_route: Route | None = None,
        handlers: Mapping[type[Exception], Handler] | None = None,
        production: bool = False,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.larger = [(compile_path(path)[0], limit) for path, limit in (larger or {}).items()]
        self.hot_route = hot_route
        self.hot_pattern = compile_path(hot_route.path)[0] if hot_route else None
        self.handlers = dict(handlers or {})
        self._timers: dict[tuple[str, str, int], BatchedHistogram] = {}
        self.security = [*SECURITY_HEADERS, *([HSTS] if production else [])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        begun = False

        async def observed(message: Message) -> None:
            nonlocal status, begun
            if message["type"] == "http.response.start":
                begun = True
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.extend(self.security)
                if not any(name.lower() == FRAME_POLICY[0] for name, _ in headers):
                    headers.append(FRAME_POLICY)
                message = {**message, "headers": headers}
            await send(message)

        limit = self._limit(scope)
        try:
            if self._declared_too_large(scope, limit):
                await problem(413, "Payload too large", self._detail(limit))(
                    scope, receive, observed
                )
            elif (hot := self._hot(scope)) is not None:
                status = await self._serve_hot(scope, hot, receive, send, limit)
            elif scope["method"] in READS:
                await self._read(scope, self._limited(receive, limit), observed)
            else:
                await self.app(scope, self._limited(receive, limit), observed)
        except Exception as error:
            # Unhandled: answered here, with this guard's headers, rather than by
            # Starlette's outermost error middleware, whose 500 would pass around it.
            unexpected = self.handlers.get(Exception)
            if begun or unexpected is None:
                raise
            answer = unexpected(Request(scope), error)
            assert isinstance(answer, Response)
            await answer(scope, receive, observed)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    async def _read(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A read that has not begun its answer within its deadline is answered 503 and
        cancelled: a read changes nothing, so it may be cut short at any point before it
        answers (a stream, once begun, goes on)."""
        begun = asyncio.Event()
        cut = False

        async def guarded(message: Message) -> None:
            if cut:
                return  # answered already, by the deadline
            if message["type"] == "http.response.start":
                begun.set()
            await send(message)

        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        deadline = LONG_READ if "at" in query else READ_DEADLINE
        task = asyncio.ensure_future(self.app(scope, receive, guarded))
        answering = asyncio.ensure_future(begun.wait())
        waiting = {task, answering}
        draining = _draining(scope)
        if draining is not None:  # (the server stopping: answered before its deadline)
            stopping = asyncio.ensure_future(draining.wait())
            waiting.add(stopping)
        writer = None if scope["path"] in OWN_ANSWER else _writer(scope)
        unreachable = await self._wait(waiting, deadline, writer, recount="at" in query)
        for waiter in waiting - {task}:
            waiter.cancel()
        if task.done() or begun.is_set():
            await task
            return
        cut = True
        abandon(task)
        if unreachable:
            log.info("%s %s: the event store is marked down; answered 503", *_named(scope))
            answer = _refusal(scope, "Event store unavailable", READ_UNREACHABLE, "5")
        elif draining is not None and draining.is_set():
            answer = _refusal(
                scope,
                "Service unavailable",
                "this server is stopping and its store has not answered; retry shortly",
                "1",
            )
        else:
            log.warning(
                "%s %s: no answer within %g s; answered 503",
                scope["method"],
                scope["path"],
                deadline,
            )
            answer = _refusal(
                scope,
                "Service unavailable",
                f"the event store did not answer within {deadline:g} seconds; retry shortly",
                "5",
            )
        await answer(scope, receive, send)

    @staticmethod
    async def _wait(
        waiting: Set[asyncio.Future[Any]], deadline: float, writer: Any, *, recount: bool
    ) -> bool:
        """Until one of ``waiting`` is done or the deadline passes; True if the store was
        found marked down first (the writer's health, looked at every STORE_LOOK)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while (left := started + deadline - loop.time()) > 0:
            look = left if writer is None else min(left, STORE_LOOK)
            done, _ = await asyncio.wait(waiting, timeout=look, return_when=FIRST_COMPLETED)
            if done or writer is None:
                return False
            if not writer.health.up:
                return True
            if not recount and loop.time() - started >= READ_SUSPECT_AFTER:
                writer.suspect()  # (one probe at a time, STALL_REPROBE apart: the writer's)
        return False

    def _hot(self, scope: Scope) -> Callable[[Request], Awaitable[Response]] | None:
        route = self.hot_route
        if (
            route is None
            or self.hot_pattern is None
            or scope["method"] not in (route.methods or ())
        ):
            return None
        match = self.hot_pattern.match(scope["path"])
        if match is None:
            return None
        scope["path_params"] = match.groupdict()
        scope["route"] = route
        endpoint: Callable[[Request], Awaitable[Response]] = route.endpoint
        return endpoint

    async def _serve_hot(
        self,
        scope: Scope,
        endpoint: Callable[[Request], Awaitable[Response]],
        receive: Receive,
        send: Send,
        limit: int,
    ) -> int:
        """The ballot's endpoint, its answer's status. The response is ours, so the
        security headers go on it here rather than through a wrapper of ``send``."""
        request = Request(scope, self._limited(receive, limit))
        try:
            response = await endpoint(request)
        except Exception as error:
            response = self._handler(error)(request, error)
        headers = response.raw_headers
        headers.extend(self.security)
        if not any(name == FRAME_POLICY[0] for name, _ in headers):
            headers.append(FRAME_POLICY)
        await response(scope, receive, send)
        return response.status_code

    def _handler(self, error: Exception) -> Handler:
        for kind in type(error).__mro__:
            handler = self.handlers.get(kind)
            if handler is not None:
                return handler
        raise error

    def _limit(self, scope: Scope) -> int:
        """The body limit of this request's route."""
        for pattern, limit in self.larger:
            if pattern.match(scope["path"]):
                return limit
        return self.max_bytes

    def _declared_too_large(self, scope: Scope, limit: int) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) > limit
        return False

    def _limited(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, self._detail(limit))
            return message

        return limited

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        if REFUSED_BY_PROTOCOL in scope:  # answered by the protocol, and counted there
            return
        route = scope.get("route")
        key = (scope["method"], route.path if isinstance(route, Route) else "unmatched", status)
        timer = self._timers.get(key)
        if timer is None:
            series = HTTP_SECONDS.labels(key[0], key[1], str(status))
            timer = self._timers[key] = BatchedHistogram(series)
        timer.observe(seconds)

    @staticmethod
    def _detail(limit: int) -> str:
        return f"the request body is larger than {limit // 1024} KiB"


def _writer(scope: Scope) -> Any:
    """This process's writer (``health``: the store's state as it last found it;
    ``suspect()``: have it probe the store), or None (an app without services)."""
    app = scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    writer = getattr(services, "writer", None)
    return writer if hasattr(writer, "health") and hasattr(writer, "suspect") else None


def _refusal(scope: Scope, title: str, detail: str, retry: str) -> Response:
    """A read cut short: 503 with Retry-After, as a problem document, or as the
    dashboards' error page for a browser asking for one of their pages (it showed the
    problem+json raw, and kept it up after the store came back: the page retries)."""
    from api.routes.pages import guard_page  # (the pages import much of the API)

    page = guard_page(scope, 503, title, detail, retry)
    if page is not None:
        return page
    return problem(503, title, detail, headers={"Retry-After": retry})


def _named(scope: Scope) -> tuple[str, str]:
    return scope["method"], scope["path"]


def _draining(scope: Scope) -> asyncio.Event | None:
    """The event set when this process begins to stop (infra/runtime/bootstrap.Services)."""
    app = scope.get("app")
    services = getattr(getattr(app, "state", None), "services", None)
    event = getattr(services, "draining", None)
    return event if isinstance(event, asyncio.Event) else None
