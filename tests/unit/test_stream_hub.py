"""The stream hub shares a view's first build among everyone who asks while it runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.streams import StreamHub


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
