"""Freshness: how long after a ballot's 2xx the tally projection reaches its position."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time

import psycopg
from psycopg import sql

from projections.runtime import NOTIFY_CHANNEL


class FreshnessWatcher:
    """Times each accepted ballot from its 2xx to the tally projection passing its position."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.pending: list[tuple[int, float]] = []
        self.lags: list[float] = []
        self.position = 0
        self.ready = asyncio.Event()
        self._moved = asyncio.Event()

    def expect(self, position: int, answered: float) -> None:
        if position <= self.position:
            self.lags.append(0.0)  # already visible when the 2xx arrived
        else:
            heapq.heappush(self.pending, (position, answered))

    async def run(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            self.ready.set()
            async for notice in conn.notifies():
                name, _, position = notice.payload.rpartition(":")
                if name != "tally" or not position.isdigit():
                    continue
                now = time.perf_counter()
                self.position = max(self.position, int(position))
                while self.pending and self.pending[0][0] <= self.position:
                    _, answered = heapq.heappop(self.pending)
                    self.lags.append(now - answered)
                self._moved.set()

    async def wait_for(self, position: int, patience: float) -> None:
        deadline = time.perf_counter() + patience
        while self.position < position and time.perf_counter() < deadline:
            self._moved.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), 1)
