"""Hand-worked cases from the standard references, each with its source named."""

from __future__ import annotations

import pytest

from domain.rules import Method
from domain.tabulation import Result, Tally, tabulate
from domain.tabulation.condorcet import strongest_paths
from domain.votes import Choice, Ranking
from tests.unit.tabulation.elections import rules, scores

# The Tennessee capital election, 100 voters. Wikipedia uses it in "Plurality voting",
# "Instant-runoff voting", "Borda count", "Condorcet method" and "Ranked pairs" (Example);
# Electowiki: "Effects of different voting systems under similar circumstances".
TENNESSEE = ("memphis", "nashville", "chattanooga", "knoxville")
TENNESSEE_VOTERS = (
    (42, ("memphis", "nashville", "chattanooga", "knoxville")),
    (26, ("nashville", "chattanooga", "knoxville", "memphis")),
    (15, ("chattanooga", "knoxville", "nashville", "memphis")),
    (17, ("knoxville", "chattanooga", "nashville", "memphis")),
)


def tennessee(method: Method) -> Result:
    tally = Tally(rules(method, TENNESSEE))
    for voters, order in TENNESSEE_VOTERS:
        tally.add(Ranking(order), voters)
    return tally.result()


def test_tennessee_plurality_elects_memphis() -> None:
    tally = Tally(rules(Method.PLURALITY, TENNESSEE))
    for voters, order in TENNESSEE_VOTERS:
        tally.add(Choice(order[0]), voters)
    result = tally.result()
    assert result.winners == ("memphis",)
    assert [option.figures["votes"] for option in result.options] == [42, 26, 15, 17]


def test_tennessee_irv_elects_knoxville_in_three_rounds() -> None:
    # Wikipedia, "Instant-runoff voting", Tennessee example: Chattanooga out (15), then
    # Nashville out (26), then Knoxville beats Memphis 58 to 42.
    result = tennessee(Method.IRV)
    assert result.winners == ("knoxville",)
    assert [r.to_json() for r in result.rounds] == [
        {
            "counts": {"memphis": 42, "nashville": 26, "chattanooga": 15, "knoxville": 17},
            "eliminated": ["chattanooga"],
            "exhausted": 0,
        },
        {
            "counts": {"memphis": 42, "nashville": 26, "knoxville": 32},
            "eliminated": ["nashville"],
            "exhausted": 0,
        },
        {"counts": {"memphis": 42, "knoxville": 58}, "eliminated": [], "exhausted": 0},
    ]


def test_tennessee_borda_elects_nashville_with_the_published_points() -> None:
    # Wikipedia, "Borda count", Tennessee example: 194, 173, 126, 107 points.
    result = tennessee(Method.BORDA)
    assert result.winners == ("nashville",)
    points = {option.id: option.figures["points"] for option in result.options}
    assert points == {"memphis": 126, "nashville": 194, "chattanooga": 173, "knoxville": 107}


@pytest.mark.parametrize(
    "method", [Method.SCHULZE, Method.RANKED_PAIRS, Method.COPELAND, Method.MINIMAX]
)
def test_tennessee_condorcet_methods_elect_nashville(method: Method) -> None:
    # Wikipedia, "Condorcet method" and "Ranked pairs", Tennessee example: Nashville beats
    # every other city head to head (58-42 over Memphis, 68-32 over the other two).
    result = tennessee(method)
    assert result.winners == ("nashville",)
    assert result.tie is None
    assert result.pairwise is not None
    assert result.pairwise["nashville"] == {"memphis": 58, "chattanooga": 68, "knoxville": 68}
    assert result.pairwise["chattanooga"]["knoxville"] == 83


# Wikipedia, "Schulze method", Example: 45 voters, 5 candidates.
SCHULZE_VOTERS = (
    (5, "ACBED"),
    (5, "ADECB"),
    (8, "BEDAC"),
    (3, "CABED"),
    (7, "CAEBD"),
    (2, "CBADE"),
    (7, "DCEBA"),
    (8, "EBADC"),
)


def schulze_example() -> Tally:
    tally = Tally(rules(Method.SCHULZE, tuple("ABCDE")))
    for voters, order in SCHULZE_VOTERS:
        tally.add(Ranking(tuple(order)), voters)
    return tally


def test_schulze_wikipedia_example_pairwise_paths_and_winner() -> None:
    tally = schulze_example()
    assert [list(row) for row in tally.pairwise] == [
        [0, 20, 26, 30, 22],
        [25, 0, 16, 33, 18],
        [19, 29, 0, 17, 24],
        [15, 12, 28, 0, 14],
        [23, 27, 21, 31, 0],
    ]
    assert strongest_paths(tally) == [
        [0, 28, 28, 30, 24],
        [25, 0, 28, 33, 24],
        [25, 29, 0, 29, 24],
        [25, 28, 28, 0, 24],
        [25, 28, 28, 31, 0],
    ]
    result = tally.result()
    assert result.winners == ("E",)
    assert result.tie is None


