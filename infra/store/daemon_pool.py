"""Blocking reads for the event loop, on daemon threads that are kept for the next read.

Not on the loop's executor: a read given up on a store that hangs stays blocked as long as
it hangs, and the process waits for its executor's threads at exit (a SIGTERM then waited
for the store to thaw). Not a thread per read either: starting one cost about as much as
a short read, on every revision, withdrawal and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")
_Work = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


class DaemonPool:
    """Up to ``size`` daemon threads; a read waits in line only when all are busy."""

    def __init__(self, name: str, size: int = 8) -> None:
        self.name = name
        self.size = size
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._queued = 0

    def run(
        self, loop: asyncio.AbstractEventLoop, call: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """``call(*args)`` on one of the pool's threads; its outcome settles the future on
        ``loop`` (unless the future was settled or the loop closed meanwhile)."""
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            # A thread counted idle may not have taken earlier work yet: a read starts a
            # thread while more wait than are idle (two sent at once both went to one, the
            # second waiting out the first, a slow one, past LOOKUP_WAIT).
            self._queued += 1
            start = self._queued > self._idle and self._threads < self.size
            if start:
                self._threads += 1
        self._work.put((loop, future, call, args))
        if start:
            threading.Thread(target=self._serve, name=self.name, daemon=True).start()
        return future

    def _serve(self) -> None:
        with self._lock:
            self._idle += 1
        while True:
            loop, future, call, args = self._work.get()
            with self._lock:
                self._queued -= 1
                self._idle -= 1
            try:
                result, error = call(*args), None
            except BaseException as raised:  # (the caller's to see, on the loop)
                result, error = None, raised
            # Idle again before the caller hears back: its next read finds this thread
            # free rather than starting another.
            with self._lock:
                self._idle += 1
            with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(cast(T, result))
