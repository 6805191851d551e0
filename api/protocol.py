"""The HTTP/1.1 protocol the API's uvicorn runs: httptools, with the deadlines it lacks.

uvicorn arms its keep-alive timer only after a response, and any byte disarms it; it has no
deadline for reading a request's head or body, and no limit on the head's size under
httptools. So an idle connection, headers trickled a line a second, or a body trickled a
byte a second would each hold a connection (and, counted by ``limit_concurrency``, crowd
out real clients). Here:

- the head (request line and headers) must arrive within ``head_timeout`` of the
  connection opening or of the request's first byte, else 408 and the connection closes;
- the body must arrive within ``body_timeout`` of the head, else 408;
- a head over ``max_head_bytes`` is refused with 431.

This subclasses uvicorn's HttpToolsProtocol, which is not public API: uvicorn is pinned to
a minor release, and tests/integration/test_slow_clients.py exercises every deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, cast

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.app import create_app
from api.streams import CLOSING, HANGUP
from infra.runtime.settings import Settings

HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 15.0
MAX_HEAD_BYTES = 32 * 1024
# Connections (idle ones included) and requests in flight per process before uvicorn
# answers 503: well above what a process serves at full speed, far below what exhausts it.
LIMIT_CONCURRENCY = 2000
KEEP_ALIVE = 5


def _refusal(status: bytes, title: str, detail: str) -> bytes:
    body = orjson.dumps(
        {"type": "about:blank", "title": title, "status": int(status[:3]), "detail": detail}
    )
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/problem+json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body deadlines and a head size limit."""

    head_timeout = HEAD_TIMEOUT
    body_timeout = BODY_TIMEOUT
    max_head_bytes = MAX_HEAD_BYTES

    _deadline: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.head_timeout, "head")  # a connection that never sends a byte
        # uvicorn writes a response's head and body with a send() each. Under Nagle the body
        # waits for the client's delayed ACK of the head: 40 ms per answer. uvloop disables
        # Nagle itself; asyncio's loop only for sockets whose proto says TCP, which a socket
        # made by socket.socket() (or handed over by a supervisor) does not.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # a peer gone already (BSDs say EINVAL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._arm(self.head_timeout, "head")

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._arm(self.body_timeout, "body")
        super().on_headers_complete()
        # An event stream that a client stops reading is aborted (api/streams.py).
        cast(dict[str, Any], self.scope)[HANGUP] = self.transport.abort

    def shutdown(self) -> None:
        # uvicorn waits for open responses before it stops: tell event streams to end.
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            closing = cast(dict[str, Any], cycle.scope).get(CLOSING)
            if isinstance(closing, asyncio.Event):
                closing.set()
        super().shutdown()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        self.transport.write(
            _refusal(
                b"431 Request Header Fields Too Large",
                "Request header fields too large",
                f"the request line and headers may take at most {self.max_head_bytes} bytes",
            )
        )
        self.transport.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.max_head_bytes:
            self._head_too_large = True
            raise ValueError("head too large")  # httptools turns it into a parser error

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, part)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, part: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and part == "body" and cycle.response_started:
            if cycle.response_complete:  # answered without the body: just hang up
                self.transport.close()
            else:  # the app is answering: let it finish, then close
                cycle.keep_alive = False
            return
        seconds = self.head_timeout if part == "head" else self.body_timeout
        self.transport.write(
            _refusal(
                b"408 Request Timeout",
                "Request timeout",
                f"the request {part} did not arrive within {seconds:g} seconds",
            )
        )
        self.transport.close()


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
    return uvicorn.Config(app if app is not None else create_app(settings), **options)
