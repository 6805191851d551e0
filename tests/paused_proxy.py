"""A TCP proxy in front of PostgreSQL that can be paused: a store that hangs.

While paused, nothing it holds is passed on, either way (the bytes wait in it), and the
connections made to it meanwhile are accepted and held the same way: what a client sees
of a server that stopped answering without hanging up. ``held`` is set once something
waited in it (a statement sent meanwhile), ``connected`` once a connection was made to it
while paused (psycopg's cancel request, after a statement was interrupted)."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

import psycopg


class PausedProxy:
    def __init__(self, url: str) -> None:
        info = psycopg.conninfo.conninfo_to_dict(url)
        self.url = url
        self.upstream = (str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.held = asyncio.Event()
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    @property
    def proxied_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return psycopg.conninfo.make_conninfo(self.url, host="127.0.0.1", port=port)

    def pause(self) -> None:
        self.held.clear()
        self.connected.clear()
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.flowing.is_set():
            self.connected.set()
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._pumps.discard(pump)
            for each in (writer, up_writer):
                each.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not self.flowing.is_set():
                    self.held.set()
                    await self.flowing.wait()
                writer.write(data)
                await writer.drain()
