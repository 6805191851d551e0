"""The counter keys: the storage form that read models keep for years."""

from __future__ import annotations

import pytest

from domain.rules import Method
from domain.tabulation import Tally
from domain.votes import Approval, Choice
from tests.unit.tabulation.elections import ranking, rules, scores

IDS = ("a", "b", "c")


def test_plurality_and_approval_deltas() -> None:
    assert Tally.delta(rules(Method.PLURALITY, IDS), Choice("b")) == {"n": 1, "c:b": 1}
    approval = rules(Method.APPROVAL, IDS)
    assert Tally.delta(approval, Approval(("a", "c")), -1) == {"n": -1, "c:a": -1, "c:c": -1}


def test_score_delta_is_one_histogram_entry_per_option() -> None:
    election = rules(Method.SCORE, IDS)  # Cardinal Vote's default range, -2..+2
    delta = Tally.delta(election, scores(IDS, (2, -2, 0)))
    assert delta == {"n": 1, "h:a:2": 1, "h:b:-2": 1, "h:c:0": 1}


def test_star_delta_holds_histograms_and_strict_preferences_only() -> None:
    election = rules(Method.STAR, IDS)
    delta = Tally.delta(election, scores(IDS, (5, 3, 3)), 2)
    assert delta == {"n": 2, "h:a:5": 2, "h:b:3": 2, "h:c:3": 2, "p:a:b": 2, "p:a:c": 2}


def test_ranked_delta_ranks_unranked_options_below_and_level() -> None:
    election = rules(Method.SCHULZE, ("a", "b", "c", "d"))
    assert Tally.delta(election, ranking("c>a")) == {
        "n": 1,
        "r:c>a": 1,
        "p:c:a": 1,
        "p:c:b": 1,
        "p:c:d": 1,
        "p:a:b": 1,
        "p:a:d": 1,
    }


def test_a_ranking_leaving_out_one_option_is_stored_complete() -> None:
    election = rules(Method.IRV, IDS)
    assert "r:b>a>c" in Tally.delta(election, ranking("b>a"))
    stored = Tally.from_counters(election, {"n": 2, "r:b>a": 1, "r:b>a>c": 1})
    assert dict(stored.patterns) == {(1, 0, 2): 2}


@pytest.mark.parametrize(
    ("method", "counters", "message"),
    [
        (Method.PLURALITY, {"r:a>b": 1}, "not a counter"),
        (Method.PLURALITY, {"c:x": 1}, "lacks"),
        (Method.IRV, {"c:a": 1}, "not a counter"),
        (Method.IRV, {"p:a:a": 1}, "not a counter"),
        (Method.IRV, {"r:a>a": 1}, "twice"),
        (Method.SCORE, {"h:a:3": 1}, "not a counter"),
        (Method.SCORE, {"h:a:2:1": 1}, "not a counter"),
        (Method.STAR, {"q:a": 1}, "not a counter"),
        (Method.STAR, {"ballots": 1}, "unknown"),
    ],
)
def test_unknown_or_misplaced_counters_are_refused(
    method: Method, counters: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Tally.from_counters(rules(method, IDS), counters)


def test_counters_omit_zeros_and_cancel_out() -> None:
    election = rules(Method.BORDA, IDS)
    tally = Tally(election)
    tally.add(ranking("a>b>c"))
    tally.add(ranking("a>b>c"), -1)
    assert tally.counters() == {}
    assert tally == Tally(election)
