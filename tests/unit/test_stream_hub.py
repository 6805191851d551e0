"""The stream hub shares a view's first build among everyone who asks while it runs, and
stops within its bound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from api.streams import HUB_STOP, StreamHub


async def _never_changes(seen: int, patience: float) -> int:
    await asyncio.sleep(patience)
    return seen


async def test_a_reconnection_storm_builds_each_view_once() -> None:
    hub = StreamHub(_never_changes)
    builds = 0
    release = asyncio.Event()

    async def build() -> tuple[int, dict[str, Any]]:
        nonlocal builds
        builds += 1
        await release.wait()  # a slow read: every subscriber arrives while it runs
        return 7, {"ballots": 3}

    storm = [asyncio.create_task(hub.subscribe("view", build)) for _ in range(300)]
    await asyncio.sleep(0.01)
    release.set()
    subscribed = await asyncio.gather(*storm)
    try:
        assert builds == 1
        assert {current for _, current in subscribed} == {(7, b'{"ballots":3}')}
        assert hub.subscribers == 300
    finally:
        await hub.stop()


async def test_a_failed_first_build_is_tried_again_by_the_next_subscriber() -> None:
    hub = StreamHub(_never_changes)
    outcomes: list[Exception | None] = [OSError("the store is away"), None]

    async def build() -> tuple[int, dict[str, Any]]:
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return 1, {}

    with pytest.raises(OSError, match="away"):
        await hub.subscribe("view", build)
    assert hub.views == {}  # nobody watches it: not kept
    _, current = await hub.subscribe("view", build)
    assert current == (1, b"{}")
    await hub.stop()


async def _changes_at_once(seen: int, patience: float) -> int:
    await asyncio.sleep(0.01)
    return seen + 1


async def test_a_hub_whose_build_lost_its_cancel_stops_within_its_bound() -> None:
    """On Python 3.11 a cancel that comes as an ``asyncio.wait_for`` completes is lost
    (CPython gh-86296), and psycopg_pool lends its connections with one: a hub reading the
    store as the shutdown came carried on, and its stop (a cancel, then an await with no
    bound) held the process's shutdown for ever. It is cancelled again, and bounded."""
    hub = StreamHub(_changes_at_once)
    building = asyncio.Event()
    lost: list[str] = []
    builds = 0

    async def build() -> tuple[int, dict[str, Any]]:
        nonlocal builds
        builds += 1
        if builds == 1:  # the first snapshot
            return builds, {}
        building.set()
        try:
            await asyncio.sleep(3600)  # a read of the store, under way
        except asyncio.CancelledError:
            if lost:
                raise
            lost.append("first cancel")  # swallowed, as wait_for's result came with it
        return builds, {"build": builds}

    await hub.subscribe("view", build)
    await asyncio.wait_for(building.wait(), 5)
    stopping = asyncio.ensure_future(hub.stop())
    try:
        done, _ = await asyncio.wait({stopping}, timeout=HUB_STOP + 2)
        assert done, "the hub's stop waited for ever for a build that lost its cancel"
        assert lost == ["first cancel"]
        assert hub._task is not None
        assert hub._task.done()
    finally:
        if hub._task is not None:
            hub._task.cancel()


async def test_a_hub_that_never_ends_is_left_behind_within_its_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = StreamHub(_changes_at_once)
    building = asyncio.Event()
    released = False
    builds = 0

    async def build() -> tuple[int, dict[str, Any]]:
        nonlocal builds
        builds += 1
        if builds == 1:  # the first snapshot
            return 1, {}
        building.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if released:
                    raise

    await hub.subscribe("view", build)
    await asyncio.wait_for(building.wait(), 5)
    started = time.monotonic()
    try:
        await asyncio.wait_for(hub.stop(), HUB_STOP + 2)
        assert time.monotonic() - started < HUB_STOP + 0.5
        assert "stopping the stream hub took over" in caplog.text
    finally:
        released = True
        if hub._task is not None:
            hub._task.cancel()
