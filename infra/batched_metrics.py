"""Series updated on the ballot hot path, counted in plain numbers and added to Prometheus
once a second (and before this process renders /metrics).

prometheus-client takes a lock for every increment and, in multiprocess mode (the API's,
under `cardinal serve`), a getpid() and an mmap write too: a request's duration histogram
and its ballot counter cost about 3 µs of every ballot that way. Kept here, an observation
is an addition; the series lag by at most a second, far under any scrape interval.

Only the event loop's thread observes and flushes (no lock): the API's middleware and
routes observe, and ``flushing`` runs in its lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from bisect import bisect_left
from typing import Protocol

from prometheus_client import Counter, Histogram

FLUSH_INTERVAL = 1.0
log = logging.getLogger(__name__)


class _Pending(Protocol):
    def flush(self) -> None: ...


_PENDING: weakref.WeakSet[_Pending] = weakref.WeakSet()  # an app's series go with it


class BatchedCounter:
    """One labelled counter's increments, added to it at each flush."""

    def __init__(self, series: Counter) -> None:
        self.series = series
        self._pending = 0.0
        _PENDING.add(self)

    def inc(self, amount: float = 1) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            amount, self._pending = self._pending, 0.0
            self.series.inc(amount)


class BatchedHistogram:
    """One labelled histogram's observations, added to its buckets and sum at each flush
    (a value goes to the first bucket whose upper bound it does not exceed, as there)."""

    def __init__(self, series: Histogram) -> None:
        self.series = series
        self._bounds: list[float] = list(series._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _PENDING.add(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts, total = self._counts, self._sum
        if not any(counts):
            return
        self._counts, self._sum = [0] * len(self._bounds), 0.0
        for bucket, count in zip(self.series._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
        self.series._sum.inc(total)


def flush() -> None:
    """Add every pending observation to its series."""
    for pending in list(_PENDING):
        try:
            pending.flush()
        except Exception:  # a metric is never worth a request or the flushing
            log.exception("a batched metric could not be flushed")


async def flushing(interval: float = FLUSH_INTERVAL) -> None:
    """Flush every ``interval`` seconds until cancelled (the caller flushes once more)."""
    while True:
        await asyncio.sleep(interval)
        flush()
