"""Hot standby against a frozen active instance (SIGSTOP, a stalled host): the frozen one
keeps its TCP session, so only the server's idle limits end its locks (HA review).

A freeze is simulated in-process: a worker stopped inside its page transaction, a relay
or sealer whose lock-holding session goes silent. Each runs on a database of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg_pool import AsyncConnectionPool

from infra.audit.chain import Signer
from infra.audit.sealer import SEALER_LOCK, Sealer
from infra.broker.relay import RELAY_LOCK, Relay
from infra.broker.topology import Topology, delete_namespace
from infra.store.leader import (
    LEADER_IDLE_TIMEOUT,
    SESSION_ENDED,
    LeaderTimes,
    leader_session,
)
from infra.store.log import LogEvent
from infra.store.migrations import migrate
from projections import PROJECTIONS, runtime
from projections.runtime import ProjectionRunner
from projections.tally import TallyProjection
from tests.databases import create_database, drop_database, lock_holder
from tests.integration.test_projection_runtime import _entries, _fill, _served
from tests.own_logs import ours
from tests.servers import TEST_AUDIT_KEY

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
ROOT = Path(__file__).resolve().parents[2]
# The leaders' idle limit in these tests (LEADER_IDLE_TIMEOUT). A live leader's longest
# silence is a keepalive's interval plus the relay's LISTEN wait (1 s: the keepalive queues
# behind it) plus what a busy machine delays it by: at 2 s, a leader that was not frozen
# lost its lock once in a run beside a full `make test`.
IDLE_LIMIT = 4.0
KEEPALIVE = 0.5


@pytest.fixture
async def store() -> AsyncIterator[tuple[str, AsyncConnectionPool, AsyncConnectionPool]]:
    """A database and two pools on it: the projection workers of two instances."""
    url = create_database("cardinal_frozen")
    migrate(url)
    pools = [
        AsyncConnectionPool(url, min_size=1, max_size=2, open=False, kwargs={"autocommit": True})
        for _ in range(2)
    ]
    for pool in pools:
        await pool.open()
    try:
        yield url, pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()
        drop_database(url)


class FrozenTally(TallyProjection):
    """A tally that stops inside its page's transaction until thawed (SIGSTOP)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = asyncio.Event()
        self.thaw = asyncio.Event()

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        if not self.thaw.is_set():
            self.frozen.set()
            await self.thaw.wait()
        await super().apply(conn, schema, events)


async def test_a_projector_frozen_in_its_page_holds_the_projection_for_seconds_only(
    store: tuple[str, AsyncConnectionPool, AsyncConnectionPool],
) -> None:
    """Frozen inside its page (its session `idle in transaction`, the position row locked
    FOR UPDATE), a projector held every other one of that projection waiting, with no
    limit: the page's transaction now idles for PAGE_IDLE_TIMEOUT at most, the server ends
    it, the standby applies the page, and the frozen one, thawed, finds its page rolled
    back and applies it again, without an error: a duplicate. Nothing is counted twice."""
    url, pool_a, pool_b = store
    election_id = await _fill(url, random.Random(7), ballots=200)
    entries = await _entries(pool_a)
    after, last = 0, entries[-1].position
    frozen_tally = FrozenTally()
    # (This test's runners' limit: the worker's session API stack's projectors, on this
    # loop too, keep theirs.)
    idle = (1.0, runtime.PAGE_IDLE_PER_ENTRY)
    frozen = ProjectionRunner(frozen_tally, pool_a, page_idle=idle)
    standby = ProjectionRunner(TallyProjection(), pool_b, page_idle=idle)
    await frozen.prepare()

    stuck = asyncio.ensure_future(frozen.apply_page(after, last, entries))
    await asyncio.wait_for(frozen_tally.frozen.wait(), 10)
    # The standby's page waits on the frozen one's lock, for about a second, not for ever.
    applied = await asyncio.wait_for(standby.apply_page(after, last, entries), 15)
    assert not applied.duplicate
    assert applied.position == last

    frozen_tally.thaw.set()
    again = await asyncio.wait_for(stuck, 10)
    assert again.duplicate
    assert again.position == last
    assert await frozen.position() == last

    served = await _served(pool_b, election_id)
    fresh = ProjectionRunner(TallyProjection(), pool_b)
    assert (await fresh.catch_up()) == 0
    assert served == await _served(pool_a, election_id)
    async with pool_b.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction'"
        )
        row = await cursor.fetchone()
    assert row is not None
    assert row[0] == 0


