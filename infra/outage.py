"""A dependency's outage, said once per task and retried with a capped backoff.

A leaf (it imports nothing of ours), shared by the broker's (``infra/broker/outage.py``:
RabbitMQ, AMQP_URL) and the store's (``infra/store/outage.py``: PostgreSQL, DATABASE_URL):
each says where the dependency is and why an attempt failed, without the URL's password.
A task that keeps failing to reach one used to log every attempt (a line a second per
task); it now says so once, at WARNING, and once, at INFO, that it is back, and waits
``first`` seconds doubling up to ``cap`` between attempts meanwhile.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    """One task's view of one dependency: ``failed`` says the outage once and returns how
    long to wait before the next attempt; ``connected`` says the return once and resets
    the wait.

    ``once``: one WARNING per outage whatever its reasons (a server going down closes the
    connection, then refuses it); otherwise again when the reason changes. Either way
    ``failed(..., anew=True)`` says a reason that is news to the operator even mid-outage
    (a broker that was away, then refuses AMQP_URL's password). ``timed``: the return says
    how long the outage lasted."""

    def __init__(
        self,
        where: str,
        who: str,
        logger: logging.Logger,
        *,
        reason: Callable[[BaseException], str],
        first: float,
        cap: float,
        once: bool = False,
        timed: bool = False,
    ) -> None:
        self.where = where
        self.who = who
        self.log = logger
        self.reason = reason
        self.first = first
        self.cap = cap
        self.once = once
        self.timed = timed
        self.delay = first
        self.down: str | None = None
        self.since = 0.0  # (monotonic) when this outage was first met

    def failed(self, error: BaseException, why: str | None = None, *, anew: bool = False) -> float:
        """Say the outage if it is new (or, unless ``once`` or with ``anew``, its reason
        is: ``why``, else the error's), and return the seconds to wait before the next
        attempt."""
        why = why or self.reason(error)
        if self.down is None:
            self.since = time.monotonic()
        if self.down is None or (why != self.down and (anew or not self.once)):
            self.log.warning(
                "%s: cannot reach %s: %s; retrying every %.0f-%.0fs until it answers",
                self.who,
                self.where,
                why,
                self.first,
                self.cap,
            )
        self.down = why
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def pause(self) -> float:
        """The wait before the next attempt, for a client that retries by itself and asks
        (asking twice changes nothing): as long as the outage has lasted, at least
        ``first``, at most ``cap``. Attempts at once, then after 1, 1, 2, 4, 8, 10, 10 s
        (``first`` 1, ``cap`` 10): the backoff of ``failed``, near enough."""
        if self.down is None:
            return self.first
        return min(self.cap, max(self.first, time.monotonic() - self.since))

    def connected(self) -> None:
        if self.down is not None:
            if self.timed:
                lasted = time.monotonic() - self.since
                self.log.info("%s: %s reachable again (away %.1fs)", self.who, self.where, lasted)
            else:
                self.log.info("%s: %s reachable again", self.who, self.where)
        self.down = None
        self.delay = self.first
