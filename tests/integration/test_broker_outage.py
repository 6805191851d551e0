"""A broker that is not there is said once per task, naming RabbitMQ and AMQP_URL, never
its password; and the processes keep trying (operator review M5: 63 ERROR lines in 14 s,
none naming the broker or the setting). The "broker" is a closed port, or a RabbitMQ node of
the test's own (stopped and started again): the shared one is never stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aio_pika.robust_channel import RobustChannel
from aio_pika.tools import OneShotCallback
from aiormq.exceptions import ChannelInvalidStateError
from prometheus_client import REGISTRY

from infra.broker.outage import quiet_client_attempts
from infra.ingest.service import consume_forever, ingester, run_ingest
from infra.runtime.bootstrap import running_services, running_workers
from infra.runtime.settings import Settings, SettingsError
from infra.store.migrations import migrate
from tests.databases import create_database, drop_database
from tests.own_logs import ours
from tests.rabbit_node import RabbitNode
from tests.servers import settings_for

PASSWORD = "s3cret-pw"
NO_TRANSPORT = "No active transport in channel"  # (aio_pika/channel.py, Channel._open)
OUTAGE = 5.0  # seconds of outage watched


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of this module's own: these tests count every warning said, and the run's
    shared database holds other tests' entries, among them one made unreadable on purpose
    (the election feed says so: a line more, in whichever test comes after it)."""
    url = create_database("cardinal_broker_outage")
    migrate(url)
    yield url
    drop_database(url)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # nothing listens there now: connection refused