class WatchedTally(TallyProjection):
    """A tally that notes its page transaction's idle limit."""

    def __init__(self) -> None:
        super().__init__()
        self.limits: list[str] = []

    async def apply(
        self, conn: psycopg.AsyncConnection[Any], schema: str, events: Sequence[LogEvent]
    ) -> None:
        cursor = await conn.execute("SELECT current_setting('idle_in_transaction_session_timeout')")
        row = await cursor.fetchone()
        assert row is not None
        self.limits.append(str(row[0]))
        await super().apply(conn, schema, events)


async def test_the_page_idle_limit_is_the_page_transactions_alone_and_grows_with_a_long_run(
    store: tuple[str, AsyncConnectionPool, AsyncConnectionPool],
) -> None:
    """The limit is set for the page's transaction only (a rebuild on the same pool, or
    anything else, meets the server's own setting), and a long run of merged pages, whose
    Python work between statements takes longer, is given more: it must not be cut, tried
    again and cut again for good."""
    url, pool, _ = store
    await _fill(url, random.Random(9), ballots=30)
    entries = await _entries(pool)
    tally = WatchedTally()
    runner = ProjectionRunner(tally, pool, page_idle=(5.0, 1.0))  # (a second an entry, here)
    await runner.prepare()
    await runner.apply_page(0, 2, entries[:2])
    await runner.apply_page(2, entries[-1].position, entries[2:])
    assert tally.limits == ["5s", f"{entries[-1].position - 2}s"]
    async with pool.connection() as conn:
        cursor = await conn.execute("SHOW idle_in_transaction_session_timeout")
        row = await cursor.fetchone()
    assert row is not None
    assert row[0] == "0"


# The relay's process, as `cardinal relay` runs it: a relay and a sealer, each leading by
# its advisory lock (with this test's short idle limit).
LEADER = """
import asyncio, sys
from infra.store.leader import LeaderTimes
from infra.audit.chain import Signer
from infra.audit.sealer import Sealer
from infra.broker.relay import Relay
from infra.broker.topology import Topology
from projections import PROJECTIONS
url, amqp, namespace, key = sys.argv[1:5]
async def main():
    times = LeaderTimes(float(sys.argv[5]), float(sys.argv[6]))
    relay = Relay(url, amqp, Topology(namespace), PROJECTIONS, page_key=b"k" * 32, leader=times)
    sealer = Sealer(url, Signer(key), poll_interval=0.2, leader=times)
    await asyncio.gather(relay.run(), sealer.run())
asyncio.run(main())
"""