def test_ranked_pairs_on_the_schulze_example_locks_a_cycle_away() -> None:
    # Worked by hand from the Wikipedia "Schulze method" example (not a published figure):
    # lock B>D 21, E>D 17, A>D 15, C>B 13; skip D>C 11 (C>B>D>C); lock E>B 9, A>C 7;
    # skip B>A 5 (A>C>B>A); lock C>E 3; skip E>A 1 (A>C>E>A): A is unbeaten.
    tally = schulze_example()
    result = Tally.from_counters(rules(Method.RANKED_PAIRS, tuple("ABCDE")), tally.counters())
    assert result.result().winners == ("A",)


STAR_IDS = ("Amy", "Brian", "Chuck")


def star(*ballots: tuple[int, int, int]) -> Result:
    return tabulate(rules(Method.STAR, STAR_IDS), [scores(STAR_IDS, b) for b in ballots])


def test_star_starvote_readme_example() -> None:
    # starvote (Larry Hastings' STAR tabulator, pypi.org/project/starvote), README example:
    # Chuck 13 and Amy 10 reach the runoff, which Chuck wins 2 to 1.
    result = star((1, 3, 5), (5, 2, 3), (4, 4, 5))
    assert result.winners == ("Chuck",)
    scoring, runoff = (r.to_json() for r in result.rounds)
    assert scoring == {
        "counts": {"Amy": 10, "Brian": 9, "Chuck": 13},
        "eliminated": ["Brian"],
        "exhausted": 0,
    }
    assert runoff == {"counts": {"Amy": 1, "Chuck": 2}, "eliminated": ["Amy"], "exhausted": 0}


def test_star_runoff_tie_broken_by_total_score() -> None:
    # starvote test_elections/test_election_breakable_tie_in_automatic_runoff_round_using_
    # score_round: the runoff ties 1-1 (one ballot scores both 3); Chuck scored 11 to 10.
    result = star((1, 2, 5), (1, 5, 3), (1, 3, 3))
    assert result.winners == ("Chuck",)
    assert result.rounds[1].to_json() == {
        "counts": {"Brian": 1, "Chuck": 1},
        "eliminated": ["Brian"],
        "exhausted": 1,
    }
    assert "total score (11 to 10)" in result.notes[0]


def test_star_runoff_tie_broken_by_top_scores() -> None:
    # starvote test_elections/test_election_breakable_tie_in_automatic_runoff_round_using_
    # max_score_count_round: Brian and Chuck tie on 12 points and 1-1 in the runoff; Chuck
    # has two fives to Brian's one.
    result = star((1, 4, 5), (1, 3, 2), (1, 5, 5))
    assert result.winners == ("Chuck",)
    assert result.rounds[0].counts == {"Amy": 3, "Brian": 12, "Chuck": 12}
    assert "top scores (2 to 1)" in result.notes[0]


def test_star_scoring_round_tie_broken_head_to_head() -> None:
    # starvote sample_polls/sample_poll_score_round_breakable_tie_between_second_and_third:
    # Brian and Amy tie on 7 for second; Brian is preferred 2 to 1 and advances.
    result = star((1, 2, 5), (1, 2, 5), (5, 3, 5))
    assert result.winners == ("Chuck",)
    assert result.rounds[0].eliminated == ("Amy",)
    assert result.rounds[1].counts == {"Brian": 0, "Chuck": 3}
    assert "Head-to-head match-ups among them: Brian advanced." in result.notes[0]


def test_star_unbreakable_tie_for_second_does_not_decide_the_winner() -> None:
    # starvote test_elections/test_election_unbreakable_tie_for_second_in_score_round:
    # Amy and Brian tie on 6, 1-1 head to head, no fives; Chuck beats either in the runoff.
    result = star((1, 2, 5), (2, 1, 5), (3, 3, 5))
    assert result.winners == ("Chuck",)
    assert result.tie is None
    assert "Amy and Brian still tied" in result.notes[0]


def test_star_unbreakable_three_way_tie_for_first_is_reported() -> None:
    # starvote test_elections/test_election_unbreakable_three_way_tie_for_first_in_score_
    # round: all score 9, head to head is a cycle, each has one five.
    result = star((1, 3, 5), (3, 5, 1), (5, 1, 3))
    assert result.winners == STAR_IDS
    assert result.tie is not None
    assert result.tie.options == STAR_IDS
    assert len(result.rounds) == 1
