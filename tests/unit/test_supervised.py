"""A component that keeps crashing is restarted ever less often, and logged briefly."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from infra.runtime import bootstrap
from tests.own_logs import ours


async def test_a_component_that_keeps_crashing_backs_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bootstrap, "RESTART_FIRST", 0.01)
    monkeypatch.setattr(bootstrap, "RESTART_AT_MOST", 0.04)
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    sixth = asyncio.Event()

    async def broken() -> None:
        starts.append(loop.time())
        if len(starts) == 6:
            sixth.set()
        raise OSError("address already in use")

    caplog.set_level(logging.INFO, logger=bootstrap.__name__)
    task = bootstrap._supervised("metrics", broken)
    await asyncio.wait_for(sixth.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps[0] >= 0.01
    assert gaps[2] >= 0.04  # doubled twice, then held at the ceiling
    assert all(gap >= 0.04 for gap in gaps[2:])
    # This component's: the session API stack's supervised tasks, on this loop too, log
    # through the same logger (tests/own_logs.py).
    records = [r for r in ours(caplog) if r.getMessage().startswith("metrics crashed")]
    assert records[0].exc_info is not None  # the first crash: its traceback
    assert all(r.exc_info is None for r in records[1:])  # then a line each
    assert "crashed again (2 times in a row): address already in use" in records[1].getMessage()