def _positions(url: str) -> tuple[int, int, int]:
    """(head, relay's position, the chain's last link)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(max(notification_id), 0) FROM cardinal_events), "
            "(SELECT coalesce(max(position), 0) FROM relay_positions), "
            "(SELECT coalesce(max(position), 0) FROM audit_chain)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def _until(check: Callable[[], Awaitable[bool] | bool], patience: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert loop.time() < deadline, "not within the patience given"
        await asyncio.sleep(0.1)


def _leads(relay: Relay) -> bool:
    return relay.status.leader


@pytest.fixture
async def relay_stack() -> AsyncIterator[tuple[str, str]]:
    url = create_database("cardinal_frozen_relay")
    migrate(url)
    namespace = f"t-frozen-{uuid.uuid4().hex[:8]}"
    try:
        yield url, namespace
    finally:
        delete_namespace(AMQP_URL, namespace, PROJECTIONS)
        drop_database(url)


async def test_a_frozen_relay_and_sealer_give_way_to_the_standby(
    relay_stack: tuple[str, str],
) -> None:
    """SIGSTOP of the relay's process (relay and sealer leaders): their advisory locks
    were held on sessions the kernel kept alive, the standby stood by for good, and the
    log went unpublished and unsealed. The leaders' sessions now end after their idle
    limit of silence (a live leader sends a keepalive every few seconds): the standby's
    relay and sealer take over and publish and seal what comes next."""
    url, namespace = relay_stack
    await _fill(url, random.Random(3), ballots=20)
    frozen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LEADER,
        url,
        AMQP_URL,
        namespace,
        TEST_AUDIT_KEY,
        str(IDLE_LIMIT),
        str(KEEPALIVE),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    # (The standby's limits given to it: patched in the module, they were the session API
    # stack's leaders' too, on this loop, for the rest of the session once they reconnected.)
    times = LeaderTimes(IDLE_LIMIT, KEEPALIVE)
    standby_relay = Relay(
        url, AMQP_URL, Topology(namespace), PROJECTIONS, page_key=b"k" * 32, leader=times
    )
    standby_sealer = Sealer(url, Signer(TEST_AUDIT_KEY), poll_interval=0.2, leader=times)
    tasks: list[asyncio.Task[None]] = []
    try:
        head = _positions(url)[0]
        await _until(lambda: _positions(url) == (head, head, head), 60)
        relay_holder, sealer_holder = lock_holder(url, RELAY_LOCK), lock_holder(url, SEALER_LOCK)
        assert relay_holder is not None
        assert sealer_holder is not None
        tasks = [
            asyncio.create_task(standby_relay.run()),
            asyncio.create_task(standby_sealer.run()),
        ]
        # Leading, the frozen-to-be outlasts its idle limit: its keepalives hold the locks.
        await asyncio.sleep(IDLE_LIMIT * 2)
        assert lock_holder(url, RELAY_LOCK) == relay_holder
        assert lock_holder(url, SEALER_LOCK) == sealer_holder
        assert not _leads(standby_relay)

        frozen.send_signal(signal.SIGSTOP)
        await _fill(url, random.Random(4), ballots=20)
        head = _positions(url)[0]
        # Within its idle limit and a poll or two, the standby leads both, and catches up.
        await _until(lambda: _positions(url) == (head, head, head), IDLE_LIMIT + 15)
        assert _leads(standby_relay)
        assert lock_holder(url, RELAY_LOCK) not in (None, relay_holder)
        # The frozen one seals nothing: the chain's new links are the standby's, which holds
        # the lock now. (The gauge cardinal_sealer_leader is the process's: another test's
        # stack running in this worker holds it at 1 too, so it proves nothing here.)
        assert standby_sealer.position == head
        assert lock_holder(url, SEALER_LOCK) not in (None, sealer_holder)

        # Thawed, the old leader finds its sessions gone and stands by: one leader each.
        frozen.send_signal(signal.SIGCONT)
        await _fill(url, random.Random(5), ballots=5)
        head = _positions(url)[0]
        await _until(lambda: _positions(url) == (head, head, head), 15)
        assert _leads(standby_relay)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(ProcessLookupError):
            frozen.send_signal(signal.SIGCONT)
            frozen.terminate()
        try:
            await asyncio.wait_for(frozen.wait(), 10)
        except TimeoutError:
            frozen.kill()
            await frozen.wait()


async def test_a_sealer_missing_signed_links_says_so_in_its_gauge_and_keeps_its_lock(
    relay_stack: tuple[str, str],
) -> None:
    """The chain lacks links a checkpoint signed (a restore gone wrong): the sealer seals
    nothing, as before, but it left cardinal_sealer_halted at 0 (no alert) and slept a
    minute at a time without a word to the server, whose idle limit then ended its session
    and lock. Now the gauge is 1 while it waits, and it checks again (keeping its session)
    every HALTED_KEEPALIVE; once the links are back it seals, and the gauge is 0."""
    url, _ = relay_stack
    # The sealer's limits given to it, not patched in the module (the session API stack's
    # sealer, reconnecting meanwhile, kept them for the rest of the session): HALTED_KEEPALIVE
    # 0.2 s, and the idle limit 2.5 s, well above it (at 1 s a busy machine's pause ended the
    # session of a sealer that was not silent, once in a few runs), with no keepalive but
    # the waiting loop's own.
    times = LeaderTimes(2.5, None)
    await _fill(url, random.Random(6), ballots=10)
    signer = Signer(TEST_AUDIT_KEY)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await Sealer(url, signer).seal_pending(conn)
        await Sealer(url, signer).checkpoint_head(conn, "test")
        cursor = await conn.execute(
            "DELETE FROM audit_chain WHERE position = (SELECT max(position) FROM audit_chain) "
            "RETURNING position, entry_hash, hash, election_id"
        )
        removed = await cursor.fetchone()
    assert removed is not None
    sealer = Sealer(url, signer, poll_interval=0.1, linger=0.01, leader=times, halted_keepalive=0.2)
    running = asyncio.create_task(sealer.run())
    try:
        await _until(lambda: REGISTRY.get_sample_value("cardinal_sealer_halted") == 1, 10)
        held = lock_holder(url, SEALER_LOCK)
        assert held is not None
        await asyncio.sleep(5.5)  # past the session's idle limit, twice
        assert lock_holder(url, SEALER_LOCK) == held
        assert sealer.position == 0  # sealed nothing
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO audit_chain (position, entry_hash, hash, election_id) "
                "VALUES (%s, %s, %s, %s)",
                removed,
            )
        await _until(lambda: REGISTRY.get_sample_value("cardinal_sealer_halted") == 0, 10)
        await _fill(url, random.Random(8), ballots=3)
        head = _positions(url)[0]
        await _until(lambda: _positions(url)[2] == head, 10)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_a_leaders_own_times_are_its_own_and_not_the_processes(
    relay_stack: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Tests gave their leaders a short idle limit by patching the module's, and every
    other leader of the process that (re)connected meanwhile took it for good: the
    worker's session API stack's sealer, a 2.5 s limit and no keepalive for the rest of
    the session. A leader given its own times keeps them to itself."""
    url, _ = relay_stack
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as own,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as other,
        leader_session(own, LeaderTimes(2.5, None)),
        leader_session(other),
    ):
        limits: list[str] = []
        for conn in (own, other):
            cursor = await conn.execute("SHOW idle_session_timeout")
            row = await cursor.fetchone()
            assert row is not None
            limits.append(row[0])
    assert limits == ["2500ms", f"{LEADER_IDLE_TIMEOUT:.0f}s"]
    # A sealer given a 1 s limit and no keepalive, waiting 5 s at a time for notifications:
    # its session is ended within seconds, not after LEADER_IDLE_TIMEOUT.
    caplog.set_level(logging.INFO)
    sealer = Sealer(url, Signer(TEST_AUDIT_KEY), poll_interval=5.0, leader=LeaderTimes(1.0, None))
    running = asyncio.create_task(sealer.run())
    try:
        await _until(
            lambda: any(
                r.name == "infra.audit.sealer" and r.levelno == logging.WARNING
                for r in ours(caplog)
            ),
            10,
        )
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


