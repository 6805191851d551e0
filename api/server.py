"""uvicorn's server, with a shutdown that answers every request: never a 500, never a cut.

On SIGTERM uvicorn stops accepting, lets requests in progress finish for
``timeout_graceful_shutdown`` seconds, then cancels what is left, and a cancelled request
is answered 500. A ballot waiting on the writer is one such request, and so is a read
waiting on a store that hangs. So, a moment before that deadline, the writer is drained:
an append still queued is withdrawn and answered 503 (not recorded); one whose batch is
committing is answered by its commit. What could commit within the grace period has; the
rest gets 503 with Retry-After. Reads that have not begun their answer get 503 too.

Once the server has stopped, tasks still running (a read abandoned on a store that hangs,
whose cancellation psycopg spends up to 10 s asking the server about) are given
EXIT_WAIT seconds (infra/runtime/loop.py), not as long as they like: the process exits
within its supervisor's patience (infra/runtime/supervisor.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from api.protocol import say_pending
from infra.runtime.loop import run_bounded

log = logging.getLogger(__name__)

# Seconds before uvicorn's own deadline: enough for a drained request to be answered.
DRAIN_MARGIN = 1.5


class DrainingServer(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.config.timeout_graceful_shutdown or 0
        drain = asyncio.get_running_loop().call_later(max(0.0, grace - DRAIN_MARGIN), self._drain)
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()
            say_pending()  # the protocol's warnings summed up, pending: said now, or never

    def _drain(self) -> None:
        state = getattr(self.config.app, "state", None)
        services = getattr(state, "services", None)
        if services is not None:
            services.draining.set()
            services.writer.drain()

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's run, with a bounded wait for what is left once the server stopped
        (asyncio.run waits for every task, however long a hung store holds it). uvicorn
        handles the signals itself: ``serve`` returns, and nothing is left to interrupt."""
        run_bounded(
            self.serve(sockets=sockets),
            stop_within=0,
            loop_factory=self.config.get_loop_factory(),
            left="still waiting on the store",
        )
