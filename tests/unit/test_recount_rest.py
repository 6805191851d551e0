"""The rest of time travel's limited turn (api/recounts.py::run_shared), on a clock of the
test's own: a recount's duration is what the test says, never this machine's load."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from api import recounts
from domain.errors import NotFound


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The recounts' clock, standing still unless a test moves it."""
    clock = [1_000.0]
    monkeypatch.setattr(recounts, "clock", lambda: clock[0])
    monkeypatch.setattr(recounts, "REST_FACTOR", 3.0)
    monkeypatch.setattr(recounts, "RECOUNT_WAIT", 0.5)
    return clock


def _services() -> Any:
    return SimpleNamespace(
        recounts={},
        recounting=asyncio.Lock(),
        recounting_for_roles=asyncio.Lock(),
        recounts_rest_until=0.0,
    )


def _taking(now: list[float], seconds: float, answer: str = "counted") -> Any:
    async def work() -> str:
        now[0] += seconds
        return answer

    return work


async def test_a_recount_that_failed_rests_the_turn_as_long_as_one_that_answered(
    now: list[float],
) -> None:
    """Its CPU was spent all the same: a 404 after a replay must not be free to repeat."""
    services = _services()

    async def failing() -> str:
        now[0] += 1.0
        raise NotFound("not there")

    with pytest.raises(NotFound):
        await recounts.run_shared(services, "a", failing, role=False)
    with pytest.raises(HTTPException) as refused:
        await recounts.run_shared(services, "b", _taking(now, 0.0), role=False)
    assert refused.value.status_code == 503
    assert refused.value.headers == {"Retry-After": "3"}
    assert "retry in 3 s" in refused.value.detail
    now[0] += 3.0
    assert await recounts.run_shared(services, "b", _taking(now, 0.0), role=False) == "counted"


async def test_a_rest_shorter_than_the_wait_is_waited_out_and_auditors_never_rest(
    now: list[float],
) -> None:
    """A small election's recount rests for milliseconds: the next reader waits them out
    rather than get a 503. Auditors' and admins' turn has no rest at all."""
    services = _services()
    await recounts.run_shared(services, "a", _taking(now, 0.1), role=False)
    assert services.recounts_rest_until == pytest.approx(now[0] + 0.3)
    assert await recounts.run_shared(services, "b", _taking(now, 0.0), role=False) == "counted"
    services.recounts_rest_until = now[0] + 100.0
    assert await recounts.run_shared(services, "c", _taking(now, 5.0), role=True) == "counted"
    assert services.recounts_rest_until == now[0] - 5.0 + 100.0  # untouched by it


async def test_a_request_identical_to_the_recount_running_joins_it_even_while_resting(
    now: list[float],
) -> None:
    """The rest refuses new recounts, not the readers of one already under way."""
    services = _services()
    started, release = asyncio.Event(), asyncio.Event()

    async def held() -> str:
        started.set()
        await release.wait()
        now[0] += 2.0
        return "held"

    first = asyncio.create_task(recounts.run_shared(services, "a", held, role=False))
    await asyncio.wait_for(started.wait(), 5)
    services.recounts_rest_until = now[0] + 50.0  # (as if another had just ended)
    joined = asyncio.create_task(recounts.run_shared(services, "a", held, role=False))
    with pytest.raises(HTTPException) as refused:
        await recounts.run_shared(services, "b", _taking(now, 0.0), role=False)
    assert refused.value.headers == {"Retry-After": "50"}
    release.set()
    assert await first == await joined == "held"
    assert services.recounts_rest_until == now[0] + 6.0