# Leaders whose keepalive speaks well inside their idle limit while they wait for
# notifications (the keepalive queues behind that wait: their silence is at most a wait,
# 1.5 s, and a bit).
QUIET = LeaderTimes(3.0, 0.25)
WAIT = 1.5


async def _leader_waiting(
    role: str, url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> tuple[asyncio.Task[None], int]:
    """The ``role``'s leader (relay or sealer) with QUIET times, leading; returned just after
    it handled a new entry, so waiting for notifications (for WAIT) from now on; and its
    lock."""
    caplog.set_level(logging.INFO)
    position: Callable[[], int]
    if role == "sealer":
        sealer = Sealer(url, Signer(TEST_AUDIT_KEY), poll_interval=WAIT, linger=0.01, leader=QUIET)
        running = asyncio.create_task(sealer.run())
        position, lock = (lambda: sealer.position), SEALER_LOCK
    else:
        relay = Relay(
            url,
            AMQP_URL,
            Topology(namespace),
            PROJECTIONS,
            page_key=b"k" * 32,
            poll_interval=WAIT,
            linger=0.01,
            leader=QUIET,
        )
        running = asyncio.create_task(relay.run())
        position, lock = (lambda: relay.status.position), RELAY_LOCK
    await _until(lambda: lock_holder(url, lock) is not None, 15)
    await _fill(url, random.Random(11), ballots=2)
    head = _positions(url)[0]
    await _until(lambda: position() == head, 15)  # (polled every 0.1 s)
    return running, lock


def _warnings(role: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    logger = {"sealer": "infra.audit.sealer", "relay": "infra.broker.relay"}[role]
    return [
        r.getMessage() for r in ours(caplog) if r.name == logger and r.levelno >= logging.WARNING
    ]


async def _stop(running: asyncio.Task[None]) -> None:
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


@pytest.mark.parametrize("role", ["sealer", "relay"])
async def test_a_leader_whose_loop_stalled_past_its_limit_says_its_session_ended(
    role: str, relay_stack: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A leader whose loop stalled (or whose process was stopped) past its idle limit while
    it waited for notifications found its connection closed without the server's reason
    (psycopg's "server closed the connection unexpectedly", or "the connection is closed"
    once its keepalive had met the end; no sqlstate), and said the store's outage: "cannot
    reach PostgreSQL", then "reachable again", when the store had answered at once. Silent
    for its limit, its session is now said to have been ended."""
    url, namespace = relay_stack
    running, lock = await _leader_waiting(role, url, namespace, caplog)
    try:
        held = lock_holder(url, lock)
        # The loop stalls (a stopped process), in the leader's wait.
        time.sleep(QUIET.idle_timeout + 1.5)  # noqa: ASYNC251
        await _until(lambda: bool(_warnings(role, caplog)), 10)
        # It leads again on a new session (and says nothing more).
        await _until(lambda: lock_holder(url, lock) not in (None, held), 15)
        said = _warnings(role, caplog)
        assert len(said) == 1, said
        assert f"the {role}'s database session was ended after 3s without a word" in said[0]
        assert not any("cannot reach" in r.getMessage() for r in ours(caplog))
        assert not any("reachable again" in r.getMessage() for r in ours(caplog))
    finally:
        await _stop(running)


async def test_a_leaders_backend_terminated_while_it_spoke_is_still_an_outage(
    relay_stack: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The other side: a session lost while it was not silent (its backend terminated, the
    server restarting) is said as before, as the store's outage, not as the session ended."""
    url, namespace = relay_stack
    running, lock = await _leader_waiting("sealer", url, namespace, caplog)
    try:
        held = lock_holder(url, lock)
        assert held is not None
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (held,))
        await _until(lambda: lock_holder(url, lock) not in (None, held), 15)
        said = _warnings("sealer", caplog)
        assert len(said) == 1, said
        assert "sealer: cannot reach PostgreSQL at" in said[0]
        assert not any("without a word" in message for message in said)
    finally:
        await _stop(running)


async def test_a_leader_session_ended_in_a_notification_wait_is_raised_as_ended(
    relay_stack: tuple[str, str],
) -> None:
    """The end of a silent session met in ``notifies()`` comes without the server's reason
    (``consuming input failed: server closed the connection unexpectedly``, no sqlstate): the
    leader's session raises it as SESSION_ENDED, the loss kept as its cause."""
    url, _ = relay_stack
    with pytest.raises(SESSION_ENDED) as raised:
        await _silent_leader_waits(url)
    cause = raised.value.__cause__
    assert isinstance(cause, psycopg.OperationalError)
    assert cause.sqlstate is None


async def _silent_leader_waits(url: str) -> None:
    """A leader session with a 1 s limit and no keepalive, waiting 5 s for notifications."""
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        leader_session(conn, LeaderTimes(1.0, None)),
    ):
        await conn.execute("LISTEN cardinal_frozen_test")
        async for _ in conn.notifies(timeout=5):
            pass


@pytest.fixture
async def bare_database() -> AsyncIterator[str]:
    url = create_database("cardinal_frozen_leader")
    try:
        yield url
    finally:
        drop_database(url)  # (WITH FORCE: a backend the proxy cut off goes too)


class CutOff:
    """A TCP proxy to a test's database that can hold its traffic both ways (a hung server:
    what was sent is never answered) and cut its connections, client side, with no word
    from the server (no sqlstate), as a backend killed or a network cut does."""

    def __init__(self, url: str) -> None:
        self.target = psycopg.conninfo.conninfo_to_dict(url)
        self.url = url
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.transports: list[asyncio.WriteTransport] = []
        self.pipes: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return psycopg.conninfo.make_conninfo(self.url, host="127.0.0.1", port=port)

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    def hold(self) -> None:
        self.flowing.clear()

    def cut(self) -> None:
        for transport in self.transports:
            transport.abort()
        for pipe in self.pipes:
            pipe.cancel()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            str(self.target.get("host", "127.0.0.1")), int(str(self.target.get("port", 5432)))
        )
        self.transports += [writer.transport, up_writer.transport]
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.ensure_future(pipe)
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                data = await reader.read(65536)
                await self.flowing.wait()  # (held: nothing passes, not even an end)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        writer.close()


