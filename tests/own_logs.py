"""Which log records a test's own code said. Each xdist worker keeps a session API stack
(tests/integration/conftest.py ``api_url``: sealer, projections, election feed ...) running
on its event loop through the tests after the first that asks for it, and a test that counts
records by level alone also counts that stack's lines: its sealer's warning and reconnect
after PostgreSQL ended its idle session while a sync test held the loop, for one.

tests/conftest.py sets TEST to the running test's node id around each test, and the record
factory installed for the session copies it onto every record as ``cardinal_test_id`` (a
name no logging call's ``extra`` uses: ``makeRecord`` refuses to overwrite an attribute the
record has, and ``test`` made ``extra={"test": ...}`` raise KeyError). Tasks take a copy
of the context they are created in, so what the test, its function fixtures and the tasks
they start say carries the test's id; the session stack's tasks, created in a session
fixture's context before any test's was set, carry none. Neither do records said in a plain
threading.Thread (a writer's thread: it starts with an empty context); asyncio.to_thread
copies the context, so those do."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

import pytest

TEST: ContextVar[str | None] = ContextVar("cardinal_test", default=None)


def tagging(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A record factory that makes records with ``make`` and marks them with TEST."""

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        record.cardinal_test_id = TEST.get()
        return record

    return factory


def said_in(record: logging.LogRecord, test: str | None) -> bool:
    return test is not None and getattr(record, "cardinal_test_id", None) == test


def ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The captured records said by the running test's own code (see above)."""
    test = TEST.get()
    assert test is not None, "ours() outside a test: tests/conftest.py sets TEST per test"
    return [r for r in caplog.records if said_in(r, test)]
