"""The results document: its shape per method, empty elections, and refused input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from domain.rules import Method
from domain.tabulation import Tally, tabulate
from domain.tabulation.result import NO_BALLOTS
from domain.votes import Approval, Choice, Ranking, Scores, Vote
from tests.unit.tabulation.elections import ranking, rules, scores

IDS = ("a", "b", "c")
FIGURES = {
    Method.PLURALITY: {"votes"},
    Method.APPROVAL: {"approvals"},
    Method.SCORE: {"sum", "mean", "histogram"},
    Method.STAR: {"sum", "mean", "top_scores", "histogram"},
    Method.BORDA: {"first_preferences", "points"},
    Method.IRV: {"first_preferences"},
    Method.SCHULZE: {"first_preferences"},
    Method.RANKED_PAIRS: {"first_preferences"},
    Method.COPELAND: {"first_preferences", "wins", "losses", "ties", "score"},
    Method.MINIMAX: {"first_preferences", "largest_defeat"},
    Method.STV: {"first_preferences", "elected_in_stage"},
}


def sample_votes(method: Method) -> list[Vote]:
    if method is Method.PLURALITY:
        return [Choice("a"), Choice("a"), Choice("b")]
    if method is Method.APPROVAL:
        return [Approval(("a", "b")), Approval(("a",)), Approval(("c",))]
    if method is Method.SCORE:
        return [scores(IDS, (2, -1, -2)), scores(IDS, (1, 2, 0)), scores(IDS, (2, 0, -2))]
    if method is Method.STAR:
        return [scores(IDS, (5, 3, 0)), scores(IDS, (4, 5, 1)), scores(IDS, (5, 0, 2))]
    return [ranking("a>b>c"), ranking("a>c"), ranking("b")]


@pytest.mark.parametrize("method", list(Method))
def test_results_document_shape(method: Method) -> None:
    document = tabulate(rules(method, IDS), sample_votes(method)).to_json()
    assert list(document) == [
        "method",
        "ballots",
        "winners",
        "options",
        "rounds",
        "pairwise",
        "tie",
        "notes",
        *(["seats", "quota", "stages"] if method is Method.STV else []),
    ]
    assert document["method"] == method.value
    assert document["ballots"] == 3
    assert document["winners"] == ["a"]
    assert [o["id"] for o in document["options"]] == list(IDS)
    assert [o["label"] for o in document["options"]] == ["A", "B", "C"]
    for option in document["options"]:
        assert set(option) - {"id", "label"} == FIGURES[method]
    if method in (Method.IRV, Method.STAR):
        assert document["rounds"]
        assert all(set(r) == {"counts", "eliminated", "exhausted"} for r in document["rounds"])
    else:
        assert document["rounds"] == []
    if method.is_ranked:
        assert document["pairwise"] == {
            "a": {"b": 2, "c": 2},
            "b": {"a": 1, "c": 2},
            "c": {"a": 0, "b": 1},  # "a>c" leaves only b out: a>c>b
        }
    else:
        assert document["pairwise"] is None
    assert document["tie"] is None
    assert json.loads(json.dumps(document)) == document


def test_score_figures_cover_the_whole_range() -> None:
    document = tabulate(rules(Method.SCORE, IDS), sample_votes(Method.SCORE)).to_json()
    a = document["options"][0]
    assert a["sum"] == 5
    assert a["mean"] == pytest.approx(5 / 3)
    assert a["histogram"] == {"-2": 0, "-1": 0, "0": 0, "1": 1, "2": 2}


def test_star_rounds_show_sums_then_the_runoff() -> None:
    result = tabulate(rules(Method.STAR, IDS), sample_votes(Method.STAR))
    assert [r.to_json() for r in result.rounds] == [
        {"counts": {"a": 14, "b": 8, "c": 3}, "eliminated": ["c"], "exhausted": 0},
        {"counts": {"a": 2, "b": 1}, "eliminated": ["b"], "exhausted": 0},
    ]
    assert [o.figures["top_scores"] for o in result.options] == [2, 1, 0]


def test_borda_with_partial_rankings_shares_the_points_left_over() -> None:
    # 3 options: ranked first 2, second 1; unranked options share what is left.
    # "a>b>c": a2 b1 c0; "a>c" (= a>c>b): a2 c1 b0; "b": b2, a and c share 1: 0.5 each.
    result = tabulate(rules(Method.BORDA, IDS), sample_votes(Method.BORDA))
    assert [o.figures["points"] for o in result.options] == [4.5, 3, 1.5]
    four = rules(Method.BORDA, ("a", "b", "c", "d"))
    # "a" of four: a 3; b, c and d share 0+1+2 = 3, one point each
    points = [o.figures["points"] for o in tabulate(four, [ranking("a")]).options]
    assert points == [3, 1, 1, 1]


def test_irv_counts_exhausted_ballots_per_round() -> None:
    election = rules(Method.IRV, ("a", "b", "c", "d"))
    ballots = [*[ranking("a")] * 4, *[ranking("b>c")] * 3, *[ranking("c")] * 2, ranking("d")]
    rounds = [r.to_json() for r in tabulate(election, ballots).rounds]
    assert rounds == [
        {"counts": {"a": 4, "b": 3, "c": 2, "d": 1}, "eliminated": ["d"], "exhausted": 0},
        {"counts": {"a": 4, "b": 3, "c": 2}, "eliminated": ["c"], "exhausted": 1},
        # 4 of the 7 continuing ballots: a majority of those still counting
        {"counts": {"a": 4, "b": 3}, "eliminated": [], "exhausted": 3},
    ]


@pytest.mark.parametrize("method", list(Method))
def test_an_election_without_ballots_has_no_winner(method: Method) -> None:
    document: dict[str, Any] = Tally(rules(method, IDS)).result().to_json()
    assert document["ballots"] == 0
    assert document["winners"] == []
    assert document["tie"] is None
    assert document["rounds"] == []
    assert document["notes"] == [NO_BALLOTS]
    assert len(document["options"]) == 3
    if method.is_scored:
        assert all(option["mean"] is None for option in document["options"])


def test_a_negative_count_is_refused() -> None:
    tally = Tally(rules(Method.IRV, IDS))
    tally.add(ranking("a>b"), -1)
    with pytest.raises(ValueError, match="negative count"):
        tally.result()


@pytest.mark.parametrize(
    ("method", "vote", "error"),
    [
        (Method.PLURALITY, Ranking(("a",)), TypeError),
        (Method.IRV, Choice("a"), TypeError),
        (Method.PLURALITY, Choice("x"), ValueError),
        (Method.APPROVAL, Approval(("a", "x")), ValueError),
        (Method.IRV, Ranking(("a", "a")), ValueError),
        (Method.IRV, Ranking(()), ValueError),
        (Method.SCORE, Scores((("a", 9), ("b", 0), ("c", 0))), ValueError),
        (Method.STAR, Scores((("a", 1), ("b", 0))), ValueError),
        (Method.STAR, Scores((("b", 1), ("a", 0), ("c", 0))), ValueError),
    ],
)
def test_votes_that_do_not_fit_are_refused(
    method: Method, vote: Vote, error: type[Exception]
) -> None:
    tally = Tally(rules(method, IDS))
    with pytest.raises(error):
        tally.add(vote)
    assert tally == Tally(rules(method, IDS))  # nothing was half-counted


def test_only_tallies_of_the_same_rules_merge() -> None:
    with pytest.raises(ValueError, match="same election rules"):
        Tally(rules(Method.IRV, IDS)).merge(Tally(rules(Method.BORDA, IDS)))