async def test_a_broker_outage_is_said_once_per_task_naming_amqp_url(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = _closed_port()
    url = f"amqp://guest:{PASSWORD}@127.0.0.1:{port}/"
    settings = settings_for(database_url, amqp_url=url, namespace=f"test-{uuid.uuid4().hex[:8]}")
    caplog.set_level(logging.INFO)
    async with (
        running_workers(settings, relay=True, projections=("tally", "catalog", "statistics")),
        running_services(settings) as services,
    ):
        consumer = asyncio.create_task(
            consume_forever(ingester(settings, services.app, services.voter_keys))
        )
        try:
            await asyncio.sleep(OUTAGE)
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
    # Counted: what this test's stack said (tests/own_logs.py), not the worker's session
    # API stack also running on this loop (its sealer's warning and reconnect when
    # PostgreSQL ended its idle session while a sync test held the loop: CI, 7 <= 6).
    own = ours(caplog)
    records = [r for r in own if r.levelno >= logging.WARNING]
    said = [f"{r.name}: {r.getMessage()}" for r in records]
    assert not any(PASSWORD in r.getMessage() for r in caplog.records), said
    # One line for each task that connects: the relay, three projections, the ingest
    # consumer and the services' broker monitor (the old code: dozens, aiormq's ERRORs
    # among them), and aio-pika's INFO line per closed robust connection (backed off).
    assert len(records) <= 6, "\n".join(said)
    assert len(own) <= 20, "\n".join(r.getMessage() for r in own)
    assert all(r.levelno == logging.WARNING for r in records), said
    for who in ("relay", "projection tally", "projection statistics", "ingest", "api"):
        lines = [s for s in said if f": {who}: cannot reach" in s]
        assert len(lines) == 1, (who, said)
        assert f"RabbitMQ at 127.0.0.1:{port} (AMQP_URL): connection refused" in lines[0]


async def test_a_standalone_ingest_names_itself_in_its_broker_monitors_lines(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`cardinal ingest`'s broker monitor said "api: cannot reach ..." and set
    cardinal_broker_connected{component="api"} (documentation review): it is the ingest's."""
    port = _closed_port()
    settings = settings_for(
        database_url,
        amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/",
        namespace=f"test-{uuid.uuid4().hex[:8]}",
    )
    caplog.set_level(logging.INFO)
    ingest = asyncio.create_task(run_ingest(settings, metrics_port=None))
    try:
        await asyncio.sleep(2.0)
    finally:
        ingest.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingest
    said = [f"{r.name}: {r.getMessage()}" for r in ours(caplog) if r.levelno >= logging.WARNING]
    assert not any(": api: cannot reach" in line for line in said), said
    # One warning for the process (the old code: the consumer's and the monitor's, both
    # "ingest: cannot reach ..."): the consumer's.
    assert [line for line in said if "cannot reach" in line] == [
        f"infra.ingest.consumer: ingest: cannot reach RabbitMQ at 127.0.0.1:{port} (AMQP_URL): "
        "connection refused; retrying every 1-10s until it answers"
    ], said
    assert REGISTRY.get_sample_value("cardinal_broker_connected", {"component": "ingest"}) == 0
    # "consuming <queue>" was logged before the consumer had connected (operator review L6).
    consuming = [_text(r) for r in caplog.records if _text(r).startswith("consuming ")]
    assert not consuming, consuming


TASKS = ("relay", "projection tally", "projection catalog", "projection statistics", "api")


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitNode]:
    """A RabbitMQ node of this module's own (one: a start costs 5-10 s), to stop and start."""
    with RabbitNode(Path(tempfile.mkdtemp(prefix="cardinal-outage-mq-"))) as own:
        yield own


def _gauge(component: str) -> float | None:
    return REGISTRY.get_sample_value("cardinal_broker_connected", {"component": component})


def _text(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # (aio-pika's repr of a finished callback raises)
        return str(record.msg)


async def _until(done: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_a_broker_lost_mid_run_is_said_once_per_task_and_its_return_once(
    database_url: str, node: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that goes away while every task is connected: each says so once (the old
    code: twice, "connection lost" or CONNECTION_FORCED, then "connection refused"; and
    ingest never, its robust connection reconnecting silently, only its depth watcher
    warning without naming RabbitMQ), and once that it is back."""
    settings = settings_for(
        database_url, amqp_url=node.url, namespace=f"test-{uuid.uuid4().hex[:8]}"
    )
    where = f"RabbitMQ at 127.0.0.1:{node.port} (AMQP_URL)"
    tasks = (*TASKS, "ingest")
    caplog.set_level(logging.INFO)

    def said(level: int, text: str) -> dict[str, int]:
        return {
            who: sum(
                1
                for r in caplog.records
                if r.levelno == level and _text(r).startswith(f"{who}: {text}")
            )
            for who in tasks
        }

    async with (
        running_workers(
            settings, relay=True, projections=("tally", "catalog", "statistics")
        ) as workers,
        running_services(settings) as services,
    ):
        consumer = ingester(settings, services.app, services.voter_keys)
        consuming = asyncio.create_task(consume_forever(consumer))
        try:
            assert workers.relay is not None
            assert services.broker is not None
            relay, monitor = workers.relay, services.broker
            assert await _until(
                lambda: (
                    relay.status.broker_connected
                    and monitor.connected
                    and consumer.ready.is_set()
                    and all(w.status.broker_connected for w in workers.projections)
                ),
                30,
            ), caplog.text
            caplog.clear()
            await asyncio.to_thread(node.stop)
            # No entry to publish: the relay, idle, notices the lost connection as it closes
            # (the old code: at its next publish, its status and gauge "connected" till then).
            # Each task's first attempt after the loss meets "connection refused" (the old
            # code's second WARNING); ingest's warning never came with the old code.
            await _until(lambda: all(said(logging.WARNING, f"cannot reach {where}").values()), 10)
            assert not relay.status.broker_connected, caplog.text
            assert _gauge("relay") == 0, caplog.text
            await asyncio.sleep(3)
            await asyncio.to_thread(node.start)
            await _until(lambda: all(said(logging.INFO, f"{where} reachable again").values()), 30)
            assert await _until(lambda: relay.status.broker_connected, 10), caplog.text
            assert _gauge("relay") == 1
        finally:
            consuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consuming
    lines = "\n".join(f"{r.levelname} {r.name}: {_text(r)}" for r in caplog.records)
    assert said(logging.WARNING, f"cannot reach {where}") == dict.fromkeys(tasks, 1), lines
    assert said(logging.INFO, f"{where} reachable again") == dict.fromkeys(tasks, 1), lines
    # Nothing else from ingest at WARNING: its depth watcher's failure is the same outage.
    assert not [r for r in caplog.records if "depth" in _text(r) and r.levelno >= 30], lines
    # Nor aiormq's ERROR and traceback per connection the stopping broker closed.
    assert not [r for r in caplog.records if r.name.startswith("aiormq")], lines


async def test_a_standalone_ingest_says_a_broker_lost_mid_run_once_and_its_return_once(
    database_url: str, node: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    """`cardinal ingest` runs its consumer and a broker monitor, both named "ingest": one
    outage was two warnings and two returns (and the monitor's "broker connected"). Now one
    of each for the process, and the monitor still keeps the state and gauge."""
    settings = settings_for(
        database_url, amqp_url=node.url, namespace=f"test-{uuid.uuid4().hex[:8]}"
    )
    where = f"RabbitMQ at 127.0.0.1:{node.port} (AMQP_URL)"
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="aio_pika.tools")  # (its tracebacks are DEBUG)
    ingest = asyncio.create_task(run_ingest(settings, metrics_port=None))
    try:
        assert await _until(lambda: _gauge("ingest") == 1 and "consuming" in caplog.text, 30), (
            caplog.text
        )
        await asyncio.sleep(1)  # (both connected: the consumer and the monitor)
        caplog.clear()
        await asyncio.to_thread(node.stop)
        assert await _until(lambda: _gauge("ingest") == 0 and "cannot reach" in caplog.text, 10)
        await asyncio.sleep(3)  # (a second warning, if any, said by now: attempts each 1-2 s)
        await asyncio.to_thread(node.start)
        assert await _until(lambda: "reachable again" in caplog.text, 30), caplog.text
        assert await _until(lambda: _gauge("ingest") == 1, 10), caplog.text
        await asyncio.sleep(3)  # (a second return, if any, said by now)
    finally:
        ingest.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingest
    # This test's ingest's lines (tests/own_logs.py), not the session API stack's, also on
    # this loop; and the client libraries' in any case (their callbacks' context aside).
    own = [r for r in ours(caplog) if r.name[:6] == "infra."]
    text = "\n".join(f"{r.levelname} {r.name}: {_text(r)}" for r in caplog.records)
    lost = [f"{r.levelname} {r.name}: {_text(r)}" for r in own if "cannot reach" in _text(r)]
    assert len(lost) == 1, text
    assert lost[0].startswith(f"WARNING infra.ingest.consumer: ingest: cannot reach {where}: "), (
        text
    )
    assert [
        f"{r.levelname} {r.name}: {_text(r)}"
        for r in own
        if "reachable again" in _text(r) or "connected" in _text(r)
    ] == [f"INFO infra.ingest.consumer: ingest: {where} reachable again"], text
    # No ERROR, and no traceback, for an outage the process handles (the old code: aio-pika's
    # "Callback <RobustChannel._on_close> error: RuntimeError: <Connection ...> closed", an
    # ERROR, and its traceback at DEBUG, as the robust channel tried to reopen on the
    # connection the stopping broker had closed).
    checked = ours(caplog) + [
        r for r in caplog.records if r.name.startswith(("aio", "infra.ingest"))
    ]
    assert not [r for r in checked if r.levelno >= logging.ERROR or r.exc_info], text


async def test_only_a_robust_channels_reopen_on_a_closed_connection_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aio-pika's callback errors are kept unless they are exactly a robust channel's close
    callback meeting aiormq's "<Connection ...> closed" or aio-pika's "No active transport
    in channel" (a broker going away: the latter as an ERROR in a fresh clone's run)."""
    quiet_client_attempts()
    log = logging.getLogger("aio_pika.tools")
    caplog.set_level(logging.DEBUG, logger="aio_pika.tools")
    closed = RuntimeError('<Connection: "amqp://guest:******@127.0.0.1:5672/" at 0x1> closed')

    async def other(*_: object) -> None:
        pass

    channel = RobustChannel.__new__(RobustChannel)  # (never opened: only its bound method)
    cases = [
        (OneShotCallback(channel._on_close), closed, False),
        (OneShotCallback(channel._on_close), RuntimeError("something else"), True),
        (OneShotCallback(channel._on_close), ValueError("x closed"), True),
        (OneShotCallback(channel._on_close), ChannelInvalidStateError(NO_TRANSPORT), False),
        (OneShotCallback(channel._on_close), ChannelInvalidStateError("other"), True),
        (OneShotCallback(other), ChannelInvalidStateError(NO_TRANSPORT), True),
        (OneShotCallback(other), closed, True),
    ]
    for callback, error, kept in cases:
        caplog.clear()
        log.error("Callback %r error: %s: %s", callback, type(error).__name__, error)
        try:
            raise error
        except Exception:
            log.debug("Full traceback for callback %r error", callback, exc_info=True)
        assert len(caplog.records) == (2 if kept else 0), (error, caplog.text)


def test_aio_pikas_line_per_lost_connection_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """aio-pika's INFO "Connection to ... closed. Reconnecting after 5 seconds." came once
    per reconnect attempt while the broker restarted (operator review L1): the README says
    an outage is said once per task; its other lines are kept."""
    quiet_client_attempts()
    log = logging.getLogger("aio_pika.robust_connection")
    caplog.set_level(logging.DEBUG, logger="aio_pika.robust_connection")
    url = "amqp://guest:******@127.0.0.1:5672/"
    log.info("Connection to %s closed. Reconnecting after %r seconds.", url, 5)
    log.warning(
        'Connection attempt to "%s" failed: %s. Reconnecting after %r seconds.', url, "x", 5
    )
    assert not caplog.records, caplog.text
    log.debug("Connection made on %r", url)
    log.exception("Failed to execute close callbacks for %s", url)
    assert len(caplog.records) == 2, caplog.text


@pytest.mark.parametrize(
    "url", ["http://guest:s3cret-pw@127.0.0.1:5672/", "guest:s3cret-pw@127.0.0.1:5672", "redis://x"]
)
def test_an_amqp_url_that_is_not_amqp_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"AMQP_URL": url})
    said = str(refused.value)
    assert said.startswith("AMQP_URL must be a RabbitMQ URL, amqp://")
    assert "s3cret-pw" not in said


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672/", "amqps://u:p@host/vhost"])
def test_amqp_and_amqps_urls_are_taken(url: str) -> None:
    assert Settings.from_env({"AMQP_URL": url}).amqp_url == url
