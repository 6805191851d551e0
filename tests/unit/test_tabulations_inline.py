"""Which results documents are counted on the event loop (``api.tabulations.tiny``).

A review found that a tally small by size (10 options, 50 ballots) but built to tie made
IRV and STV search every choice of elimination on the loop, 100s of ms per document, and the
ballots' author picks that shape. Only methods whose count searches nothing are inline now.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from api.tabulations import (
    INLINE_COUNTERS,
    INLINE_METHODS,
    INLINE_OPTIONS,
    counters_bound,
    may_be_tiny,
    tiny,
)
from domain.rules import ElectionRules, Method
from domain.tabulation.statistics import Tally
from domain.votes import Approval, Choice, Ranking, Scores, Vote
from projections.queries import TallySnapshot

IDS = [f"o{n}" for n in range(INLINE_OPTIONS)]


def _rules(method: str, options: list[str] = IDS, **rules: Any) -> ElectionRules:
    return ElectionRules.create(
        options=[{"id": o, "label": o} for o in options], method=method, **rules
    )


def _snapshot(rules: ElectionRules, votes: Sequence[Vote]) -> TallySnapshot:
    counters = Tally.from_votes(rules, votes).counters()
    return TallySnapshot(1, rules.to_json(), None, 0, counters, published_counters=counters)


def _within_size_bounds(rules: ElectionRules, snapshot: TallySnapshot) -> None:
    """Small enough by size alone: only the method can keep it off the loop."""
    assert len(rules.options) <= INLINE_OPTIONS
    assert len(snapshot.counters) <= INLINE_COUNTERS


def _firsts_tied(seed: int = 0) -> list[Vote]:
    """50 ballots, every option ranked first 5 times: IRV's first round ties all ten."""
    rnd = random.Random(seed)
    votes: list[Vote] = []
    for option in IDS:
        for _ in range(5):
            rest = [o for o in IDS if o != option]
            rnd.shuffle(rest)
            votes.append(Ranking((option, *rest[: rnd.randint(0, 8)])))
    return votes


def _random_rankings(count: int, seed: int) -> list[Vote]:
    rnd = random.Random(seed)
    votes: list[Vote] = []
    for _ in range(count):
        order = IDS[:]
        rnd.shuffle(order)
        votes.append(Ranking(tuple(order[: rnd.randint(1, len(IDS))])))
    return votes


def _latin_square() -> list[Vote]:
    """Every option in every place once: every elimination and exclusion is a tie."""
    return [
        Ranking(tuple(IDS[(i + j) % len(IDS)] for j in range(len(IDS)))) for i in range(len(IDS))
    ]


def test_a_tied_ten_option_irv_tally_is_not_counted_inline() -> None:
    rules = _rules("irv")  # edition 2, REPORT: explores every choice of elimination
    assert rules.counting >= 2
    snapshot = _snapshot(rules, _firsts_tied())
    _within_size_bounds(rules, snapshot)
    assert not tiny(rules, snapshot)


def test_a_small_stv_tally_is_not_counted_inline() -> None:
    rules = _rules("stv", seats=3)
    snapshot = _snapshot(rules, _random_rankings(20, seed=31))
    _within_size_bounds(rules, snapshot)
    assert not tiny(rules, snapshot)


@pytest.mark.parametrize("method", ["irv", "stv", "ranked_pairs"])
@pytest.mark.parametrize("tie_break", ["report", "declared_order"])
def test_a_method_that_searches_ties_is_never_counted_inline(method: str, tie_break: str) -> None:
    rules = _rules(method, tie_break=tie_break)
    for votes in ([], [Ranking(("o0",))], _latin_square()):
        snapshot = _snapshot(rules, votes)
        _within_size_bounds(rules, snapshot)
        assert not tiny(rules, snapshot)


def test_inline_methods_are_those_without_a_search() -> None:
    """IRV, STV and Ranked Pairs search the choices a tie leaves open; every other method
    counts in a bounded number of passes (see api/tabulations.py for the figures). A new
    method is counted in a thread until it is shown to belong here."""
    assert set(Method) - INLINE_METHODS == {Method.IRV, Method.STV, Method.RANKED_PAIRS}


def _tiny_votes(method: Method) -> list[Vote]:
    if method is Method.PLURALITY:
        return [Choice(o) for o in IDS]
    if method is Method.APPROVAL:
        return [Approval(tuple(IDS))]
    if method.is_scored:
        low = -2 if method is Method.SCORE else 0  # the default ranges: -2..2, 0..5
        return [Scores(tuple((o, low + i % 5) for i, o in enumerate(IDS)))]
    return _latin_square()


@pytest.mark.parametrize("method", sorted(INLINE_METHODS))
def test_a_tiny_tally_of_a_method_without_search_is_counted_inline(method: Method) -> None:
    rules = _rules(method.value)
    snapshot = _snapshot(rules, _tiny_votes(method))
    _within_size_bounds(rules, snapshot)
    assert tiny(rules, snapshot)


def test_size_still_bounds_the_methods_without_search() -> None:
    more = [f"o{n}" for n in range(INLINE_OPTIONS + 1)]
    rules = _rules("schulze", options=more)
    assert not tiny(rules, _snapshot(rules, [Ranking(tuple(more))]))
    rules = _rules("schulze")
    snapshot = _snapshot(rules, _random_rankings(400, seed=1))
    assert len(snapshot.counters) > INLINE_COUNTERS
    assert not tiny(rules, snapshot)


def _random_votes(rules: ElectionRules, count: int, seed: int) -> list[Vote]:
    rnd = random.Random(seed)
    method = rules.method
    if method is Method.PLURALITY:
        return [Choice(rnd.choice(IDS)) for _ in range(count)]
    if method is Method.APPROVAL:
        return [Approval(tuple(o for o in IDS if rnd.random() < 0.5)) for _ in range(count)]
    if method.is_scored:
        assert rules.min_score is not None
        assert rules.max_score is not None
        low, high = rules.min_score, rules.max_score
        return [Scores(tuple((o, rnd.randint(low, high)) for o in IDS)) for _ in range(count)]
    return _random_rankings(count, seed)


@pytest.mark.parametrize("method", sorted(INLINE_METHODS))
@pytest.mark.parametrize("count", [0, 1, 3, 40, 400])
def test_the_head_bounds_an_inline_tally_s_counters(method: Method, count: int) -> None:
    """``counters_bound`` (what the head's entries allow) is never below the counters a
    tally of that many ballots holds: a document it says may be tiny is read before its
    turn; every other one in its turn, where identical misses share the read."""
    rules = _rules(method.value)
    counters = Tally.from_votes(rules, _random_votes(rules, count, seed=count)).counters()
    assert len(counters) <= counters_bound(rules, count)


def test_only_a_ranked_tally_of_few_entries_is_read_before_its_turn() -> None:
    """A ranked tally holds one counter per distinct ranking, at most one per entry."""
    for method in ("borda", "schulze", "copeland", "minimax"):
        rules = _rules(method)
        fixed = counters_bound(rules, 0)  # (the ballots' count and the pairwise counts)
        assert may_be_tiny(rules, INLINE_COUNTERS - fixed)
        assert not may_be_tiny(rules, INLINE_COUNTERS - fixed + 1)
    assert may_be_tiny(_rules("plurality"), 10**6)  # (a counter per option, whatever)
    assert not may_be_tiny(_rules("irv"), 0)  # (a search: never inline)
