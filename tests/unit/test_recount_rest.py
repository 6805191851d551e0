"""The rest owed by time travel's limited turn (api/recounts.py::run_shared), on clocks of
the test's own: a recount's wall and CPU time are what the test says, never this machine's
load, and a reader that waits out a Retry-After moves them forward instead of sleeping."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from api import recounts
from domain.errors import NotFound


@dataclass
class Clocks:
    """The recounts' wall clock and the process's CPU clock, standing still unless moved."""

    wall: float = 1_000.0
    cpu: float = 50.0

    def run(self, seconds: float, cpu: float | None = None) -> None:
        """A recount's work: ``seconds`` of wall time, all of it CPU unless ``cpu`` says."""
        self.wall += seconds
        self.cpu += seconds if cpu is None else cpu

    def wait(self, seconds: float) -> None:
        """A reader waiting (a Retry-After): time passes, no CPU is spent."""
        self.wall += seconds


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Clocks:
    found = Clocks()
    monkeypatch.setattr(recounts, "clock", lambda: found.wall)
    # (raising=False: the rest waited out in the turn, before the merge review of 3fd17ef,
    # had neither; its tests fail on their assertions.)
    monkeypatch.setattr(recounts, "cpu_clock", lambda: found.cpu, raising=False)
    monkeypatch.setattr(recounts, "REST_FACTOR", 3.0)
    monkeypatch.setattr(recounts, "BURST", 3.0, raising=False)
    monkeypatch.setattr(recounts, "RECOUNT_WAIT", 1.0)
    return found


def _services() -> Any:
    return SimpleNamespace(
        recounts={},
        recounting=asyncio.Lock(),
        recounting_for_roles=asyncio.Lock(),
        recounts_rest_until=0.0,
    )


def _taking(
    clocks: Clocks, seconds: float, answer: str = "counted", cpu: float | None = None
) -> Any:
    async def work() -> str:
        await asyncio.sleep(0)  # (the loop runs others meanwhile, as a recount lets it)
        clocks.run(seconds, cpu)
        return answer

    return work


async def _ask(services: Any, key: str | int, work: Any) -> str | HTTPException:
    """The limited turn's answer, or its refusal."""
    try:
        answer: str = await recounts.run_shared(services, key, work, role=False)
    except HTTPException as refused:
        return refused
    return answer


def _owed(services: Any, clocks: Clocks) -> float:
    return float(services.recounts_rest_until) - clocks.wall


async def test_small_recounts_asked_at_once_by_many_readers_are_all_answered(
    clocks: Clocks,
) -> None:
    """Twenty readers asking distinct positions at once, each recount 50 ms: all twenty
    answered. The rest was waited out holding the turn, so readers queued for it ran out
    their wait (a second): 6 answered, 14 refused "a recount is running" while none ran
    (merge review of 3fd17ef)."""
    services = _services()
    asked = [
        recounts.run_shared(services, ("at", n), _taking(clocks, 0.05, f"at {n}"), role=False)
        for n in range(20)
    ]
    answers = await asyncio.gather(*asked, return_exceptions=True)
    assert answers == [f"at {n}" for n in range(20)]
    # They owe their rest all the same: 4 x 1 s of recounting, 1 s of it gone by.
    assert _owed(services, clocks) == pytest.approx(3.0)


async def test_a_reader_recounting_back_to_back_is_answered_a_few_times_then_held_to_a_quarter(
    clocks: Clocks,
) -> None:
    """A reader asking a new position as soon as answered, 400 ms recounts: the first three
    are answered at once (it was answered once, then refused four times: merge review of
    3fd17ef); then, waiting out each Retry-After, it gets about a quarter of a core, and
    never more, in the long run."""
    services = _services()
    waited: list[str] = []
    for n in range(3):
        assert await recounts.run_shared(services, n, _taking(clocks, 0.4), role=False)
    assert _owed(services, clocks) == pytest.approx(3 * 1.6 - 3 * 0.4)
    began, spent = clocks.wall, 0.0
    for n in range(3, 103):
        while isinstance(answer := await _ask(services, n, _taking(clocks, 0.4)), HTTPException):
            assert answer.status_code == 503
            assert answer.headers is not None
            waited.append(answer.headers["Retry-After"])
            assert f"retry in {waited[-1]} s" in answer.detail
            clocks.wait(float(waited[-1]))
        spent += 0.4
    assert waited[0] == "1"  # 3.6 s owed, 3 may be: in 0.6 s
    share = spent / (clocks.wall - began)
    assert 0.22 < share <= 0.25


