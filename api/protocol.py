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
import logging
import math
import socket
import time
import weakref
from collections.abc import Sequence
from typing import Any, cast

import httptools
import orjson
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.app import create_app
from api.middleware import REFUSED_BY_PROTOCOL, security_headers
from api.problems import type_of
from api.streams import CLOSING, CONNECTIONS, HANGUP
from infra.metrics import HTTP_REFUSAL_REASONS, HTTP_REFUSALS
from infra.runtime.settings import Settings

HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 15.0
MAX_HEAD_BYTES = 32 * 1024
# Connections (idle ones included) and requests in flight per process before uvicorn
# answers 503: well above what a process serves at full speed, far below what exhausts it.
LIMIT_CONCURRENCY = 2000
KEEP_ALIVE = 5
# Seconds uvicorn gives requests in progress at shutdown (the writer is drained DRAIN_MARGIN
# before it ends: every request not answering yet is answered then). It was 10: with the
# stops that follow it (the hub, the rate limiter, the services, the tasks left) an API
# process of `serve` could take 21 s with the store hung, past the supervisor's
# STOP_TIMEOUT (20 s) before SIGKILL: tests/unit/test_shutdown_budget.py sums them.
GRACE = 8
MAX_REQUESTS = 1000  # per connection, before it is closed (and opened again, elsewhere)
LINGER = 2.0  # after a refusal, how long a client may take to see it and close its side


# Each refusal's series at 0 from the start (one born at 1 has no increase()), and at hand:
# a labels() lookup per refusal is a dictionary built and searched under a lock.
REFUSED = {reason: HTTP_REFUSALS.labels(reason) for reason in HTTP_REFUSAL_REASONS}

# A warning any client can cause at will is said once per SAID_EVERY seconds per process
# at most: uvicorn wrote one per malformed request (500 lines in 0.17 s from one client, the
# DoS review: a disk filled at will). The first is said at once; what follows within the
# interval is summed up in one line when it ends.
SAID_EVERY = 60.0


class _Said:
    """One kind of warning a client can cause at will, said once per SAID_EVERY at most:
    ``first`` at once (with its ``detail``), then, at the interval's end, ``summary`` (or
    ``one``, where one came) with how many came meanwhile and the last one's detail.
    Details are fixed words (the parser's reason), never what the client sent, and never
    its address: the log holds no client's address (there is no access log). A summary
    pending as the server stops is said then (say_pending)."""

    def __init__(self, first: str, summary: str, one: str) -> None:
        self.first = first
        self.summary = summary
        self.one = one
        self._said_at = -math.inf  # monotonic: when a line was last said
        self._since = 0  # how many came since, unsaid
        self._last = ""
        self._due = 0.0  # monotonic: when the summary is due, while one is pending
        self._timer: asyncio.TimerHandle | None = None
        # The pending summary's number: a timer left by one said already (its loop stalled
        # or stopped) finds another's, and says nothing (it said a second summary at once).
        self._pending = 0

    def note(self, loop: asyncio.AbstractEventLoop, detail: str) -> None:
        now = time.monotonic()
        if self._timer is not None and now > self._due + SAID_EVERY:
            # Its timer is long overdue: the loop stalled, or stopped (a server run again
            # on a new loop).
            self.say_pending()
        if self._timer is None and now - self._said_at >= SAID_EVERY:
            _LOG.warning(self.first, detail, SAID_EVERY)
            self._said_at = now
            return
        self._since += 1
        self._last = detail
        if self._timer is None:
            self._due = self._said_at + SAID_EVERY
            delay = max(0.0, self._due - now)
            self._timer = loop.call_later(delay, self._summarise, self._pending)

    def _summarise(self, pending: int) -> None:
        if pending == self._pending:  # (else that summary was said already)
            self.say_pending()

    def say_pending(self) -> None:
        """Say the summary pending, if any, now."""
        self._pending += 1
        self._timer = None
        if self._since:
            said = self.summary if self._since > 1 else self.one
            _LOG.warning(said, self._since, SAID_EVERY, self._last)
            self._said_at = time.monotonic()
        self._since = 0


