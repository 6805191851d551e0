"""The HTTP/1.1 protocol the API's uvicorn runs: httptools, with the deadlines it lacks.

uvicorn arms its keep-alive timer only after a response, and any byte disarms it; it has no
deadline for reading a request's head or body, and no limit on the head's size under
httptools. So an idle connection, headers trickled a line a second, or a body trickled a
byte a second would each hold a connection (and, counted by ``limit_concurrency``, crowd
out real clients). Here:

- the head (request line and headers) must arrive within ``head_timeout`` of the
  connection opening or of the request's first byte, else 408 and the connection closes;
- the body must arrive within ``body_timeout`` of the head, else 408;
- a head over ``max_head_bytes`` is refused with 431;
- past ``limit_concurrency``, the connections that opened last are refused (503), not every
  one: uvicorn compares the connections open when a request's head is in with the limit,
  so a burst past it (2,100 connections opened at once, before any had sent its request)
  had every request refused, the first 2,000 included. Here the first ``limit``
  connections to open are admitted, and one that was not takes a slot freed meanwhile when
  its request comes, or is refused;
- a connection serves at most ``max_requests`` requests; the last answer says
  ``Connection: close``. SO_REUSEPORT spreads connections over the API processes as they
  are opened, and a keep-alive connection stays where it landed: after one process restarts,
  or while the first to start was the only one listening, one process would carry every
  client of the port. Reconnecting now and then (nginx's ``keepalive_requests`` does the
  same, and also 1,000) spreads them again, for a handshake per 1,000 requests.

The deadlines are checked by one sweeper per server, a few times per deadline.

This subclasses uvicorn's HttpToolsProtocol, which is not public API: uvicorn is pinned to
a minor release, and tests/integration/test_slow_clients.py exercises every deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref
from typing import Any, cast

import orjson
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.app import create_app
from api.middleware import security_headers
from api.problems import type_of
from api.streams import CLOSING, CONNECTIONS, HANGUP
from infra.runtime.settings import Settings

HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 15.0
MAX_HEAD_BYTES = 32 * 1024
# Connections (idle ones included) and requests in flight per process before uvicorn
# answers 503: well above what a process serves at full speed, far below what exhausts it.
LIMIT_CONCURRENCY = 2000
KEEP_ALIVE = 5
MAX_REQUESTS = 1000  # per connection, before it is closed (and opened again, elsewhere)
LINGER = 2.0  # after a refusal, how long a client may take to see it and close its side


# Where the protocol puts, in a request's scope, the security headers of its answers (read
# by _too_many_connections, an ASGI app uvicorn calls in the app's place).
SECURITY = "cardinal.security_headers"


def _refusal(status: bytes, title: str, detail: str, security: list[tuple[bytes, bytes]]) -> bytes:
    """A problem document and the connection's end, written straight to the socket: with
    the security headers every answer carries, though it never passes the app's guard."""
    body = orjson.dumps(
        {
            "type": type_of(int(status[:3]), title),
            "title": title,
            "status": int(status[:3]),
            "detail": detail,
        }
    )
    headers = b"".join(name + b": " + value + b"\r\n" for name, value in security)
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/problem+json\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + headers
        + b"connection: close\r\n\r\n"
        + body
    )


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop it at a head over the limit (answered 431)."""


def _longest_head(chunk: bytes) -> int:
    """The most bytes of ``chunk`` a head that begins and ends in it can take: the longest
    stretch that ends with CRLF CRLF and holds no other (the parser gives no offsets)."""
    longest = start = 0
    while (end := chunk.find(b"\r\n\r\n", start) + 4) >= 4:
        longest, start = max(longest, end - start), end
    return longest


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body deadlines and a head size limit.

    A deadline is a time on the connection, checked by one sweeper per server (a timer per
    request phase cost 2-3 µs of every request); the head's size is counted per chunk
    received, not per header line (a Python call each)."""

    head_timeout = HEAD_TIMEOUT
    body_timeout = BODY_TIMEOUT
    max_head_bytes = MAX_HEAD_BYTES
    max_requests = MAX_REQUESTS
    # The refusals' security headers (HSTS too in production: see server_config).
    security = security_headers(production=False)

    _deadline_at = 0.0  # loop time; 0: none armed
    _deadline_part = "head"
    _in_head = True  # from a connection's start or a request's end to its next head's end
    _head_begun = False  # the parser has met the request line (blank lines before it skipped)
    _head_bytes = 0
    _tail = b""  # the last bytes of a begun head's previous chunk
    _discarding = False
    _lingering: asyncio.TimerHandle | None = None
    _head_too_large = False
    _chunk = b""  # the chunk being parsed
    _ended = False  # a request ended in it: a head that begins after it begins in it
    _requests = 0
    _admitted: set[GuardedHttpToolsProtocol] | None = None  # the server's admitted connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout, "head")  # a connection that never sends a byte
        sweeper = _sweeper(self)
        sweeper.watch()
        self._admitted = sweeper.admitted
        limit = self.config.limit_concurrency
        if limit is None or len(self._admitted) < limit:
            self._admitted.add(self)
        # uvicorn writes a response's head and body with a send() each. Under Nagle the body
        # waits for the client's delayed ACK of the head: 40 ms per answer. uvloop disables
        # Nagle itself; asyncio's loop only for sockets whose proto says TCP, which a socket
        # made by socket.socket() (or handed over by a supervisor) does not.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # a peer gone already (BSDs say EINVAL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline_at = 0.0
        if self._admitted is not None:
            self._admitted.discard(self)
        if self._lingering is not None:
            self._lingering.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:  # hung up: see _hang_up
            return
        # Bytes that arrive while a head is incomplete count toward it; where they would
        # pass the limit, the head must end within it in this chunk. A head that begins in
        # the chunk that ends the request before it (pipelined) is measured in that chunk:
        # at its end if it completes there (on_headers_complete), else after the chunk.
        if self._in_head:
            seen = self._head_bytes + len(data)
            if seen > self.max_head_bytes and not self._ends_within_limit(data):
                self._head_too_large = True
                self.send_400_response("head too large")
                return
            self._head_bytes = seen
        self._chunk, self._ended = data, False
        super().data_received(data)
        self._chunk = b""
        if self._in_head and self._head_begun and not self._discarding:
            if self._ended:
                # Begun after a request ended in this chunk: its bytes here are at most
                # those after the chunk's last CRLF CRLF (a head holds none before its end).
                # Before, they were not counted: a head of any size came in pieces behind
                # a small request (the hostile review: 90 KB, answered 200).
                last = data.rfind(b"\r\n\r\n")
                self._head_bytes = len(data) - (last + 4 if last >= 0 else 0)
                if self._head_bytes > self.max_head_bytes:
                    self._head_too_large = True
                    self.send_400_response("head too large")
                    return
            self._tail = data[-3:]  # the head's end may straddle two chunks

    def _ends_within_limit(self, data: bytes) -> bool:
        """Whether the head that this chunk continues (or begins) ends within the limit in it.
        Before a head begins, the parser skips blank lines: they do not end it."""
        if self._head_begun:
            probe, before = self._tail + data, self._head_bytes - len(self._tail)
        else:
            probe = data.lstrip(b"\r\n")
            before = self._head_bytes + len(data) - len(probe)
        end = probe.find(b"\r\n\r\n")
        return end >= 0 and before + end + 4 <= self.max_head_bytes

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._deadline_at = self.loop.time() + self.head_timeout  # _arm, inlined: per request
        self._deadline_part = "head"

    def on_headers_complete(self) -> None:
        if self._ended and _longest_head(self._chunk) > self.max_head_bytes:
            # A head that began and ended in this chunk, behind a request that ended in it
            # (the check before parsing saw only the chunk's first head). Its length here
            # is at most the longest stretch of the chunk that ends with CRLF CRLF and
            # holds no other: a head over the limit is refused (and so, rarely, one behind
            # a longer body with no CRLF CRLF in the same chunk: a pipelining client's).
            self._head_too_large = True
            raise HeadTooLarge  # the parser stops; uvicorn calls send_400_response
        self._in_head = False
        self._deadline_at = self.loop.time() + self.body_timeout
        self._deadline_part = "body"
        answering = self.cycle
        limit = self.config.limit_concurrency
        if limit is not None and self._admitted is not None:
            # uvicorn refuses where its limit_concurrency is not None and its connections
            # or tasks reach it: this connection's own admission decides instead (a limit
            # of 0 refuses, None serves).
            admitted = self._admitted
            if self not in admitted and len(admitted) < limit:
                admitted.add(self)
            served = self in admitted and len(self.tasks) < limit
            self.limit_concurrency = None if served else 0
        super().on_headers_complete()
        self._requests += 1
        # How many connections the server holds: streams take at most a share (api/streams.py).
        cast(dict[str, Any], self.scope)[CONNECTIONS] = limit
        # An event stream that a client stops reading is aborted (api/streams.py).
        cast(dict[str, Any], self.scope)[HANGUP] = self.transport.abort
        cast(dict[str, Any], self.scope)[SECURITY] = self.security  # a 503 past the limit
        if answering is not None and not answering.response_complete:
            # A request sent behind one still being answered waits for it (uvicorn pauses
            # reading meanwhile, so the client's close goes unseen). Behind an event stream
            # it would wait for ever, and hold the connection: the stream is ended instead.
            _end_stream(answering.scope)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        running = self.cycle is not None and not self.cycle.response_complete  # pipelined
        if self.transport.is_closing() or running or self.pipeline or self._head_begun:
            return
        # Idle until the next request: uvicorn's keep-alive timer goes at its first byte, even
        # a blank line (which the parser skips: no request begins), so the next head must
        # still come within head_timeout, or blank lines would hold the connection for ever.
        self._arm(self.head_timeout, "head")

    def shutdown(self) -> None:
        # uvicorn waits for open responses before it stops: tell event streams to end.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            _end_stream(cycle.scope)
        super().shutdown()

    def on_message_complete(self) -> None:
        # The last request: answered with Connection: close, then closed. Decided once its
        # body is in (closing with a body unread would reset the answer away), and only if
        # the answer has not begun (an early answer keeps the connection; the next closes).
        cycle = self.cycle
        if self._requests >= self.max_requests and cycle and not cycle.response_started:
            cycle.keep_alive = False
        self._deadline_at = 0.0
        self._in_head, self._head_begun, self._head_bytes, self._tail = True, False, 0, b""
        self._ended = True
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # Answered before its body was in (a 404, a 401): the connection is idle from
            # now, and uvicorn's keep-alive timer went at the body's first byte.
            self._arm(self.head_timeout, "head")
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._hang_up(
                _refusal(
                    b"431 Request Header Fields Too Large",
                    "Request header fields too large",
                    f"the request line and headers may take at most {self.max_head_bytes} bytes",
                    self.security,
                )
            )
            return
        detail = msg.strip().rstrip(".") or "it could not be parsed"
        self._hang_up(
            _refusal(
                b"400 Bad Request",
                "Bad request",
                f"this is not HTTP/1.1 as sent: {detail}",
                self.security,
            )
        )

    def _arm(self, seconds: float, part: str) -> None:
        self._deadline_at = self.loop.time() + seconds
        self._deadline_part = part

    def overdue(self, now: float) -> None:
        """The sweeper's check: act on a deadline passed."""
        if self._deadline_at and now >= self._deadline_at:
            self._deadline_at = 0.0
            self._too_slow(self._deadline_part)

    def _too_slow(self, part: str) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and part == "body" and cycle.response_started:
            if cycle.response_complete:  # answered without the body: just hang up
                self._hang_up(b"")
            else:  # the app is answering: let it finish, then close
                cycle.keep_alive = False
            return
        seconds = self.head_timeout if part == "head" else self.body_timeout
        self._hang_up(
            _refusal(
                b"408 Request Timeout",
                "Request timeout",
                f"the request {part} did not arrive within {seconds:g} seconds",
                self.security,
            )
        )

    def _hang_up(self, last: bytes) -> None:
        """Send ``last`` and end the connection without a reset destroying it: a socket
        closed with the client's bytes unread answers them with RST, which can discard
        the answer before the client reads it (a client trickling a head does send more).
        So: send, close our side, drop whatever still comes, and close when the client
        does, or LINGER seconds later."""
        self._deadline_at = 0.0
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # An answer under way (garbage sent behind a request): it stops quietly, for
            # it could not write after the half-close (a RuntimeError, logged as a 500).
            cycle.disconnected = True
        self.transport.write(last)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._discarding = True
        self._lingering = self.loop.call_later(LINGER, self.transport.close)


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's answer past LIMIT_CONCURRENCY, as a problem document with Retry-After
    (uvicorn's own is plain text, with no advice)."""
    body = orjson.dumps(
        {
            "type": type_of(503, "Busy"),
            "title": "Busy",
            "status": 503,
            "detail": "this server process holds as many connections as it may; retry shortly",
        }
    )
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
        *scope.get(SECURITY, GuardedHttpToolsProtocol.security),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# uvicorn's protocol answers the limit with a module-level ASGI app; this process serves
# only this protocol (the benchmark's bare endpoint runs in processes of its own).
setattr(httptools_impl, "service_unavailable", _too_many_connections)  # noqa: B010 - not exported


def _end_stream(scope: Any) -> None:
    """End the event stream answering this request, if it is one (api/streams.py)."""
    closing = cast(dict[str, Any], scope).get(CLOSING)
    if isinstance(closing, asyncio.Event):
        closing.set()


class _Sweeper:
    """Checks a server's connections against their deadlines, a few times per deadline
    (so one fires at most an eighth of the shortest deadline late), while any are open;
    and keeps the server's admitted connections (at most ``limit_concurrency``)."""

    def __init__(self, protocol: GuardedHttpToolsProtocol) -> None:
        self.loop = protocol.loop
        self.connections = protocol.connections
        self.admitted: set[GuardedHttpToolsProtocol] = set()
        self.interval = min(protocol.head_timeout, protocol.body_timeout) / 8
        self._timer: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        for connection in list(self.connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                connection.overdue(now)
        if self.connections:
            self.watch()


_SWEEPERS: weakref.WeakKeyDictionary[object, _Sweeper] = weakref.WeakKeyDictionary()


def _sweeper(protocol: GuardedHttpToolsProtocol) -> _Sweeper:
    """The sweeper of the protocol's server (its set of connections)."""
    key = protocol.server_state
    found = _SWEEPERS.get(key)
    if found is None or found.loop is not protocol.loop:  # a server run again on a new loop
        found = _SWEEPERS[key] = _Sweeper(protocol)
    return found


def server_config(settings: Settings, app: Any | None = None, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the API: the guarded protocol, uvloop, our limits."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": GuardedHttpToolsProtocol,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        # The client's address is resolved from X-Forwarded-For where the app needs it
        # (api/forwarded.py, with CIDRs from FORWARDED_ALLOW_IPS); uvicorn's own rewriting
        # would cost every request a middleware call.
        "proxy_headers": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 10,
        "timeout_keep_alive": KEEP_ALIVE,
        "limit_concurrency": LIMIT_CONCURRENCY,
        **overrides,
    }
    protocol = options["http"]
    if (
        settings.is_production
        and isinstance(protocol, type)
        and issubclass(protocol, GuardedHttpToolsProtocol)
    ):
        # The refusals written to the socket ask for HTTPS only, as the app's answers do.
        options["http"] = type(
            protocol.__name__, (protocol,), {"security": security_headers(production=True)}
        )
    return uvicorn.Config(app if app is not None else create_app(settings), **options)