async def test_a_recount_that_failed_owes_its_rest_as_one_that_answered(
    clocks: Clocks,
) -> None:
    """Its CPU was spent all the same: a 404 after a replay must not be free to repeat.
    And it is refused at once, while the Retry-After has not passed."""
    services = _services()

    async def failing() -> str:
        clocks.run(2.0)
        raise NotFound("not there")

    with pytest.raises(NotFound):
        await recounts.run_shared(services, "a", failing, role=False)
    assert _owed(services, clocks) == pytest.approx(6.0)  # 4 x 2 s from its start, 2 gone
    with pytest.raises(HTTPException) as refused:
        await recounts.run_shared(services, "b", _taking(clocks, 0.0), role=False)
    assert refused.value.status_code == 503
    assert refused.value.headers == {"Retry-After": "3"}
    assert "3 times as long as it took" in refused.value.detail
    assert "retry in 3 s" in refused.value.detail
    clocks.wait(2.5)
    with pytest.raises(HTTPException) as again:
        await recounts.run_shared(services, "b", _taking(clocks, 0.0), role=False)
    assert again.value.headers == {"Retry-After": "1"}
    clocks.wait(0.5)
    assert await recounts.run_shared(services, "b", _taking(clocks, 0.0), role=False) == "counted"


async def test_a_recount_owes_its_cpu_time_not_its_waiting_and_at_most_its_wall_time(
    clocks: Clocks,
) -> None:
    """Waiting for a pool connection, the database or the thread pool costs the process no
    CPU: a cheap recount that waited 5 s owes its 0.1 s of CPU, not 5 s (wall time made
    the turn rest longest when the process was busiest). The CPU the process spent in other
    threads meanwhile is charged up to the recount's wall time, never beyond."""
    services = _services()
    started = clocks.wall
    await recounts.run_shared(services, "a", _taking(clocks, 5.0, cpu=0.1), role=False)
    assert services.recounts_rest_until == pytest.approx(started + 4 * 0.1)
    started = clocks.wall
    await recounts.run_shared(services, "b", _taking(clocks, 0.5, cpu=1.5), role=False)
    assert services.recounts_rest_until == pytest.approx(started + 4 * 0.5)


async def test_auditors_never_owe_and_are_never_refused(clocks: Clocks) -> None:
    """Auditors' and admins' turn has no rest at all, and does not add to the other's."""
    services = _services()
    services.recounts_rest_until = clocks.wall + 100.0
    assert await recounts.run_shared(services, "c", _taking(clocks, 5.0), role=True) == "counted"
    assert services.recounts_rest_until == clocks.wall - 5.0 + 100.0  # untouched by it


async def test_a_request_identical_to_the_recount_running_joins_it_even_while_owing(
    clocks: Clocks,
) -> None:
    """The rest refuses new recounts, not the readers of one already under way."""
    services = _services()
    started, release = asyncio.Event(), asyncio.Event()

    async def held() -> str:
        started.set()
        await release.wait()
        clocks.run(2.0)
        return "held"

    first = asyncio.create_task(recounts.run_shared(services, "a", held, role=False))
    await asyncio.wait_for(started.wait(), 5)
    began = clocks.wall
    services.recounts_rest_until = clocks.wall + 50.0  # (as if others had just ended)
    joined = asyncio.create_task(recounts.run_shared(services, "a", held, role=False))
    with pytest.raises(HTTPException) as refused:
        await recounts.run_shared(services, "b", _taking(clocks, 0.0), role=False)
    assert refused.value.headers == {"Retry-After": "47"}  # 50 s owed, 3 may be
    release.set()
    assert await first == await joined == "held"
    assert services.recounts_rest_until == began + 50.0 + 8.0
