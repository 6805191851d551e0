"""Which errors a read is read again for, and that it is read again once, and only a read."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response

from api import again
from infra.store import reconnect


@pytest.mark.parametrize(
    ("error", "read_again"),
    [
        (errors.AdminShutdown("terminating connection due to administrator command"), True),
        (errors.CrashShutdown("terminating connection because of crash"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (PoolTimeout("couldn't get a connection after 0.90 sec"), False),
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
        self.verifying.append(reconnect.verifying.get())
        if self.failures:
            raise self.failures.pop(0)
        return "answer"


async def test_read_again_once_with_each_lent_connection_tested() -> None:
    reads = _Reads(errors.AdminShutdown("terminating"))
    assert await again.once_more(reads.read, lambda: True) == "answer"
    assert reads.verifying == [False, True]
    assert reconnect.verifying.get() is False  # (only for the second read)

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
