"""Which errors a read is read again for, and that it is read again once, and only a read."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests
from starlette.requests import Request
from starlette.responses import Response

from api import again
from infra.store import reconnect


@pytest.mark.parametrize(
    ("error", "read_again"),
    [
        (errors.AdminShutdown("terminating connection due to administrator command"), True),
        (errors.CrashShutdown("terminating connection because of crash"), True),
        (errors.IdleSessionTimeout("terminating connection due to idle-session timeout"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (PoolTimeout("couldn't get a connection after 0.90 sec"), False),
        (PoolClosed("the pool 'reads' is already closed"), False),
        (TooManyRequests("the pool 'reads' has already 8 requests waiting"), False),
        (errors.QueryCanceled("canceling statement due to user request"), False),
        (errors.UndefinedTable("relation does not exist"), False),
        (ValueError("not a database error"), False),
    ],
)
def test_only_a_connection_the_server_hung_up_on_is_read_again(
    error: BaseException, read_again: bool
) -> None:
    assert again.hung_up_on(error) is read_again


class _Reads:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.verifying: list[bool] = []

    async def read(self) -> str:
        self.verifying.append(reconnect._verifying())
        if self.failures:
            raise self.failures.pop(0)
        return "answer"


async def test_read_again_once_with_each_lent_connection_tested() -> None:
    reads = _Reads(errors.AdminShutdown("terminating"))
    assert await again.once_more(reads.read, lambda: True) == "answer"
    assert reads.verifying == [False, True]
    assert reconnect._verifying() is False  # (only for the second read)

    reads = _Reads(errors.AdminShutdown("terminating"), errors.AdminShutdown("again"))
    with pytest.raises(errors.AdminShutdown, match="again"):
        await again.once_more(reads.read, lambda: True)
    assert len(reads.verifying) == 2


async def test_not_read_again_while_the_store_is_marked_down() -> None:
    reads = _Reads(errors.AdminShutdown("terminating"))
    with pytest.raises(errors.AdminShutdown):
        await again.once_more(reads.read, lambda: False)
    assert reads.verifying == [False]


def _request(method: str) -> Request:
    return Request(
        {"type": "http", "method": method, "path": "/", "headers": [], "query_string": b""}
    )


async def test_a_write_is_never_done_again() -> None:
    calls: list[str] = []

    async def endpoint(request: Request) -> Response:
        calls.append(request.method)
        raise errors.AdminShutdown("terminating")

    wrapped: Any = again.read_again(endpoint)
    with pytest.raises(errors.AdminShutdown):
        await wrapped(_request("POST"))
    assert calls == ["POST"]


class _Lent:
    """A connection as the reads pool is lent one, alive, with the tests asked of it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tested = 0
        self.conn = object()

        async def lent(pool: Any, timeout: float) -> object:  # noqa: ASYNC109 (the pool's)
            return self.conn

        async def answers(conn: object, *within: float) -> bool:
            self.tested += 1
            return True

        monkeypatch.setattr(AsyncConnectionPool, "_getconn_unchecked", lent)
        monkeypatch.setattr(reconnect, "hung_up", lambda conn: False)
        monkeypatch.setattr(reconnect, "_answers", answers)
        self.pool = reconnect.ReconnectingPool("", open=False)

    async def lend(self) -> None:
        assert await self.pool._getconn_unchecked(1.0) is self.conn


async def test_a_task_started_by_a_read_read_again_tests_no_lend_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task started during the second read (the positions' fallback poll, by a read that
    waited for a position) kept the test for every lend of its life: a round trip a poll."""
    lent = _Lent(monkeypatch)
    later = asyncio.Event()
    started: list[asyncio.Task[None]] = []
    tested_while_read: list[int] = []

    async def outliving() -> None:
        await lent.lend()  # while the read lasts: tested
        tested_while_read.append(lent.tested)
        await later.wait()
        await lent.lend()  # after it: not

    async def read() -> str:
        if not started:
            started.append(asyncio.create_task(asyncio.sleep(0)))
            raise errors.AdminShutdown("terminating")
        started.append(asyncio.create_task(outliving()))
        await asyncio.sleep(0)  # (it lends now)
        await lent.lend()  # the second read's own: tested
        return "answer"

    assert await again.once_more(read, lambda: True) == "answer"
    assert tested_while_read == [1]
    later.set()
    await asyncio.gather(*started)
    assert lent.tested == 2  # the second read's lend and the task's while it lasted


async def test_a_task_a_read_read_again_starts_and_awaits_tests_its_lends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read's lends in a task of its own (a shared turn, a deadline's) are tested too."""
    lent = _Lent(monkeypatch)
    reads = _Reads(errors.AdminShutdown("terminating"))

    async def read() -> str:
        await asyncio.create_task(lent.lend())
        return await reads.read()

    assert await again.once_more(read, lambda: True) == "answer"
    assert lent.tested == 1  # (the first read's lend untested, the second's tested)
    await lent.lend()
    assert lent.tested == 1
