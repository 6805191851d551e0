"""tests/own_logs.py: a test's own code's records carry its id, and a session fixture's
tasks (as the session API stack's, tests/integration/conftest.py) and plain threads' none."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator

import pytest

from tests.own_logs import TEST, ours

log = logging.getLogger("tests.own_logs")


async def _say_when_asked(asked: asyncio.Queue[str]) -> None:
    while True:
        log.warning(await asked.get())
        asked.task_done()


@pytest.fixture(scope="session")
async def session_stack() -> AsyncIterator[asyncio.Queue[str]]:
    """A task started by a session fixture and running through later tests, as the
    session API stack's sealer does."""
    asked: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(_say_when_asked(asked))
    yield asked
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def own_stack() -> AsyncIterator[asyncio.Queue[str]]:
    asked: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(_say_when_asked(asked))
    yield asked
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _thread_says(text: str) -> None:
    thread = threading.Thread(target=log.warning, args=(text,))
    thread.start()
    thread.join()


async def _asked(queue: asyncio.Queue[str], text: str) -> None:
    await queue.put(text)
    await queue.join()


async def test_a_session_stack_started_in_an_earlier_test(
    session_stack: asyncio.Queue[str], own_stack: asyncio.Queue[str]
) -> None:
    """(Its first use: the session fixture is set up as this test is.)"""
    assert TEST.get() is not None


async def test_only_the_tests_own_code_is_its_own(
    session_stack: asyncio.Queue[str],
    own_stack: asyncio.Queue[str],
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    caplog.set_level(logging.INFO)
    log.warning("test")
    await _asked(own_stack, "fixture's task")
    task = asyncio.create_task(_asked(session_stack, "session's task"))
    await task
    await asyncio.create_task(asyncio.to_thread(log.warning, "to_thread"))
    await asyncio.to_thread(_thread_says, "plain thread")
    await _asked(own_stack, "fixture's task again")
    # (this file's logger: the worker's session sealer may say its session ended here, as
    # it did once in a full run, after a sync test held the loop past 30 s)
    assert [r.getMessage() for r in caplog.records if r.name == log.name] == [
        "test",
        "fixture's task",
        "session's task",
        "to_thread",
        "plain thread",
        "fixture's task again",
    ]
    assert [r.getMessage() for r in ours(caplog)] == [
        "test",
        "fixture's task",
        "to_thread",
        "fixture's task again",
    ]
    assert {getattr(r, "cardinal_test_id", None) for r in ours(caplog)} == {request.node.nodeid}


def test_a_sync_test_is_tagged_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log.warning("sync")
    _thread_says("plain thread")
    assert [r.getMessage() for r in ours(caplog)] == ["sync"]


def test_a_records_extra_may_name_test(caplog: pytest.LogCaptureFixture) -> None:
    """The tag was ``record.test``: a logging call given ``extra={"test": ...}`` (a name code
    under test may well use) raised KeyError ("Attempt to overwrite 'test' in LogRecord")
    under the test suite's record factory, and nowhere else."""
    caplog.set_level(logging.INFO)
    log.warning("with extra", extra={"test": "its own"})
    [record] = ours(caplog)
    assert getattr(record, "test", None) == "its own"
