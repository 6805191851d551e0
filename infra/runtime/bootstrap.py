"""The composition root: builds every running part of a process from its Settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import AsyncConnectionPool

from domain.application import VotingApplication
from infra.audit.chain import Signer
from infra.audit.sealer import Sealer
from infra.broker.monitor import BrokerMonitor
from infra.broker.relay import Relay
from infra.broker.signing import page_key
from infra.broker.topology import Topology
from infra.metrics import serve_worker_metrics
from infra.runtime.caches import SizedCache
from infra.runtime.lifecycle import check_port_free
from infra.runtime.loop import cancel_within
from infra.runtime.settings import Settings, SettingsError
from infra.runtime.voters import VoterKeys
from infra.store import open_application
from infra.store.connections import READS_POOL, projections_pool
from infra.store.election_feed import ElectionFeed
from infra.store.names import ALIVE, connection_name
from infra.store.reconnect import ReconnectingPool
from infra.store.writer import GroupCommitWriter
from projections import PROJECTIONS, projection
from projections.positions import PositionWatcher
from projections.runtime import ProjectionRunner
from projections.worker import ProjectionWorker

log = logging.getLogger(__name__)
# A crashed component restarts after 1 s, then 2, 4 ... up to this, while it keeps crashing
# within STEADY_AFTER seconds of each start.
RESTART_FIRST = 1.0
RESTART_AT_MOST = 30.0
STEADY_AFTER = 60.0
LIVE_CACHE_BYTES = 64 * 2**20  # live results documents kept, per process
TRAVEL_CACHE_BYTES = 128 * 2**20  # time travel: recounts and their documents, per process


@dataclass
class Workers:
    """The background parts of a process: relay and projection workers."""

    relay: Relay | None = None
    sealer: Sealer | None = None
    projections: list[ProjectionWorker] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class Services:
    """What the API needs at run time, started and stopped together."""

    settings: Settings
    app: VotingApplication
    writer: GroupCommitWriter
    feed: ElectionFeed
    voter_keys: VoterKeys
    reads: AsyncConnectionPool
    positions: PositionWatcher
    workers: Workers
    broker: BrokerMonitor | None = None  # where AMQP_URL is set
    # Results computed per (election, position): dashboards poll, positions move rarely.
    # Live documents and time travel's recounts each have a budget of bytes of their own:
    # a flood of distinct ``?at=`` positions does not evict the live documents.
    results_cache: SizedCache = field(default_factory=lambda: SizedCache(LIVE_CACHE_BYTES))
    travel_cache: SizedCache = field(default_factory=lambda: SizedCache(TRAVEL_CACHE_BYTES))
    # Time travel's recounts from the log, one at a time per turn (api/recounts.py): one
    # turn for auditors and admins, one for everyone else (client and operator tokens,
    # voter tokens, no token), so that anonymous readers of a public election cannot keep
    # auditors from recounting; and those running, by what they answer and whose turn:
    # identical requests share one. Everyone else's turn owes a rest after each recount,
    # three times as long as it took, a leaky bucket: ``recounts_rest_until`` less now
    # (``time.monotonic``) is what it owes, and past 3 s owed it starts no other.
    recounting: asyncio.Lock = field(default_factory=asyncio.Lock)
    recounting_for_roles: asyncio.Lock = field(default_factory=asyncio.Lock)
    recounts: dict[Hashable, asyncio.Future[Any]] = field(default_factory=dict)
    recounts_rest_until: float = 0.0
    # Live results' documents tabulated off the event loop, one at a time (api/tabulations.py,
    # a turn of their own beside the recounts'), and those running, by what they answer.
    tabulating: asyncio.Lock = field(default_factory=asyncio.Lock)
    tabulations: dict[Hashable, asyncio.Future[Any]] = field(default_factory=dict)
    # Set a moment before uvicorn's shutdown deadline (api/server.py): reads in progress
    # that have not begun their answer are answered 503 then, not cancelled into a 500.
    draining: asyncio.Event = field(default_factory=asyncio.Event)


def _database_url(settings: Settings) -> str:
    if settings.database_url is None:
        raise SettingsError("DATABASE_URL is not set (cardinal serve starts an embedded one)")
    return settings.database_url


@asynccontextmanager
async def running_workers(
    settings: Settings,
    *,
    relay: bool,
    projections: Sequence[str],
    metrics_port: int | None = None,
) -> AsyncIterator[Workers]:
    """Run the relay (where a broker is configured) and projection workers as tasks.

    With ``metrics_port`` (a process without the API), serve Prometheus metrics there.
    """
    url = _database_url(settings)
    if metrics_port:
        # Taken (say, by `cardinal serve` beside this process, with its .cardinal/env
        # sourced), the metrics task would crash and restart forever: say so, and stop.
        check_port_free(settings.metrics_listen_host, metrics_port, "METRICS_PORT (0: none)")
    topology = Topology(settings.namespace)
    workers = Workers()
    pool = _pool(
        url,
        max_size=projections_pool(len(projections)),
        name="projections",
        wait=PROJECTIONS_WAIT,
        # Every statement of a live page finds rows by key: a page's check that its last
        # entry is this store's (``track``) was planned, prepared, while the log was a few
        # rows long, as a scan of the whole log, and kept that plan (30 rows read per
        # ballot in test_bench, and growing with the log). As the writer's session does.
        options="-c enable_seqscan=off",
    )
    await pool.open(wait=False)
    key = _page_key(settings) if settings.amqp_url is not None else None
    if relay and settings.amqp_url is not None:
        assert key is not None
        workers.relay = Relay(url, settings.amqp_url, topology, PROJECTIONS, page_key=key)
        workers.tasks.append(_supervised("relay", workers.relay.run))
    for name in projections:
        worker = ProjectionWorker(
            ProjectionRunner(projection(name), pool),
            url,
            amqp_url=settings.amqp_url,
            topology=topology,
            page_key=key,
        )
        workers.projections.append(worker)
        workers.tasks.append(_supervised(f"projection {name}", worker.run))
    # The sealer lives with the relay; with no broker there is no relay, and it lives with
    # the projections instead. Its leader lock makes a second one a harmless standby.
    if relay or (projections and settings.amqp_url is None):
        if settings.audit_key is None:
            log.warning("CARDINAL_AUDIT_KEY is not set: the log is not being sealed")
        else:
            workers.sealer = Sealer(url, Signer(settings.audit_key))
            workers.tasks.append(_supervised("sealer", workers.sealer.run))
    if metrics_port is not None:
        component = "relay" if relay else "projector"
        workers.tasks.append(
            _supervised(
                "metrics",
                lambda: serve_worker_metrics(
                    metrics_port,
                    url,
                    component,
                    settings.metrics_listen_host,
                    settings.metrics_token,
                ),
            )
        )
    tune_garbage_collection()
    try:
        yield workers
    finally:
        # Bounded, as running_services' steps are: a task that never ends held the process
        # (and the API's shutdown, where it runs projections) for good.
        await cancel_within("the relay, projection and sealer tasks", workers.tasks, WORKERS_STOP)
        await _bounded("the projections pool", STEP, pool.close(timeout=STEP / 2))


def _page_key(settings: Settings) -> bytes:
    """The key the relay signs pages with and the workers check them by, from
    CARDINAL_SECRET; in development, where it may be unset, from the secret kept in the
    data folder, the one `cardinal serve` and `cardinal api` complete theirs with (and
    export in .cardinal/env): every process of a stack derives the same key."""
    return page_key(_pages_secret(settings), settings.namespace)


def secret_in_use(settings: Settings) -> str | None:
    """The secret a process of these settings uses: CARDINAL_SECRET, or where a broker
    carries signed pages, the secret the page key is derived from (in development, the
    data folder's); None where it uses none (projections without a broker, unset)."""
    if settings.secret is not None:
        return settings.secret
    return _pages_secret(settings) if settings.amqp_url is not None else None


def _pages_secret(settings: Settings) -> str:
    secret = settings.secret
    if secret is None and not settings.is_production:
        from infra.runtime.credentials import complete

        secret = complete(settings).settings.secret
    if secret is None:
        raise SettingsError(
            "CARDINAL_SECRET is not set: the relay signs the pages it publishes with it, and "
            "projection workers accept only pages so signed (set the API's in every process)"
        )
    return secret


@asynccontextmanager
async def running_services(
    settings: Settings,
    *,
    relay: bool = False,
    projections: Sequence[str] = (),
    component: str = "api",
    quiet_broker: bool = False,
) -> AsyncIterator[Services]:
    """Start the API's parts (and any workers); stop them in reverse order. ``component``
    names the process (``api``, ``ingest``) in its broker monitor's log lines and gauge;
    ``quiet_broker``: the monitor keeps its state and gauge but says nothing (another task
    of the process says the broker's outages under that name)."""
    url = _database_url(settings)
    if settings.secret is None:
        raise SettingsError(
            "CARDINAL_SECRET is not set: every process that takes ballots needs the API's "
            "(`. .cardinal/env` after `cardinal serve` in development)"
        )
    app = open_application(url)
    app.closed_cached = settings.closed_elections_cached
    writer = GroupCommitWriter(
        app, url, max_batch=settings.writer_max_batch, max_queue=settings.writer_max_queue
    )
    app.writer = writer
    # A reader waits at most READ_WAIT for a connection: while the database is down the
    # pool has none to give, and a read is answered 503 within a second.
    reads = _pool(url, max_size=READS_POOL, wait=READ_WAIT, name="reads")
    await reads.open(wait=False)
    writer.start()
    feed = ElectionFeed(app, url, reads=reads)
    await feed.start()
    positions = PositionWatcher(url, reads)
    await positions.start()
    broker = (
        BrokerMonitor(settings.amqp_url, component, quiet=quiet_broker)
        if settings.amqp_url
        else None
    )
    if broker is not None:
        await broker.start()
    try:
        async with running_workers(settings, relay=relay, projections=projections) as workers:
            yield Services(
                settings,
                app,
                writer,
                feed,
                VoterKeys(settings.secret),
                reads,
                positions,
                workers,
                broker,
            )
    finally:
        # Each step bounded, for a store that hangs hangs every step that waits on it: the
        # process goes within serve's grace (uvicorn's GRACE, then at most SHUTDOWN_AT_MOST
        # here, under the supervisor's STOP_TIMEOUT before SIGKILL: the budget is summed in
        # tests/unit/test_shutdown_budget.py). The writer first: whoever still waits on a
        # ballot is answered before anything else is waited for.
        await writer.stop(within=WRITER_STOP)
        stops = [positions.stop(), feed.stop()]
        if broker is not None:
            stops.append(broker.stop())

        async def watchers_then_reads() -> None:  # (the feed and the watcher read on it)
            await _bounded("the election feed, position watcher and broker monitor", STEP, *stops)
            await _bounded("the reads pool", STEP, reads.close(timeout=STEP / 2))

        # The application's connections (eventsourcing's pool) close meanwhile: nothing
        # above waits on them.
        await asyncio.gather(
            watchers_then_reads(),
            _in_thread_within("the application's connections", STEP, app.close),
        )


READ_WAIT = 0.9
# running_services' shutdown, step by step (seconds), and in all: the workers' tasks and
# their pool (running_workers'), then the writer, then the watchers and the reads pool
# while the application's connections close beside them.
WORKERS_STOP = 2.0
WRITER_STOP = 2.0
STEP = 1.0
SHUTDOWN_AT_MOST = WORKERS_STOP + STEP + WRITER_STOP + 2 * STEP
# An API process of `serve` (or `cardinal api`) runs no worker task: none to wait for.
API_SHUTDOWN_AT_MOST = SHUTDOWN_AT_MOST - WORKERS_STOP


async def _bounded(what: str, within: float, *steps: Awaitable[None]) -> None:
    """Run ``steps`` together for at most ``within`` seconds; what is not done by then is
    cancelled and left (logged): a stop that waits on a store that hangs never returns."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    done, pending = await asyncio.wait(tasks, timeout=within)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("stopping %s failed: %s", what, task.exception())
    if pending:
        log.warning("stopping %s took over %g s: left behind", what, within)
        for task in pending:
            task.cancel()
            task.add_done_callback(_retrieved)


async def _in_thread_within(what: str, within: float, call: Callable[[], None]) -> None:
    """``call`` in a daemon thread of its own, waited for ``within`` seconds at most (not
    in the loop's executor, which the process waits for at exit)."""
    loop = asyncio.get_running_loop()
    ended = loop.create_future()

    def run() -> None:
        error: BaseException | None = None
        try:
            call()
        except BaseException as raised:  # reported on the loop, not lost with the thread
            error = raised
        with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
            loop.call_soon_threadsafe(_resolve, ended, error)

    threading.Thread(target=run, name=f"stopping {what}", daemon=True).start()
    done, _ = await asyncio.wait({ended}, timeout=within)
    if not done:
        log.warning("stopping %s took over %g s: left behind", what, within)
    elif ended.result() is not None:
        log.error("stopping %s failed: %s", what, ended.result())


def _resolve(future: asyncio.Future[BaseException | None], error: BaseException | None) -> None:
    if not future.done():
        future.set_result(error)


def _retrieved(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def tune_garbage_collection() -> None:
    """Keep the cyclic garbage collector off the long-lived heap, and run it less often.

    Everything built at start lives as long as the process, and every ballot or log entry
    allocates a few hundred short-lived objects; with the default threshold (700) a
    collection runs every few requests and walks the whole heap now and then. Measured:
    a tenth of the API's CPU, a third of a rebuild's.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


# How long a projection worker waits in its pool for a connection: passing over the
# connections a restart broke, it got one within a second of the store's return (lent them
# as they were, a worker failed on each in turn and came back 22 s after a restart: merge
# review mr4), but it waited in the pool through a whole outage and said nothing of it.
# Past this wait it says the store is away (PoolTimeout is TRANSIENT), and probes it.
PROJECTIONS_WAIT = 10.0


def _pool(
    url: str, max_size: int, *, name: str, wait: float = 30.0, options: str | None = None
) -> AsyncConnectionPool:
    """A pool of autocommit connections, named ``name`` in pg_stat_activity, that lends no
    connection the server has hung up on (seen without a round trip), so that a database
    restart costs a reconnect rather than a failed request or a wait. It reconnects after
    an outage at least every 2 s (infra/store/reconnect.py), not after psycopg_pool's
    doubling waits."""
    return ReconnectingPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=wait,
        kwargs={
            "autocommit": True,
            "connect_timeout": 2,
            "application_name": connection_name(name),
            **ALIVE,
            **({"options": options} if options else {}),
        },
    )


def _supervised(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """Run a component forever; a bug that escapes it is logged loudly and it restarts.

    A component that keeps crashing (a port taken, a setting wrong) is restarted ever less
    often, up to once every RESTART_AT_MOST seconds, with its traceback logged the first
    time and a line each time after: not a traceback a second in the log."""

    async def supervise() -> None:
        delay = RESTART_FIRST
        crashes = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if loop.time() - started > STEADY_AFTER:  # ran a while: a new streak
                    delay, crashes = RESTART_FIRST, 0
                crashes += 1
                if crashes == 1:
                    log.exception("%s crashed; restarting in %gs", name, delay)
                else:
                    log.error(
                        "%s crashed again (%d times in a row): %s; restarting in %gs",
                        name,
                        crashes,
                        error,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_AT_MOST)

    return asyncio.create_task(supervise(), name=name)
