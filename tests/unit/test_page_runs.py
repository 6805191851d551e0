"""Relay pages merged into runs: contiguous, and no longer than MAX_RUN_SPAN positions, so
that one run's count never holds the event loop (and the leaders' keepalives on it) for
minutes."""

from __future__ import annotations

from typing import Any, cast

from projections.pages import MAX_RUN_SPAN, Page, contiguous_runs


def _page(after: int, last: int) -> Page:
    return Page(cast(Any, None), after, last, [])


def test_adjacent_pages_merge_and_a_gap_splits() -> None:
    runs = contiguous_runs([_page(0, 10), _page(10, 20), _page(25, 30)])
    assert [[(p.after, p.last) for p in run] for run in runs] == [[(0, 10), (10, 20)], [(25, 30)]]


def test_a_long_backlog_is_cut_into_runs_of_at_most_the_span() -> None:
    pages = [_page(n * 1000, (n + 1) * 1000) for n in range(256)]
    runs = contiguous_runs(pages)
    assert all(run[-1].last - run[0].after <= MAX_RUN_SPAN for run in runs)
    assert len(runs) == 256 * 1000 // MAX_RUN_SPAN + (256 * 1000 % MAX_RUN_SPAN > 0)
    # Together they still cover every position once, in order.
    covered = [(p.after, p.last) for run in runs for p in run]
    assert covered == [(p.after, p.last) for p in pages]


def test_one_page_longer_than_the_span_is_a_run_of_its_own() -> None:
    runs = contiguous_runs([_page(0, 5), _page(5, 50_000), _page(50_000, 50_010)], max_span=100)
    assert [len(run) for run in runs] == [1, 1, 1]