async def _sleep_then_select(conn: psycopg.AsyncConnection[Any], seconds: float) -> None:
    await asyncio.sleep(seconds)
    await conn.execute("SELECT 1")


# How a QUIET leader (3 s limit, keepalive every 0.25 s: the loss is the session's end after
# 2.7 s of silence) loses its session through a proxy: (when the proxy holds its traffic,
# when it cuts it, what the leader does meanwhile).
LOSSES: dict[str, tuple[float | None, float, Callable[[psycopg.AsyncConnection[Any]], Any]]] = {
    # Its own statement running for 4 s: the server counts none of it as idle.
    "statement running": (None, 4.0, lambda conn: conn.execute("SELECT pg_sleep(10)")),
    # The server hung at 1 s (a keepalive sent, never answered), cut off at 6 s.
    "server hung": (1.0, 6.0, lambda conn: _sleep_then_select(conn, 7.0)),
    # Cut off at 1 s while its keepalives were answered (the outage it always was).
    "talking": (None, 1.0, lambda conn: _sleep_then_select(conn, 2.0)),
}


async def _lead(
    conn: psycopg.AsyncConnection[Any],
    times: LeaderTimes,
    lead: Callable[[psycopg.AsyncConnection[Any]], Any],
) -> None:
    async with leader_session(conn, times):
        await asyncio.wait_for(lead(conn), 15)


