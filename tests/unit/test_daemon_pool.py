"""Blocking reads off the loop on daemon threads that are kept for the next read."""

from __future__ import annotations

import asyncio
import threading

import pytest

from infra.store.daemon_pool import DaemonPool


async def test_reads_one_after_another_reuse_one_thread() -> None:
    """A thread per read cost about as much as a short read (review of fix-shut)."""
    pool = DaemonPool("test lookup", size=4)
    loop = asyncio.get_running_loop()
    seen = {await pool.run(loop, threading.current_thread) for _ in range(50)}
    assert len(seen) == 1
    (thread,) = seen
    assert thread.daemon  # a read stuck on a hung store does not hold the process at exit
    assert thread is not threading.current_thread()


async def test_busy_threads_are_at_most_its_size_and_every_read_is_answered() -> None:
    pool = DaemonPool("test lookup", size=3)
    loop = asyncio.get_running_loop()
    release = threading.Event()
    running: set[threading.Thread] = set()

    def held(n: int) -> int:
        running.add(threading.current_thread())
        release.wait(10)
        return n

    reads = [pool.run(loop, held, n) for n in range(10)]
    await asyncio.sleep(0)  # (the reads are queued; nothing waits on the loop)
    release.set()
    assert await asyncio.gather(*reads) == list(range(10))
    assert len(running) <= 3


async def test_an_error_reaches_the_caller_and_a_given_up_read_is_dropped() -> None:
    pool = DaemonPool("test lookup", size=2)
    loop = asyncio.get_running_loop()

    def fails() -> None:
        raise LookupError("not in the log")

    with pytest.raises(LookupError, match="not in the log"):
        await pool.run(loop, fails)
    gate = threading.Event()
    abandoned = pool.run(loop, gate.wait, 10)
    abandoned.cancel()  # the caller gave up (its wait timed out)
    gate.set()
    assert await pool.run(loop, lambda: "next") == "next"


async def test_a_read_sent_beside_a_slow_one_does_not_wait_for_it() -> None:
    """Two reads sent in one turn of the loop both went to the one idle thread: the second
    waited out the first, past LOOKUP_WAIT on a healthy store (review helper-69)."""
    pool = DaemonPool("test lookup", size=4)
    loop = asyncio.get_running_loop()
    assert await pool.run(loop, lambda: "warm") == "warm"  # one thread, idle
    gate = threading.Event()
    slow = pool.run(loop, gate.wait, 10)
    fast = pool.run(loop, lambda: "fast")
    try:
        assert await asyncio.wait_for(fast, 5) == "fast"
        assert not slow.done()
    finally:
        gate.set()
    assert await slow is True
