"""Server-Sent Events: one hub per API process, fed by the log's notifications.

The hub wakes when the tally projection's NOTIFY moves its position (the same
``PositionWatcher`` that wakes ``min_position`` waiters), at most ``COALESCE`` times a second.
It then builds each watched view once, an election's results as a reader with or without
exact rights sees them, or the overview, and hands the new document to every subscriber
of that view. A subscriber holds only the latest document (a slot, not a queue): memory
per connection is bounded whatever the client's speed, and a reader who falls behind
skips straight to the newest results. No connection reads the database on its own after
its first snapshot.

A stream ends when the client leaves, when a send does not complete within
``SEND_TIMEOUT`` (the connection is aborted), or when the server shuts down: uvicorn waits
for open responses before it stops, so the HTTP protocol (``api.protocol``) sets the
scope's ``cardinal.closing`` event on shutdown.

Streams last, and each holds a connection: ``StreamSlots`` caps them, per process. A client
address (as the rate limits resolve it: through the trusted proxies, an IPv6 address as its
/64) may hold ``STREAMS_PER_CLIENT`` of them (429 past it), and the process's streams
together at most ``STREAM_SHARE`` of its connection limit (503 for a new stream past it):
the rest stay for health checks, ballots and reads, whatever the streams do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from api import tokens
from api.again import once_more
from api.problems import QUOTA_EXCEEDED
from api.responses import ProblemResponse, problem
from infra.runtime.loop import cancel_within

log = logging.getLogger(__name__)

HEARTBEAT = 15.0
SEND_TIMEOUT = 10.0
COALESCE = 4.0  # hub publications per second at most
IDLE_REFRESH = 2.0  # views are rebuilt at least this often (status changes, closes)
CLOSING = "cardinal.closing"
HANGUP = "cardinal.hangup"
# Where the HTTP protocol puts, in a request's scope, the connections its server may hold.
CONNECTIONS = "cardinal.connections"
STREAM_SHARE = 0.8  # of those connections, the most that streams may hold together
REFUSED_RETRY = 10  # Retry-After of a stream refused: one ends when a reader leaves
# The hub's task ends within this at shutdown: cancelled again every CANCEL_AGAIN_AFTER (a
# cancel that comes as the reads pool lends a connection can be lost), then left (logged).
HUB_STOP = 0.5

Build = Callable[[], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(eq=False)
class Subscriber:
    """One stream's slot: the latest (position, document) not yet sent."""

    pending: tuple[int, bytes] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, position: int, data: bytes) -> None:
        self.pending = (position, data)
        self.ready.set()

    def take(self) -> tuple[int, bytes] | None:
        item, self.pending = self.pending, None
        self.ready.clear()
        return item


@dataclass(eq=False)
class View:
    build: Build
    subscribers: set[Subscriber] = field(default_factory=set)
    last: tuple[int, bytes] | None = None
    first: asyncio.Future[tuple[int, bytes]] | None = None  # its first build, under way
    waiting: int = 0  # subscribers waiting for it
    document: object = None  # the document ``last`` renders (a cached one comes back as is)


