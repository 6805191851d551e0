"""The ingest consumer's prefetch, sized in ballots (``_Window``): the rule alone; the
broker's side is in tests/integration/test_ingest_held.py."""

from __future__ import annotations

from infra.ingest.consumer import _Window


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
