"""Per-client-address ballot limit (MAX_VOTES_PER_IP_PER_HOUR), kept in process memory."""

from __future__ import annotations

import time

from api.problems import TooManyRequests

WINDOW = 3600.0


class BallotRateLimit:
    """A fixed one-hour window per address: simple, and it bounds memory to active addresses."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._windows: dict[str, tuple[float, int]] = {}

    def check(self, address: str, ballots: int = 1, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        started, count = self._windows.get(address, (now, 0))
        if now - started >= WINDOW:
            started, count = now, 0
        if count + ballots > self.per_hour:
            retry_after = max(1, int(WINDOW - (now - started)))
            raise TooManyRequests(
                f"this address has sent {self.per_hour} ballots in the last hour, the most "
                f"allowed; try again in {retry_after} seconds",
                retry_after,
            )
        self._windows[address] = (started, count + ballots)
        if len(self._windows) > 100_000:
            self._forget_expired(now)

    def _forget_expired(self, now: float) -> None:
        for address, (started, _) in list(self._windows.items()):
            if now - started >= WINDOW:
                del self._windows[address]