class StreamSlots:
    """The process's open streams, counted per client address and in all.

    A slot is taken before anything is awaited and given back when its stream ends, however
    it ends (the client gone, a failed first build, the server stopping): a count is never
    left behind, so the addresses' table holds only clients with a stream open."""

    def __init__(self, per_client: int | None, address: Callable[[Scope], str]) -> None:
        self.per_client = per_client
        self.address = address
        self.open: dict[str, int] = {}
        self.total = 0

    def take(self, scope: Scope) -> str | ProblemResponse:
        """A slot for this request's stream (the key to give it back with), or the refusal."""
        key = self.address(scope)
        held = self.open.get(key, 0)
        if self.per_client is not None and held >= self.per_client:
            policy: dict[str, Any] = {"violated-policies": ["streams-per-client"]}
            return problem(
                429,
                "Too many streams",
                f"this client address already holds {held} results streams open on this "
                f"server process, as many as it may (STREAMS_PER_CLIENT={self.per_client}): "
                "close one (each open results page holds one), or read the results with "
                "GET instead",
                headers={"Retry-After": str(REFUSED_RETRY)},
                type=QUOTA_EXCEEDED,
                **policy,
            )
        limit = scope.get(CONNECTIONS)
        if isinstance(limit, int) and self.total >= int(limit * STREAM_SHARE):
            return problem(
                503,
                "Busy",
                f"this server process's streams hold {self.total} connections, as many as "
                "streams may (the rest stay for other requests); retry in a while, or read "
                "the results with GET instead",
                headers={"Retry-After": str(REFUSED_RETRY)},
            )
        self.open[key] = held + 1
        self.total += 1
        return key

    def give_back(self, key: str) -> None:
        held = self.open.pop(key, 0) - 1
        if held > 0:
            self.open[key] = held
        self.total -= 1


class StreamHub:
    """The process's streams, grouped by view; one task rebuilds the watched views."""

    def __init__(
        self,
        wait_for_change: Callable[[int, float], Awaitable[int]],
        slots: StreamSlots | None = None,
        store_up: Callable[[], bool] = lambda: True,
    ) -> None:
        """``wait_for_change(seen, patience)``: the tally's position once past ``seen`` (at
        once if it is already), or after ``patience`` seconds. ``slots``: the caps on open
        streams (by default, none per client, and the share of the server's connections).
        ``store_up``: whether the store is not marked down (a stream's first read is read
        again, ``api.again.once_more``, only while it is not)."""
        self._wait = wait_for_change
        self.slots = slots or StreamSlots(None, lambda scope: "")
        self.store_up = store_up
        self.views: dict[Hashable, View] = {}
        self.sent = 0  # events handed to subscribers (for the viewers benchmark and tests)
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribers(self) -> int:
        return sum(len(view.subscribers) for view in self.views.values())

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-hub")

    async def stop(self) -> None:
        """Stop rebuilding views, within HUB_STOP: a build that lost its cancel (on Python
        3.11 one that comes as ``asyncio.wait_for`` completes is, and psycopg_pool lends a
        connection with it) carried on, and the process's shutdown waited for it for ever."""
        if self._task is not None:
            await cancel_within("the stream hub", [self._task], HUB_STOP)

    async def subscribe(self, key: Hashable, build: Build) -> tuple[Subscriber, tuple[int, bytes]]:
        """A new subscriber to view ``key`` and the view's current document.

        A watched view is kept current by the hub, and a view's first build is shared by
        everyone who asks while it runs: a reconnection storm (every dashboard, after a
        restart) costs one read per view, not one per connection."""
        view = self.views.setdefault(key, View(build))
        current = view.last
        if current is None:
            if view.first is None:
                view.first = asyncio.ensure_future(self._build(view))
            first = view.first
            view.waiting += 1
            try:
                current = await asyncio.shield(first)
            except BaseException:  # the build failed, or this request was cancelled
                if first.done() and view.first is first and view.last is None:
                    view.first = None  # the next subscriber tries again
                if not view.subscribers and view.waiting == 1 and self.views.get(key) is view:
                    del self.views[key]  # nobody watches it: the hub need not keep it
                raise
            finally:
                view.waiting -= 1
        subscriber = Subscriber()  # (no await since ``current``: no change can slip between)
        view.subscribers.add(subscriber)
        if self._task is None or self._task.done():
            self.start()
        return subscriber, current

    def unsubscribe(self, key: Hashable, subscriber: Subscriber) -> None:
        view = self.views.get(key)
        if view is not None:
            view.subscribers.discard(subscriber)
            if not view.subscribers:
                del self.views[key]

    async def _build(self, view: View) -> tuple[int, bytes]:
        position, document = await view.build()
        if view.last is not None and document is view.document and position == view.last[0]:
            return view.last  # the same cached document: rendered already
        view.last = (position, orjson.dumps(document))
        view.document = document
        return view.last

    async def _run(self) -> None:
        seen = 0
        while self.views:
            # Read before building: whatever the tally reaches meanwhile wakes the next round.
            seen = await self._wait(seen, IDLE_REFRESH)
            for view in list(self.views.values()):
                before = view.last
                try:
                    current = await self._build(view)
                except Exception as error:  # an election gone or the store away: next time
                    log.warning("stream hub: cannot build a view: %s", error)
                    continue
                if before is not None and current[1] == before[1]:
                    continue
                for subscriber in view.subscribers:
                    subscriber.offer(*current)
                    self.sent += 1
            await asyncio.sleep(1 / COALESCE)