@pytest.mark.parametrize("loss", list(LOSSES))
async def test_a_leaders_session_lost_while_not_idle_is_an_outage(
    loss: str, bare_database: str
) -> None:
    """Silence was counted from the last answered keepalive, so a session lost (no sqlstate:
    a backend killed, a network cut) while the leader's own statement ran, or while the
    server, hung, left a keepalive unanswered, past the idle limit less a tenth, was said as
    the session ended for its silence ("was this process stopped?") when the store had gone:
    the server's idle limit counts only while the session is idle, and a statement in flight
    now counts as the session speaking. Each is an outage, raised as it came."""
    held_at, cut_at, lead = LOSSES[loss]
    loop = asyncio.get_running_loop()
    proxy = CutOff(bare_database)
    async with (
        proxy as proxied,
        await psycopg.AsyncConnection.connect(proxied, autocommit=True) as conn,
    ):
        if held_at is not None:
            loop.call_later(held_at, proxy.hold)
        loop.call_later(cut_at, proxy.cut)
        with pytest.raises(psycopg.OperationalError) as raised:
            await _lead(conn, QUIET, lead)
    assert not isinstance(raised.value, SESSION_ENDED), raised.value
    assert raised.value.sqlstate is None


async def test_another_connections_loss_in_a_leader_session_is_raised_as_it_came(
    bare_database: str,
) -> None:
    """A sqlstate-less OperationalError raised in the block was taken for the session's own
    loss, whatever connection it came from: after the idle limit's silence, another
    connection's loss (the store's outage) was said as this session's end. Only the
    session's own connection, broken or closed, is judged by its silence."""
    async with (
        await psycopg.AsyncConnection.connect(bare_database, autocommit=True) as conn,
    ):

        async def another_connection_lost(conn: psycopg.AsyncConnection[Any]) -> None:
            await asyncio.sleep(1.5)  # (the server ends the session meanwhile, unread)
            assert not conn.broken
            assert not conn.closed
            raise psycopg.OperationalError("another connection's: server closed it")

        with pytest.raises(psycopg.OperationalError) as raised:
            await _lead(conn, LeaderTimes(1.0, None), another_connection_lost)
    assert not isinstance(raised.value, SESSION_ENDED), raised.value
    assert str(raised.value) == "another connection's: server closed it"
