"""Whether the event store can be reached, as the writer last found it.

The writer is the one component that talks to the store on every ballot, so it is the one
that knows first when the store goes away, and it keeps knowing: while the store is down
its thread probes it twice a second, and marks it up again on the first answer. Every
other part of the process reads this instead of finding out the slow way (a connect that
times out, a pool that waits): a ballot or a read that arrives while the store is down is
refused at once with 503 and Retry-After.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from infra import metrics

log = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5  # seconds between probes while the store is down


@dataclass(frozen=True)
class StoreState:
    up: bool
    since: float  # time.monotonic() of the last change
    reason: str = ""


class StoreHealth:
    """Up or down, with why and since when; thread-safe (the writer thread sets it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = StoreState(True, time.monotonic())
        metrics.STORE_UP.labels("writer").set(1)

    @property
    def state(self) -> StoreState:
        return self._state

    @property
    def up(self) -> bool:
        return self._state.up

    def down(self, reason: str) -> bool:
        """Mark the store unreachable; True if this is news."""
        with self._lock:
            if not self._state.up:
                return False
            self._state = StoreState(False, time.monotonic(), reason)
        metrics.STORE_UP.labels("writer").set(0)
        log.error("event store unreachable (%s): refusing ballots until it answers", reason)
        return True

    def back(self) -> bool:
        """Mark the store reachable again; True if this is news."""
        with self._lock:
            if self._state.up:
                return False
            was = self._state
            self._state = StoreState(True, time.monotonic())
        metrics.STORE_UP.labels("writer").set(1)
        log.warning("event store reachable again after %.1fs", self._state.since - was.since)
        return True

    def describe(self) -> str:
        state = self._state
        if state.up:
            return "ok"
        # Anyone may read this (/api/health): the reason, which may name the database, its
        # host and user, goes to the log only (down() logs it).
        return f"unreachable for {time.monotonic() - state.since:.1f}s (see the log)"
