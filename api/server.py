"""uvicorn's server, with a shutdown that answers every ballot: never a 500, never a cut.

On SIGTERM uvicorn stops accepting, lets requests in progress finish for
``timeout_graceful_shutdown`` seconds, then cancels what is left, and a cancelled request
is answered 500. A ballot waiting on the writer is one such request. So, a moment before
that deadline, the writer is drained: an append still queued is withdrawn and answered
503 (not recorded); one whose batch is committing is answered by its commit. What could
commit within the grace period has; the rest gets 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn

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

    def _drain(self) -> None:
        state = getattr(self.config.app, "state", None)
        services = getattr(state, "services", None)
        if services is not None:
            services.writer.drain()
