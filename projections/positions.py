"""Knowing how far each projection has got, and waiting for it (read-your-writes)."""

from __future__ import annotations

import asyncio
import contextlib
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
    """Follows the projections' NOTIFY messages; re-reads the table as a fallback."""

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

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="position-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, name: str, position: int, patience: float) -> bool:
        """True once projection ``name`` has applied ``position``; False after ``patience`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        while self.positions.get(name, 0) < position:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait(), min(remaining, self.fallback_interval)
                    )
            if not self.listening and self.positions.get(name, 0) < position:
                await self._reread()
        return True

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
            self._changed.notify_all()