_LOG = logging.getLogger("uvicorn.error")  # where uvicorn's protocol says these


class _Unsaid:
    """The protocol's logger while uvicorn refuses a request past the connection limit: its
    warning for it, one per refusal, is said by BUSY instead. Anything else is said as
    ever (though the refusal's cycle is given the real logger: on_headers_complete)."""

    def warning(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(_LOG, name)


_UNSAID = cast(logging.Logger, _Unsaid())
MALFORMED = _Said(
    "a request that is not HTTP/1.1 was answered 400 (%s); such requests are said once "
    "per %g s at most (counted in cardinal_http_protocol_refusals_total)",
    "%d more requests that are not HTTP/1.1 answered 400 in the last %g s, the last: %s",
    "%d more request that is not HTTP/1.1 answered 400 in the last %g s: %s",
)
UPGRADE = _Said(
    "a request asked to upgrade to a protocol this server does not serve, and was answered "
    "as HTTP/1.1 (%s); such requests are said once per %g s at most",
    "%d more requests asked to upgrade to a protocol this server does not serve in the "
    "last %g s, the last: %s",
    "%d more request asked to upgrade to a protocol this server does not serve in the "
    "last %g s: %s",
)
BUSY = _Said(
    "a request past this process's connection limit was answered 503 (%s); such requests "
    "are said once per %g s at most (counted in cardinal_http_protocol_refusals_total)",
    "%d more requests past this process's connection limit answered 503 in the last %g s, "
    "the last: %s",
    "%d more request past this process's connection limit answered 503 in the last %g s: %s",
)


def say_pending() -> None:
    """Say every summary pending now: the server is stopping (api/server.py), and its
    timers would not run (a minute's refusals, unsaid, would leave no line)."""
    for said in (MALFORMED, UPGRADE, BUSY):
        said.say_pending()


# Where the protocol puts, in a request's scope, the security headers of its answers (read
# by _too_many_connections, an ASGI app uvicorn calls in the app's place).
SECURITY = "cardinal.security_headers"
# And, in a request refused past the connection limit, why (BUSY's detail).
BUSY_DETAIL = "cardinal.busy"


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


END_OF_HEAD = b"\r\n\r\n"  # every head ends so (llhttp refuses bare LF), and holds no other


def _end_of_last(data: bytes, begin: int) -> int:
    """Where the last CRLF CRLF of ``data`` from ``begin`` on ends; ``begin`` if none."""
    found = data.rfind(END_OF_HEAD, begin)
    return found + 4 if found >= 0 else begin


def _reason(error: Exception) -> str:
    """Why the parser stopped, in llhttp's fixed words ("Invalid header token"; "`on_url`
    callback error" where a callback raised, whatever that error says): never the
    request's bytes."""
    return (str(error) or type(error).__name__)[:80]


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop it at a head over the limit (answered 431)."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body deadlines and a head size limit.

    A deadline is a time on the connection, checked by one sweeper per server (a timer per
    request phase cost 2-3 µs of every request); the head's size is counted per piece of a
    chunk fed to the parser, not per header line (a Python call each): see data_received."""

    head_timeout = HEAD_TIMEOUT
    body_timeout = BODY_TIMEOUT
    max_head_bytes = MAX_HEAD_BYTES
    max_requests = MAX_REQUESTS
    # The refusals' security headers (HSTS too in production: see server_config).
    security = security_headers(production=False)

    _deadline_at = 0.0  # loop time; 0: none armed
    _deadline_part = "head"
    # The deadline a stalled sweep re-armed (``overdue``): while it is the one armed, a
    # later sweep refuses, stalled or not (the grace is granted once per deadline).
    _graced_at = -1.0
    _in_head = True  # from a connection's start or a request's end to its next head's end
    _head_begun = False  # the parser has met the request line (blank lines before it skipped)
    # The head's bytes before the piece being parsed; -1 where it began in that piece (see
    # _before: the previous request's body before it in the piece is not the head).
    _head_bytes = 0
    _piece = 0  # the length of the piece being parsed where its head is measured, else 0
    # The previous request's body length (uvicorn's cycle.body) where the piece being parsed
    # began, or 0 where its head ended in it: the difference is its body bytes in the piece.
    _body_at = 0
    _ended = False  # a request ended in the piece being parsed
    _tail = b""  # the last bytes of a begun head's previous chunk
    _discarding = False
    _lingering: asyncio.TimerHandle | None = None
    _head_too_large = False
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
        # The parser gives no offsets, so a chunk is fed in pieces whose heads can be
        # counted; most are fed whole. A head ends at the first CRLF CRLF after it begins,
        # so it lies within a stretch between two: stretches no longer than the limit hold
        # no head over it and are fed together; a longer one is fed on its own, its head
        # measured (in on_headers_complete) as the piece less the previous request's body
        # bytes in it. So is the chunk's end after its last CRLF CRLF, where a head may be
        # left incomplete, to be counted on with the next chunk. Each byte is searched
        # about twice whatever the chunk holds: the pieces are at most two, plus two per
        # limit's length (rescanning the chunk per request made pipelined ones quadratic).
        size = len(data)
        room = self.max_head_bytes
        if self._in_head:
            # Bytes that arrive while a head is incomplete count toward it; where they
            # would pass the limit, the head must end within it in this chunk.
            room -= self._head_bytes
            if size > room and not self._ends_within_limit(data):
                self._too_large()
                return
            if size > room or self._head_begun:
                self._parse(data, self._pieces(data, room))
                return
        elif size > room:
            self._parse(data, self._pieces(data, room))
            return
        else:  # a request's body may end in the chunk: see _before
            self._body_at = self._body_length()
        # The chunk is no longer than the limit, and begins no head's middle (a request
        # whole, typically): no head in it can pass the limit, and it is fed whole.
        requests = self._requests
        self._unset_keepalive_if_required()
        self._ended = False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._unparsed(error)
            return
        if self._in_head:
            if self._head_begun:  # begun in the chunk
                if self._ended:
                    self._recount(data, self._requests - requests)
                else:
                    self._head_bytes = size
                self._tail = data[-3:] if size >= 3 else (self._tail + data)[-3:]
            elif not self._ended:
                self._head_bytes += size  # blank lines

    def _recount(self, data: bytes, heads: int) -> None:
        """Count the head left incomplete by a chunk fed whole, behind a request that ended in
        it: it begins after the chunk's last CRLF CRLF, and after that request's body, which
        began where its head ended: if in this chunk (the last of ``heads`` to end in it), at
        the chunk's CRLF CRLF of that rank or later."""
        size = len(data)
        start = 0
        for _ in range(heads):
            start = data.find(END_OF_HEAD, start) + 4
        self._head_bytes = size - max(_end_of_last(data, 0), start + self._before())

    def _pieces(self, data: bytes, room: int) -> list[tuple[int, bool]]:
        """Where to cut ``data``, and whether each piece's head is measured (see
        data_received). ``room``: how long the stretch at its start may be."""
        cuts: list[tuple[int, bool]] = []
        begin = 0
        if self._in_head and self._head_begun and self._tail:
            straddle = (self._tail + data[:3]).find(END_OF_HEAD)
            if straddle >= 0:  # the head ends there: a piece of its own
                begin = straddle + 4 - len(self._tail)
                cuts.append((begin, True))
                room = self.max_head_bytes
        last = _end_of_last(data, begin)
        at = begin
        while at < last:
            found = data.rfind(END_OF_HEAD, at, min(at + room, last))
            if found >= 0:  # the stretches up to it are short
                at = found + 4
            else:  # the next is long: a piece of its own
                end = data.find(END_OF_HEAD, at) + 4
                if end < 4:  # none: ``last`` ends one begun before ``at`` (CR LF CR LF CR LF)
                    break
                if at > begin:
                    cuts.append((at, False))
                cuts.append((end, True))
                begin = at = end
            room = self.max_head_bytes
        if last > begin:
            cuts.append((last, False))
        if len(data) > last:
            cuts.append((len(data), True))
        return cuts

    def _parse(self, data: bytes, cuts: Sequence[tuple[int, bool]]) -> None:
        """Feed ``data`` to the parser in the pieces that end at ``cuts`` (as uvicorn's
        data_received feeds it whole), counting the head that each leaves incomplete."""
        self._unset_keepalive_if_required()
        parser = self.parser
        whole = len(cuts) == 1
        view = data if whole else memoryview(data)
        begin = 0
        try:
            for end, measured in cuts:
                self._piece = end - begin if measured else 0
                self._body_at, self._ended = self._body_length(), False
                parser.feed_data(data if whole else view[begin:end])
                if self._in_head and (self._head_begun or not self._ended):
                    if self._head_bytes < 0:
                        self._head_bytes = -self._before()
                    self._head_bytes += end - begin
                    if self._head_begun and self._head_bytes > self.max_head_bytes:
                        self._too_large()
                        return
                begin = end
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._unparsed(error)
            return
        finally:
            self._piece = 0  # chunks fed whole measure nothing
        if self._in_head and self._head_begun:
            self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]

    def _unparsed(self, error: Exception) -> None:
        """As uvicorn's data_received, where the parser stopped; but a malformed request is
        said once a minute at most (MALFORMED), and counted."""
        if isinstance(error, httptools.HttpParserUpgrade):
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        msg = "Invalid HTTP request received."
        if not self._head_too_large:  # (a 431: counted, not said, as in _too_large)
            MALFORMED.note(self.loop, _reason(error))
        self.send_400_response(msg)

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn says one warning per request (two without a WebSocket library) that asks
        to upgrade (``Upgrade: h2c``, which curl --http2 sends): said once a minute at most.
        The request is answered as HTTP/1.1, and counted in the HTTP metrics as any."""
        detail = "a WebSocket" if self._get_upgrade() == b"websocket" else "not a WebSocket"
        UPGRADE.note(self.loop, detail)

    def _too_large(self) -> None:
        self._head_too_large = True
        self.send_400_response("head too large")

    def _ends_within_limit(self, data: bytes) -> bool:
        """Whether the head that this chunk continues (or begins) ends within the limit in it.
        Before a head begins, the parser skips blank lines: they do not end it."""
        if self._head_begun:
            probe, before = self._tail + data, self._head_bytes - len(self._tail)
        else:
            probe = data.lstrip(b"\r\n")
            before = self._head_bytes + len(data) - len(probe)
        end = probe.find(END_OF_HEAD)
        return end >= 0 and before + end + 4 <= self.max_head_bytes

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._head_bytes = -1  # counted where needed: see _before
        self._deadline_at = self.loop.time() + self.head_timeout  # _arm, inlined: per request
        self._deadline_part = "head"

    def on_headers_complete(self) -> None:
        if self._piece:  # a piece whose head is measured: see data_received
            counted = self._head_bytes if self._head_bytes >= 0 else -self._before()
            if counted + self._piece > self.max_head_bytes:
                self._head_too_large = True
                raise HeadTooLarge  # the parser stops; data_received answers 431
        self._body_at = 0
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
            if not served:  # uvicorn says a warning per refusal: BUSY says it instead
                self.logger = _UNSAID
                detail = f"{len(admitted)} connections admitted, {limit} at most"
                cast(dict[str, Any], self.scope)[BUSY_DETAIL] = detail
        try:
            super().on_headers_complete()
        finally:
            self.logger = _LOG
        cycle = self.cycle
        if cycle is not answering and cycle is not None:
            # (uvicorn gives the cycle the protocol's logger, _UNSAID for a refusal: it says
            # an error there, as a write cancelled, with a method _UNSAID lacked)
            cycle.logger = _LOG
        if cycle is not answering and cycle is not None and cycle.scope["method"] != "HEAD":
            # (An answer to HEAD has no body to wait for: uvicorn writes none, and a held
            # head went out only as the connection closed, 5 s later on a kept-alive one.)
            cycle.transport = cast(asyncio.Transport, _HeadWithBody(self.transport))
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

    def _body_length(self) -> int:
        cycle = self.cycle
        return len(cycle.body) if cycle is not None else 0

    def _before(self) -> int:
        """The previous request's body bytes in the piece being parsed: uvicorn keeps them in
        its cycle until the app reads them, which it cannot while a chunk is parsed (it drops
        those of a request answered already: fewer, so more is counted as head)."""
        return self._body_length() - self._body_at

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
        REFUSED["head_too_large" if self._head_too_large else "malformed"].inc()
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

    def overdue(self, now: float, stalled: bool = False) -> None:
        """The sweeper's check: act on a deadline passed. Where the loop itself was stalled
        (``stalled``: the sweep ran late), a deadline passed is re-armed to fire on the next
        sweep instead: what the client sent meanwhile may be waiting in the socket, unread,
        and is read first (a 408 would blame the client for the server's pause). Once per
        deadline: the next sweep refuses it however late it runs too, or a loop steadily
        behind (overload) would re-arm every deadline on every sweep and refuse no one (an
        idle connection was open 8 s past a 0.6 s deadline: the merge review of 549855f)."""
        if self._deadline_at and now >= self._deadline_at:
            if stalled and self._deadline_at != self._graced_at:
                self._deadline_at = self._graced_at = now
                return
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
        REFUSED["timeout"].inc()
        if cycle is not None and part == "body":
            # The app has the request (its head came), and ends on the hang-up: what it
            # then answers the client never sees, so its metrics leave it out (it was
            # counted there too, as the status the app chose: a 400 for a 408 sent).
            cast(dict[str, Any], cycle.scope)[REFUSED_BY_PROTOCOL] = 408
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


class _HeadWithBody:
    """The transport a request's cycle writes to: a response head that states its length
    is held, and goes out with the body's first bytes in one write. uvicorn writes the two
    with a send() each: two system calls and two packets per answer, each waking the client.
    A head without a length (an event stream, chunked) goes at once, as does ``100
    Continue``; an answer to HEAD is not held at all (no body follows it)."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif b"\r\ncontent-length: " in data and data.startswith(b"HTTP/1.1 "):
            self._held = data  # (uvicorn writes header names in lower case)
        else:
            self._transport.write(data)

    def close(self) -> None:
        """(uvicorn closes after an app that failed past its head: the head goes first.)"""
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _too_many_connections(scope: Any, receive: Any, send: Any) -> None:
    """uvicorn's answer past LIMIT_CONCURRENCY, as a problem document with Retry-After
    (uvicorn's own is plain text, with no advice). Counted, and said by BUSY, here, as it
    is written: requests pipelined behind it are never answered (the connection closes),
    and were counted too."""
    REFUSED["busy"].inc()
    BUSY.note(asyncio.get_running_loop(), scope.get(BUSY_DETAIL, "past the limit"))
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
    and keeps the server's admitted connections (at most ``limit_concurrency``).

    A sweep that runs more than an interval after it was due finds the loop was stalled
    (the process paused: SIGSTOP, a VM frozen, a blocking call): the requests that arrived
    meanwhile wait unread in their sockets, and a loop may run its timers before it reads
    them (libuv, after a pause, does). Such a sweep refuses no one: it re-arms the deadlines
    passed to fire on the next sweep, so what waits is read first, and a client really too
    slow is refused on the next sweep, whether it runs late too or not: the grace is granted
    once per deadline, so a loop steadily late (overload) still refuses idle and slow
    clients, a sweep or two later than an idle loop would. (Paused 10 s, a process answered
    19 requests sent on time with 408, the HA review; granted on every late sweep, a loop
    blocked in chunks of 0.05-0.2 s refused no one, the merge review of 549855f.)"""

    def __init__(self, protocol: GuardedHttpToolsProtocol) -> None:
        self.loop = protocol.loop
        self.connections = protocol.connections
        self.admitted: set[GuardedHttpToolsProtocol] = set()
        self.interval = min(protocol.head_timeout, protocol.body_timeout) / 8
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def watch(self) -> None:
        if self._timer is None:
            self._due = self.loop.time() + self.interval
            self._timer = self.loop.call_at(self._due, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        stalled = now - self._due > self.interval
        for connection in list(self.connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                connection.overdue(now, stalled)
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
        "timeout_graceful_shutdown": GRACE,
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
