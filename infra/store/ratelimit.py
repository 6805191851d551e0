"""Rate limits shared by every API process and replica: GCRA counters in PostgreSQL.

One row per key in the UNLOGGED table ``rate_limits`` (migration 0005) holds the GCRA
*theoretical arrival time* (tat): a quota of ``limit`` units per ``period`` lets a unit
through when, after it, ``tat - now <= period``; each unit moves tat on by
``period / limit``. A fresh key has a burst of ``limit``, and units come back one at a
time, evenly: a sliding window, not a fixed one that refills all at once.

Checks are batched like the writer's appends: whatever arrived while the previous statement
ran goes into the next one, a single ``INSERT ... ON CONFLICT DO UPDATE`` over ``unnest``.
Requests for one key in a batch are summed and the statement grants as many as fit; the
row lock of ``ON CONFLICT`` serializes processes, so no two ever grant the same unit. A
negative cost gives units back (a login that succeeded was not a failure). Each check is
all or none: units granted toward one that did not fit are given back at once.

A key with a large quota is served from a *lease*: a check that goes to the database asks
for a few units more than it needs (a hundredth of the quota, at most MAX_LEASE), and the
process spends those locally until they run out. Leased units are charged to the shared
quota when they are granted, so the limit still holds across every process; what a lease
costs is that a process may hold units another process's client could have used (at most
a hundredth of the quota each). Quotas under a hundred (the login limits, a tight ballot
limit) get no lease: every unit is decided by the database. At stop, the unspent leased
units go back to the quota in one final statement, sent once: a restart does not cost a
client a lease's worth of its quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg

from domain.ports import StoreUnavailable
from infra.store.reconnect import hung_up

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL = 600.0
# A check's longest wait for its statement (the writer's and the reads' waits are alike).
CHECK_WAIT = 1.0
RECONNECT_DELAY = 1.0
LEASE_FRACTION = 100
MAX_LEASE = 64
MAX_LEASED_KEYS = 50_000
# stop(): how long the cancelled checking task is waited for, and the final give-back.
STOP_WITHIN = 0.5
GIVE_BACK_WITHIN = 1.0
GIVE_BACK_CONNECT = 2  # (libpq's least: the wait above bounds it anyway)
# g: units granted, as many of the wanted ones as fit under the span. Every SET expression
# reads the old row (r) and the proposed one (excluded); now() is the statement's start.
_FIT = (
    "least(excluded.wanted, greatest(0, floor((extract(epoch FROM now()) + excluded.span"
    " - greatest(r.tat, extract(epoch FROM now()))) / excluded.step + 1e-9)))::int"
)
CHECK = f"""
INSERT INTO rate_limits AS r (key, tat, granted, wanted, step, span)
SELECT q.key, n.now + greatest(least(q.n, q.lim), 0) * q.step, greatest(least(q.n, q.lim), 0),
       q.n, q.step, q.step * q.lim
FROM unnest(%s::text[], %s::int[], %s::int[], %s::float8[]) AS q(key, n, lim, step),
     (SELECT extract(epoch FROM now())::float8 AS now) n
ON CONFLICT (key) DO UPDATE SET
    granted = CASE WHEN excluded.wanted < 0 THEN excluded.wanted ELSE {_FIT} END,
    tat = CASE WHEN excluded.wanted < 0 THEN r.tat + excluded.wanted * excluded.step
               ELSE greatest(r.tat, extract(epoch FROM now())) + excluded.step * {_FIT} END,
    wanted = excluded.wanted, step = excluded.step, span = excluded.span
RETURNING key, granted, tat, extract(epoch FROM now())::float8
"""
# A row whose tat has passed means a full quota, the same as no row.
FORGET = "DELETE FROM rate_limits WHERE tat < extract(epoch FROM now())"


class LimiterUnavailable(StoreUnavailable):
    """The limiter's statement did not answer within CHECK_WAIT: the check was given up on
    (nothing it would have granted is spent), so the request it guards must not go on."""


# The server ending sessions: an administrator's shutdown, a crash's, or not taking any yet.
SERVER_GOING = frozenset({"57P01", "57P02", "57P03"})


class LimiterStoreDown(LimiterUnavailable):
    """The check was not answered, or not made, while the writer has the event store marked
    down (api/ratelimit.py): the store, not the limiter alone, is what is away."""


@dataclass(frozen=True, slots=True)
class Quota:
    """``limit`` units per ``period`` seconds (also the largest burst)."""

    limit: int
    period: float

    @property
    def step(self) -> float:
        return self.period / self.limit


@dataclass(frozen=True, slots=True)
class Decision:
    """One check's outcome: allowed or not, units left, and when the next comes back."""

    allowed: bool
    remaining: int
    # Seconds until one more unit is available (0 while the quota is full).
    next_unit: float