def frame(position: int, data: bytes) -> bytes:
    return b"id: %d\nevent: results\ndata: " % position + data + b"\n\n"


class EventStream:
    """The ASGI response of one stream: the current document at once (a Last-Event-ID
    resumes with it too: there is no history to replay, only the present), then each new
    one, with a comment line as heartbeat."""

    def __init__(
        self, hub: StreamHub, key: Hashable, build: Build, until: float | None = None
    ) -> None:
        self.hub = hub
        self.key = key
        self.build = build
        self.until = until  # epoch seconds: the caller's access token expires then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no"),
            ],
        }
        if scope["method"] == "HEAD":  # the head alone: a stream with no body never ends
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        slot = self.hub.slots.take(scope)
        if not isinstance(slot, str):
            await slot(scope, receive, send)
            return
        try:
            await self._stream(scope, receive, send, start)
        finally:
            self.hub.slots.give_back(slot)

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, start: dict[str, Any]
    ) -> None:
        closing = scope.setdefault(CLOSING, asyncio.Event())
        # The stream's first read is here, in the response, after its endpoint returned: read
        # again as an endpoint's is (its connection's backend terminated as it was lent).
        subscriber, current = await once_more(
            lambda: self.hub.subscribe(self.key, self.build), self.hub.store_up
        )
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await send(start)
            sent = current[0]
            if not await _send(scope, send, b"retry: 2000\n" + frame(*current)):
                return
            while not (closing.is_set() or gone.done()):
                # An access token's stream ends when the token does (it was checked once,
                # at the start): the client reconnects with a fresh one. The token does
                # at the end of its clock grace, as verify has it, not at its exp.
                left = (
                    HEARTBEAT
                    if self.until is None
                    else tokens.accepted_until(self.until) - time.time()
                )
                if left <= 0:
                    break
                woken = asyncio.ensure_future(subscriber.ready.wait())
                ended = asyncio.ensure_future(closing.wait())
                await asyncio.wait(
                    (woken, ended, gone),
                    timeout=min(HEARTBEAT, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                woken.cancel()
                ended.cancel()
                if closing.is_set() or gone.done():
                    break
                item = subscriber.take()
                if item is None:
                    chunk = b": heartbeat\n\n"
                elif item[0] < sent:
                    continue  # never move a reader backwards
                else:
                    sent = item[0]
                    chunk = frame(*item)
                if not await _send(scope, send, chunk):
                    return
            with contextlib.suppress(OSError, RuntimeError):  # the client gone meanwhile
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            self.hub.unsubscribe(self.key, subscriber)


async def _send(scope: Scope, send: Send, chunk: bytes) -> bool:
    """Send a chunk; False (and the connection aborted) if the client does not take it in
    time: a reader who stops reading must not hold the server's buffers. False too if the
    connection is gone (a write to a closed transport): the end of a stream, not an error."""
    try:
        await asyncio.wait_for(
            send({"type": "http.response.body", "body": chunk, "more_body": True}),
            SEND_TIMEOUT,
        )
    except TimeoutError:
        hangup = scope.get(HANGUP)
        if hangup is not None:
            hangup()
        return False
    except (OSError, RuntimeError):
        return False
    return True


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
