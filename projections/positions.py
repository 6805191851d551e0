"""Knowing how far each projection has got, and waiting for it (read-your-writes)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from projections.runtime import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

POSITIONS = (
    "SELECT r.name, p.position FROM projections r JOIN projection_positions p "
    "ON p.name = r.name AND p.version = r.active_version"
)


class PositionWatcher:
    """Follows the projections' NOTIFY messages; re-reads the table as a fallback.

    Waiters park on futures, one per (projection, position), and the notification that
    moves a projection past their position wakes them all at once: a thousand waiters cost
    one notification, not a thousand timers. While the LISTEN connection is down, one
    fallback task re-reads the table every ``fallback_interval`` for all of them.
    """

    def __init__(
        self, database_url: str, pool: AsyncConnectionPool, fallback_interval: float = 0.1
    ) -> None:
        self.database_url = database_url
        self.pool = pool
        self.fallback_interval = fallback_interval
        self.listening = False
        self.positions: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        # projection -> [(position, future)], a heap: the lowest position first.
        self._waiters: dict[str, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._order = 0
        self._fallback: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="position-watcher")

    async def stop(self) -> None:
        for task in (self._task, self._fallback):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    @property
    def waiting(self) -> int:
        """Waiters parked now (for tests and metrics)."""
        return sum(len(heap) for heap in self._waiters.values())

    async def wait_for(self, name: str, position: int, patience: float) -> bool:
        """True once projection ``name`` has applied ``position``; False after ``patience`` s."""
        if self.positions.get(name, 0) >= position:
            return True
        loop = asyncio.get_running_loop()
        reached: asyncio.Future[None] = loop.create_future()
        self._order += 1
        heapq.heappush(self._waiters.setdefault(name, []), (position, self._order, reached))
        if not self.listening:
            self._poll_while_deaf()
        timer = loop.call_later(patience, _expire, reached)
        try:
            await reached
        except TimeoutError:
            return self.positions.get(name, 0) >= position
        finally:
            timer.cancel()
            self._forget(name)
        return True

    def _forget(self, name: str) -> None:
        """Drop the waiters that are done (answered or given up) from the top of the heap."""
        heap = self._waiters.get(name)
        while heap and heap[0][2].done():
            heapq.heappop(heap)
        if heap is not None and not heap:
            del self._waiters[name]
        elif heap and len(heap) > 64 and sum(1 for w in heap if w[2].done()) > len(heap) // 2:
            self._waiters[name] = [w for w in heap if not w[2].done()]
            heapq.heapify(self._waiters[name])

    def _wake(self) -> None:
        for name, heap in list(self._waiters.items()):
            reached = self.positions.get(name, 0)
            while heap and heap[0][0] <= reached:
                _, _, future = heapq.heappop(heap)
                if not future.done():
                    future.set_result(None)
            if not heap:
                del self._waiters[name]

    def _poll_while_deaf(self) -> None:
        """One task re-reads the table for every waiter while notifications are not heard."""
        if self._fallback is None or self._fallback.done():
            self._fallback = asyncio.create_task(self._poll(), name="position-fallback")

    async def _poll(self) -> None:
        while self._waiters and not self.listening:
            await self._reread()
            await asyncio.sleep(self.fallback_interval)

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    await self._read(conn)
                    self.listening = True
                    async for notice in conn.notifies():
                        name, _, position = notice.payload.rpartition(":")
                        if position.isdigit():
                            await self._advance({name: int(position)})
            except asyncio.CancelledError:
                raise
            except psycopg.Error as error:
                log.debug("position watcher reconnecting: %s", error)
            finally:
                self.listening = False
                if self._waiters:
                    self._poll_while_deaf()
            await asyncio.sleep(1)

    async def _reread(self) -> None:
        with contextlib.suppress(psycopg.Error, PoolTimeout):
            async with self.pool.connection(timeout=1) as conn:
                await self._read(conn)

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(psycopg.errors.UndefinedTable):
            cursor = await conn.execute(POSITIONS)
            await self._advance({str(name): int(pos) for name, pos in await cursor.fetchall()})

    async def _advance(self, seen: dict[str, int]) -> None:
        async with self._changed:
            for name, position in seen.items():
                if position > self.positions.get(name, 0):
                    self.positions[name] = position
            self._wake()
            self._changed.notify_all()


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