def decide(quota: Quota, allowed: bool, tat: float, now: float) -> Decision:
    """A decision from the row the statement returned."""
    available = (now + quota.period - tat) / quota.step
    remaining = max(0, min(quota.limit, math.floor(available + 1e-9)))
    if remaining >= quota.limit:
        return Decision(allowed, remaining, 0.0)
    # The next unit is back when ``available`` reaches the next whole number.
    next_unit = (math.floor(available + 1e-9) + 1 - available) * quota.step
    return Decision(allowed, remaining, max(0.0, next_unit))


@dataclass(slots=True)
class _Lease:
    """Units this process was granted ahead of need, and the quota as the grant left it."""

    units: int
    remaining: int
    next_unit: float
    quota: Quota  # (what the units are given back to at stop)


@dataclass(slots=True)
class _Check:
    key: str
    quota: Quota
    cost: int
    answer: asyncio.Future[Decision] = field(repr=False)
    held: int = 0  # units of this process's lease that go toward it (too few on their own)
    lease: _Lease | None = None  # (that lease, as it was)


class SharedRateLimiter:
    """GCRA checks against PostgreSQL, one statement per batch, on a connection of its own."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._pending: list[_Check] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._forgot_at = time.monotonic()
        self._leases: dict[str, _Lease] = {}
        # Why the last connection to the store failed, until one is made again: a check
        # unanswered meanwhile meets the store's outage, not a slow statement.
        self.unreachable: str | None = None
        # give-backs no request waits for: kept through a lost connection, never failed
        self._giving_back: set[asyncio.Future[Decision]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rate-limiter")

    async def given_back(self) -> None:
        """Return once every give-back queued so far has been answered (or given up on):
        a refused check is answered before its units are back in the shared quota, and
        another process's next check may come in between."""
        while self._giving_back:
            await asyncio.wait(set(self._giving_back))

    async def stop(self) -> None:
        """Stop checking, and give back to the shared quota, in one final statement, what
        this process holds unspent (its leases, give-backs not sent yet): a restart does
        not throw a lease away. Bounded in time: a store that hangs costs the units, not
        the shutdown."""
        if self._task is not None:
            self._task.cancel()
            # (a statement cancelled on a store that hangs takes psycopg seconds to give up)
            done, _ = await asyncio.wait({self._task}, timeout=STOP_WITHIN)
            if not done:
                log.warning("the rate limiter's last statement is left to the store")
            self._task.add_done_callback(_retrieved)
        owed: dict[str, tuple[Quota, int]] = {}

        def owe(key: str, quota: Quota, units: int) -> None:
            owed[key] = (quota, owed.get(key, (quota, 0))[1] + units)

        # Never sent, any of them (a statement in flight at the cancel took its checks
        # with it, and may have committed: those units stay spent, never returned twice).
        pending, self._pending = self._pending, []
        for check in pending:
            if check.answer in self._giving_back:
                owe(check.key, check.quota, -check.cost)
                check.answer.cancel()
                continue
            if check.held:
                owe(check.key, check.quota, check.held)
            if not check.answer.done():
                check.answer.set_exception(psycopg.OperationalError("the limiter stopped"))
        leases, self._leases = self._leases, {}
        for key, lease in leases.items():
            if lease.units > 0:
                owe(key, lease.quota, lease.units)
        if owed:
            await self._return_once(owed)

    async def _return_once(self, owed: dict[str, tuple[Quota, int]]) -> None:
        """One statement, sent once, whatever comes of it: one that failed may have
        committed (a connection lost after COMMIT), and a second would mint units. On a
        daemon thread of its own, waited for GIVE_BACK_WITHIN at most."""
        keys = sorted(owed)
        params = (
            keys,
            [-owed[k][1] for k in keys],
            [owed[k][0].limit for k in keys],
            [owed[k][0].step for k in keys],
        )
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[BaseException | None] = loop.create_future()

        def send() -> None:
            error: BaseException | None = None
            try:
                with psycopg.connect(
                    self.database_url, autocommit=True, connect_timeout=GIVE_BACK_CONNECT
                ) as conn:
                    conn.execute(CHECK, params)
            except Exception as failed:
                error = failed
            with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
                loop.call_soon_threadsafe(_resolve, sent, error)

        threading.Thread(target=send, name="rate-limit give-back", daemon=True).start()
        done, _ = await asyncio.wait({sent}, timeout=GIVE_BACK_WITHIN)
        units = sum(u for _, u in owed.values())
        if not done:
            log.warning(
                "%d leased rate-limit units not given back within %g s (the store "
                "does not answer): they come back within the hour",
                units,
                GIVE_BACK_WITHIN,
            )
        elif sent.result() is not None:
            log.warning("%d leased rate-limit units not given back: %s", units, sent.result())

    async def hit(self, key: str, quota: Quota, cost: int = 1) -> Decision:
        """Take ``cost`` units of ``key``'s quota (all or none); a negative cost gives back.
        LimiterUnavailable when the store does not answer within CHECK_WAIT (a give-back
        then is still sent, once, in the background)."""
        lease = self._leases.get(key) if cost > 0 else None
        if lease is not None and lease.units >= cost:
            lease.units -= cost
            return Decision(True, lease.remaining + lease.units, lease.next_unit)
        # Too few leased units: they count toward this check (a new lease would otherwise
        # replace them, and the units, charged already, would be lost to everyone).
        if lease is not None:
            del self._leases[key]
        answer: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        check = _Check(key, quota, cost, answer, lease.units if lease else 0, lease)
        self._pending.append(check)
        self._wake.set()
        try:
            # (asyncio.wait neither cancels the answer on the timeout nor on a cancel)
            await asyncio.wait({answer}, timeout=CHECK_WAIT)
        except asyncio.CancelledError:
            self._abandon(check)
            raise
        if not answer.done():
            self._abandon(check)
            raise LimiterUnavailable(
                f"the rate limit's database did not answer within {CHECK_WAIT:g} s"
            )
        return answer.result()

    def _abandon(self, check: _Check) -> None:
        """The caller no longer waits for ``check``; the counts stay right (see the module's
        docstring). An answered check's units stay spent."""
        if check.answer.done():
            return
        check.answer.cancel()  # (what _settle and _unanswered know an abandoned check by)
        waiting = len(self._pending)
        self._pending = [c for c in self._pending if c is not check]
        if len(self._pending) == waiting:
            return  # in a statement in flight: settled without it when it answers
        if check.lease is not None:  # never sent: the lease it held is this process's again
            if check.key in self._leases:  # (another check's statement set one since)
                self._keep(check.key, check.quota, check.held, None, check.quota.step)
            else:
                self._leases[check.key] = check.lease
        if check.cost < 0:  # a give-back never sent is still owed
            self._give_back(check.key, check.quota, -check.cost)

    async def _run(self) -> None:
        # A connection that served and was then lost is replaced at once, once: a check
        # waits CHECK_WAIT at most, less than RECONNECT_DELAY and a connect together.
        # A connection the server hung up on while it idled (idle_session_timeout,
        # pg_terminate_backend, a pooler reaping idle sessions) is seen before anything is
        # sent on it (``hung_up``: no round trip) and replaced at once, its checks still
        # pending: the first statement on it failed every check batched into it (503 "the
        # database could not be reached" on a healthy store), and a replacement cut in turn
        # before its first statement cost a RECONNECT_DELAY past every check's CHECK_WAIT
        # (review: 177 of 360 revisions refused under idle_session_timeout).
        served = False
        while True:
            connected, used = time.monotonic(), False
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True
                ) as conn:
                    connected = time.monotonic()
                    self.unreachable = None
                    while True:
                        await self._wake.wait()
                        if hung_up(cast(Any, conn)):  # (reads pgconn, closed, broken only)
                            break  # (nothing sent: the checks stay pending, the wake set)
                        self._wake.clear()
                        await self._serve(conn)
                        served = used = True
                        if time.monotonic() - self._forgot_at > HOUSEKEEPING_INTERVAL:
                            self._forgot_at = time.monotonic()
                            await conn.execute(FORGET)
            except psycopg.Error as error:
                log.warning("rate limiter lost its database connection: %s", error)
                state = error.sqlstate
                if state is None or state.startswith("08") or state in SERVER_GOING:
                    # (a connection that failed or a server going away, not a statement
                    # the server refused on a live connection, a cancelled one say. A
                    # refusal at connect, too many clients included, comes from psycopg
                    # with no SQLSTATE: counted as the store away.)
                    self.unreachable = str(error).strip() or type(error).__name__
                self._keep_pending()
                if not served:
                    await asyncio.sleep(RECONNECT_DELAY)
                served = False
                continue
            log.info("rate limiter's idle connection was closed by the server: replaced")
            if not used and time.monotonic() - connected < RECONNECT_DELAY:
                # (one cut as soon as it was made, unused: a pause, not a loop of connects)
                await asyncio.sleep(RECONNECT_DELAY)

    def _take_batch(self) -> dict[str, list[_Check]]:
        """Everything pending, by key; a key wanted with both signs waits a turn for one."""
        batch: dict[str, list[_Check]] = {}
        later: list[_Check] = []
        for check in self._pending:
            same = batch.get(check.key)
            if same is None:
                batch[check.key] = [check]
            elif (same[0].cost > 0) == (check.cost > 0):
                same.append(check)
            else:
                later.append(check)
        self._pending = later
        if later:
            self._wake.set()
        return batch

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Check everything pending in one statement."""
        batch = self._take_batch()
        keys = sorted(batch)  # (every process locks rows in one order: no deadlock)
        quotas = [batch[k][0].quota for k in keys]
        costs = [
            sum(c.cost - c.held for c in batch[k])
            + (_lease_size(quota) if batch[k][0].cost > 0 else 0)
            for k, quota in zip(keys, quotas, strict=True)
        ]
        try:
            cursor = await conn.execute(
                CHECK,
                (keys, costs, [q.limit for q in quotas], [q.step for q in quotas]),
            )
            rows = await cursor.fetchall()
        except psycopg.Error as error:
            self._unanswered(batch, error)
            raise
        if len(self._leases) > MAX_LEASED_KEYS:
            self._leases.clear()  # their units stay charged: a little quota lost, no more
        for key, granted, tat, now in rows:
            self._settle(key, batch[key], int(granted), float(tat), float(now))

    def _unanswered(self, batch: dict[str, list[_Check]], error: Exception) -> None:
        """The statement failed: its checks fail, but no unit is lost on the way."""
        for checks in batch.values():
            for check in checks:
                if check.held:  # (charged already: back to this process's lease)
                    self._keep(check.key, check.quota, check.held, None, check.quota.step)
                if check.answer in self._giving_back:
                    # Not sent again: the statement may have committed before the error (a
                    # connection lost after COMMIT), and twice would mint units; once too
                    # few only costs them until they come back (review helper-53).
                    check.answer.cancel()
                elif not check.answer.done():
                    check.answer.set_exception(error)

    def _settle(self, key: str, checks: list[_Check], granted: int, tat: float, now: float) -> None:
        """Answer one key's checks from what the statement granted. An abandoned check's
        (answer cancelled) units stay in what is left, like a refused one's."""
        left = granted + sum(c.held for c in checks)
        shared = decide(checks[0].quota, True, tat, now)
        refused = False
        for check in checks:
            if check.answer.cancelled():
                continue
            allowed = check.cost <= 0 or left >= check.cost
            refused = refused or not allowed
            if allowed and check.cost > 0:
                left -= check.cost
            if not check.answer.done():
                check.answer.set_result(
                    Decision(allowed, shared.remaining + max(left, 0), shared.next_unit)
                )
        if checks[0].cost <= 0 or left <= 0:
            return
        if refused or _lease_size(checks[0].quota) == 0:
            # All or none: what a refused check was granted goes back to the quota,
            # for any process's next request (kept as a lease, it was lost to them).
            # So does an abandoned check's, for a quota that takes no lease.
            self._give_back(key, checks[0].quota, left)
        else:  # added to a lease another batch set meanwhile, never in its place
            self._keep(key, checks[0].quota, left, shared.remaining, shared.next_unit)

    def _keep(
        self, key: str, quota: Quota, units: int, remaining: int | None, next_unit: float
    ) -> None:
        """Units for this process's lease on ``key``: added to any it holds. ``remaining``
        None: the quota's state is not known (a statement failed); an existing lease keeps
        its own, a new one says none left beyond it, the next unit a step away."""
        lease = self._leases.get(key)
        if lease is None:
            self._leases[key] = _Lease(units, remaining or 0, next_unit, quota)
            return
        lease.units += units
        if remaining is not None:
            lease.remaining, lease.next_unit = remaining, next_unit

    def _give_back(self, key: str, quota: Quota, units: int) -> None:
        returned: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._giving_back.add(returned)
        returned.add_done_callback(self._giving_back.discard)
        self._pending.append(_Check(key, quota, -units, returned))
        self._wake.set()

    def _keep_pending(self) -> None:
        """The connection is lost. The checks still pending never reached a statement: they
        wait for the next connection (each caller's CHECK_WAIT still bounds it; one given up
        on is withdrawn, its held units back to the lease), and so do the give-backs, the
        callers' own (a sign-in that succeeded) as well as the limiter's. Failing them lost
        a caller's give-back for good and answered ballots 503 on a connection replaced at
        once (review helper-71)."""
        if self._pending:
            self._wake.set()


def _lease_size(quota: Quota) -> int:
    """Units to ask for ahead of need: none for a small quota, where each one matters."""
    return min(MAX_LEASE, quota.limit // LEASE_FRACTION)


def _resolve(future: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not future.done():
        future.set_result(error)


def _retrieved(task: asyncio.Future[None]) -> None:
    """The checking task, stopped: its end is nobody's to report."""
    if not task.cancelled():
        task.exception()
