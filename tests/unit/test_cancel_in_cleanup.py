"""A stop's cancel that comes while a part cancels and awaits an inner task of its own is
not swallowed with the inner task's (merge review of 832b7c2): it was, in the relay's
``_unless_lost`` (the relay then carried on as after a broker outage) and in
``leader_session``'s end (the leader carried on)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from infra.broker import relay
from infra.store import leader


class _SlowToEnd:
    """An inner task's body that, cancelled, ends only once released."""

    def __init__(self) -> None:
        self.ending = asyncio.Event()
        self.released = asyncio.Event()

    async def run(self, *args: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.ending.set()
            await self.released.wait()
            raise


async def _cancelled_while_ending(outer: asyncio.Task[None], inner: _SlowToEnd) -> None:
    await asyncio.wait_for(inner.ending.wait(), 5)
    outer.cancel()  # the stop's cancel, as the part awaits its inner task's end
    await asyncio.sleep(0)
    inner.released.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 5)
    assert outer.cancelled()


async def test_the_relays_stop_is_not_taken_for_a_lost_broker() -> None:
    work = _SlowToEnd()
    lost: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    outer = asyncio.ensure_future(relay._unless_lost(work.run(), lost))
    await asyncio.sleep(0)
    lost.set_result(ConnectionResetError("broker gone"))
    await _cancelled_while_ending(outer, work)


class _Connection:
    closed = broken = False

    async def execute(self, *args: Any) -> None:
        return None


async def test_a_leaders_stop_is_not_swallowed_at_its_sessions_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keep_alive = _SlowToEnd()
    monkeypatch.setattr(leader, "_keep_alive", keep_alive.run)

    async def lead() -> None:
        async with leader.leader_session(_Connection()):  # type: ignore[arg-type]
            await asyncio.sleep(0)
        await asyncio.sleep(3600)  # carried on

    outer = asyncio.ensure_future(lead())
    await _cancelled_while_ending(outer, keep_alive)
