"""The ingest consumer's prefetch, sized in ballots (``_Window``): the rule, and ``_resize``
retrying what was cut short against a fake broker; the real broker's side is in
tests/integration/test_ingest_held.py and test_ingest_window.py."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from infra.ingest.consumer import Ingester, _Window


def test_it_starts_at_two_of_the_largest_messages_and_narrows_to_at_least_two() -> None:
    window = _Window(budget=10_000, most=1000)
    assert window.size == 2
    assert not window.saw(10_000)  # two of the largest: as it is
    assert window.size == 2


def test_it_doubles_as_small_messages_fill_whole_windows_up_to_the_prefetch() -> None:
    window = _Window(budget=10_000, most=1000)
    sizes = []
    for _ in range(5000):
        if window.saw(1):
            sizes.append(window.size)
    assert sizes == [4, 8, 16, 32, 64, 128, 256, 512, 1000]


def test_a_larger_message_narrows_it_at_once_to_the_budget() -> None:
    window = _Window(budget=10_000, most=1000)
    while window.size < 1000:
        window.saw(1)
    assert window.saw(100)
    assert window.size == 100  # 100 messages of 100: the budget
    assert window.saw(5000)
    assert window.size == 2
    assert not window.saw(100)  # a whole window must come small before it widens
    assert window.saw(100)
    assert window.size == 4


def test_a_prefetch_of_one_is_kept() -> None:
    window = _Window(budget=10_000, most=1)
    assert window.size == 1
    assert not window.saw(1)


class _Broker:
    """A channel and a queue as ``_resize`` uses them: each call fails while it is told to
    (``failing``: how many more times), else does what the broker would."""

    def __init__(self) -> None:
        self.prefetch = 2
        self.consumers: dict[str, int] = {"first": 2}  # tag: its prefetch
        self.failing = {"set_qos": 0, "cancel": 0}

    def _fails(self, call: str) -> None:
        if self.failing[call]:
            self.failing[call] -= 1
            raise TimeoutError(f"{call} cut short (test)")

    async def set_qos(self, prefetch_count: int) -> None:
        self._fails("set_qos")
        self.prefetch = prefetch_count

    async def consume(self, callback: Any, consumer_tag: str, **_: Any) -> str:
        self.consumers[consumer_tag] = self.prefetch
        return consumer_tag

    async def cancel(self, consumer_tag: str, **_: Any) -> None:
        self._fails("cancel")
        self.consumers.pop(consumer_tag, None)


def _ingester(broker: _Broker) -> Ingester:
    ingester = Ingester(cast(Any, None), cast(Any, None), "amqp://", "q", prefetch=64, batch=1000)
    ingester._channel = cast(Any, broker)
    ingester._queue = cast(Any, broker)
    ingester._consumer_tag, ingester._consuming = "first", 2
    return ingester


async def test_a_resize_cut_short_is_finished_by_the_next_one() -> None:
    """The merge review's M1: a set_qos cut short (the broker away) left the old prefetch
    for good; it is tried again until the consumer has the window's size."""
    broker = _Broker()
    ingester = _ingester(broker)
    ingester._window.size = 4
    broker.failing["set_qos"] = 1
    await ingester._resize()
    assert broker.consumers == {"first": 2}
    assert ingester._behind()
    await ingester._resize()
    assert list(broker.consumers.values()) == [4]
    assert not ingester._behind()


async def test_a_cancel_that_failed_is_tried_again() -> None:
    """The merge review's L1: a failed cancel left the old consumer for good, one more at
    each failure; it is cancelled at the next try."""
    broker = _Broker()
    ingester = _ingester(broker)
    ingester._window.size = 4
    broker.failing["cancel"] = 2
    await ingester._resize()
    assert sorted(broker.consumers.values()) == [2, 4]
    ingester._window.size = 8
    await ingester._resize()  # the new consumer started; the cancels fail once more
    assert sorted(broker.consumers.values()) == [2, 4, 8]
    await ingester._resize()
    assert list(broker.consumers.values()) == [8]
    assert not ingester._behind()


async def test_a_reopened_channel_has_its_consumer_made_the_windows_again() -> None:
    """The merge review's F2: the robust channel restores the prefetch its set_qos last
    recorded, before the broker had it, under the old consumer; with the window back at
    the old size by the next batch, nothing was behind and the restored prefetch stayed."""
    broker = _Broker()
    ingester = _ingester(broker)
    broker.consumers = {"first": 4}  # as the reopened channel restored it
    assert not ingester._behind()  # the window (2) is what _consuming says
    ingester._reopened()
    assert ingester._behind()
    await ingester._resize()
    assert list(broker.consumers.values()) == [2]
    assert not ingester._behind()


async def test_a_stop_that_lands_as_a_resize_step_ends_is_not_swallowed() -> None:
    """Python 3.11's wait_for returns the result of an awaitable that finished as the task
    was cancelled: a consumer stopped as its set_qos was answered carried on, started a
    consumer and cast more (a fresh clone's test waited 20 s for it to stop)."""
    broker = _Broker()
    ingester = _ingester(broker)
    ingester._window.size = 4
    answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def set_qos(prefetch_count: int) -> None:
        await answered
        broker.prefetch = prefetch_count

    broker.set_qos = set_qos  # type: ignore[method-assign]
    resizing = asyncio.create_task(ingester._resize())
    for _ in range(3):  # (until it waits on the answer)
        await asyncio.sleep(0)
    assert not resizing.done()
    answered.set_result(None)
    resizing.cancel()  # in the same turn of the loop as the answer
    with pytest.raises(asyncio.CancelledError):
        await resizing
    assert broker.consumers == {"first": 2}  # nothing done after the stop
