"""Scottish STV (domain/tabulation/stv.py) against published and hand-worked counts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from domain.rules import Method
from domain.tabulation import stv as stv_module
from domain.tabulation import tabulate
from domain.tabulation.result import decimal_votes
from domain.tabulation.stv import droop_quota
from domain.votes import Ranking
from tests.unit.tabulation import stv_reference
from tests.unit.tabulation.elections import ranking, rules


def count(
    ids: tuple[str, ...], ballots: dict[str, int], seats: int, tie_break: str = "report"
) -> dict[str, Any]:
    votes = [ranking(order) for order, n in ballots.items() for _ in range(n)]
    return tabulate(rules(Method.STV, ids, tie_break=tie_break, seats=seats), votes).to_json()


def counts(document: dict[str, Any]) -> list[dict[str, str]]:
    return [stage["counts"] for stage in document["stages"]]


def test_the_food_at_a_party_example() -> None:
    """Wikipedia, "Single transferable vote", example with the Droop quota: 20 voters,
    3 seats, quota 6; chocolate's surplus of 6 moves at 0.5 (4 to strawberries, 2 to
    hamburgers), pears go (oranges reach 6), then hamburgers: chocolate, oranges and
    strawberries are elected."""
    ids = ("oranges", "pears", "chocolate", "strawberries", "hamburgers")
    document = count(
        ids,
        {
            "oranges": 4,
            "pears>oranges": 2,
            "chocolate>strawberries": 8,
            "chocolate>hamburgers": 4,
            "strawberries": 1,
            "hamburgers": 1,
        },
        seats=3,
    )
    assert document["winners"] == ["chocolate", "oranges", "strawberries"]
    assert document["seats"] == 3
    assert document["quota"] == "6.00000"
    stages = document["stages"]
    assert [s["action"] for s in stages] == [
        "first_preferences",
        "surplus",
        "exclusion",
        "exclusion",
    ]
    assert stages[0]["counts"]["chocolate"] == "12.00000"
    assert stages[0]["elected"] == ["chocolate"]
    assert (stages[1]["from"], stages[1]["surplus"], stages[1]["transfer_value"]) == (
        "chocolate",
        "6.00000",
        "0.50000",
    )
    assert stages[1]["counts"] == {
        "oranges": "4.00000",
        "pears": "2.00000",
        "strawberries": "5.00000",
        "hamburgers": "3.00000",
    }
    assert (stages[2]["excluded"], stages[2]["elected"]) == (["pears"], ["oranges"])
    assert stages[2]["counts"] == {
        "oranges": "6.00000",
        "strawberries": "5.00000",
        "hamburgers": "3.00000",
    }
    # Rule 52: excluding hamburgers leaves one continuing option for one seat; no transfer.
    assert (stages[3]["excluded"], stages[3]["elected"]) == (["hamburgers"], ["strawberries"])
    assert stages[3]["counts"] == {"strawberries": "5.00000"}
    assert document["tie"] is None


def test_transfer_values_are_truncated_to_five_places_and_exhausted_papers_counted() -> None:
    """21 ballots, 2 seats: quota floor(21/3)+1 = 8. a has 11; its surplus 3 moves at
    3/11 = 0.272727... truncated to 0.27272: b gets 7 x 0.27272 = 1.90904, c gets
    3 x 0.27272 = 0.81816, and the one paper ranking only a is non-transferable at
    0.27272 (3 - 11 x 0.27272 = 0.00008 is lost to the truncation). d (3) is excluded:
    its papers go to c (7.81816). b (4.90904) is excluded and c, the one continuing
    option for the one seat left, is elected."""
    document = count(
        ("a", "b", "c", "d"),
        {"a>b": 7, "a>c": 3, "a": 1, "b": 3, "c": 4, "d>c": 3},
        seats=2,
    )
    assert document["quota"] == "8.00000"
    stages = document["stages"]
    assert stages[1]["transfer_value"] == "0.27272"
    assert stages[1]["surplus"] == "3.00000"
    assert stages[1]["counts"] == {"b": "4.90904", "c": "4.81816", "d": "3.00000"}
    assert stages[1]["exhausted"] == "0.27272"
    assert stages[2]["counts"] == {"b": "4.90904", "c": "7.81816"}
    assert stages[3]["excluded"] == ["b"]
    assert document["winners"] == ["a", "c"]


def test_a_paper_received_at_a_transfer_value_moves_on_at_a_share_of_it() -> None:
    """23 ballots, 3 seats: quota 6. a (12) elected; its surplus 6 moves at 0.5 to b,
    who reaches 1 + 6 = 7 and is elected. b's surplus 1 (rule 48(3), (4)): its own paper
    moves at 1 x 1/7 = 0.14285 (and is non-transferable), the twelve papers received at
    0.5 move at 1 x 0.5/7 = 0.0714285... -> 0.07142 each, 0.85704 to c. d and e then tie
    on 3 at every stage: the pinned rule decides."""
    ballots = {"a>b>c": 12, "b": 1, "c": 4, "d": 3, "e": 3}
    document = count(("a", "b", "c", "d", "e"), ballots, seats=3, tie_break="declared_order")
    stages = document["stages"]
    assert stages[1]["elected"] == ["b"]
    assert stages[1]["counts"]["b"] == "7.00000"
    assert (stages[2]["from"], stages[2]["transfer_value"]) == ("b", "0.14285")
    assert stages[2]["counts"] == {"c": "4.85704", "d": "3.00000", "e": "3.00000"}
    assert stages[2]["exhausted"] == "0.14285"
    # Declared order: e (declared later) is excluded; its papers are non-transferable.
    assert stages[3]["excluded"] == ["e"]
    assert stages[3]["exhausted"] == "3.14285"
    assert document["winners"] == ["a", "b", "c"]
    assert any("declared order" in note for note in document["notes"])

    # Under report, excluding d instead moves nothing either, and c is elected for both
    # choices: no tie.
    reported = count(("a", "b", "c", "d", "e"), ballots, seats=3)
    assert reported["winners"] == ["a", "b", "c"]
    assert reported["tie"] is None
    assert reported["stages"] == stages


def test_an_exclusion_tie_goes_by_the_latest_stage_that_separates_the_options() -> None:
    """One seat, quota 6 of 10. d (1) goes to c: b and c then tie on 3, and stage 1 (b 3,
    c 2) excludes c under either tie-break rule."""
    ballots = {"a": 4, "b": 3, "c": 2, "d>c": 1}
    for tie_break in ("report", "declared_order"):
        document = count(("a", "b", "c", "d"), ballots, seats=1, tie_break=tie_break)
        assert [s["excluded"] for s in document["stages"]] == [[], ["d"], ["c"], ["b"]]
        assert document["winners"] == ["a"]
        assert document["tie"] is None
        assert any("stage 1, the latest earlier stage" in n for n in document["notes"])


def test_equal_surpluses_whose_order_changes_nothing_need_no_tie_break() -> None:
    """14 ballots, 3 seats, quota 4: a and b elected with 5 each, equal at every stage.
    Neither transfer (0.2 a paper) elects anyone, so a's moves first and no tie is
    reported. c, d, e then tie on 2: stage 2 (after a's transfer: d 1) excludes d; c and e
    tie again and stage 1 (c 1, e 2) excludes c, electing e."""
    document = count(
        ("a", "b", "c", "d", "e"), {"a>c": 5, "b>d": 5, "c": 1, "d": 1, "e": 2}, seats=3
    )
    assert document["tie"] is None
    assert [s["from"] for s in document["stages"]] == [None, "a", "b", "d", "c"]
    assert document["winners"] == ["a", "b", "e"]


def test_equal_surpluses_whose_order_decides_a_seat_go_to_the_tie_break() -> None:
    """30 ballots, 4 seats, quota 7: a and b have 10 each (surplus 3, at 0.3 a paper).
    Whichever moves first elects c, and the other's papers pass c by: a first sends
    c's later surplus to d but b's to e; b first the other way round."""
    ids = ("a", "b", "c", "d", "e")
    ballots = {"a>c>d": 10, "b>c>e": 10, "c": 6, "d": 2, "e": 2}
    declared = count(ids, ballots, seats=4, tie_break="declared_order")
    assert declared["stages"][1]["from"] == "a"
    assert declared["winners"] == ["a", "b", "c", "e"]
    # Under report both orders are counted: a, b and c are elected either way, d or e.
    reported = count(ids, ballots, seats=4)
    assert reported["winners"] == ["a", "b", "c", "d", "e"]
    assert reported["tie"]["options"] == ["d", "e"]
    assert "contend for 1 seat" in reported["tie"]["reason"]
    assert "stage 2, a and b were tied with equal surpluses" in reported["tie"]["reason"]
    assert reported["stages"] == declared["stages"]  # the declared-order branch


def test_options_without_votes_are_excluded_without_a_tie() -> None:
    document = count(("a", "b", "c", "d", "e"), {"a>b": 3, "b": 2, "c": 1}, seats=2)
    assert document["tie"] is None
    assert document["winners"] == ["a", "b"]


def test_ballots_exhausted_by_an_exclusion_are_counted_at_their_value() -> None:
    document = count(("a", "b", "c"), {"a": 3, "b": 2, "c": 1}, seats=1)
    # c's paper is non-transferable; excluding b elects a (rule 52) and moves nothing.
    assert [s["exhausted"] for s in document["stages"]] == ["0.00000", "1.00000", "1.00000"]
    assert document["winners"] == ["a"]


@pytest.mark.parametrize("seed", range(40))
def test_one_seat_elects_the_irv_winner(seed: int) -> None:
    """With one seat the quota is a majority of the valid ballots, and an option with a
    majority of the continuing ones can never be excluded: STV and IRV agree (declared
    order breaks the ties both methods leave to the pinned rule in the same way)."""
    generator = random.Random(seed)
    ids = tuple("abcdef"[: generator.randint(3, 6)])
    votes = []
    for _ in range(generator.randint(1, 60)):
        order = list(ids)
        generator.shuffle(order)
        votes.append(Ranking(tuple(order[: generator.randint(1, len(ids))])))
    stv = tabulate(rules(Method.STV, ids, tie_break="declared_order", seats=1), votes)
    irv = tabulate(rules(Method.IRV, ids, tie_break="declared_order"), votes)
    assert stv.winners == irv.winners


@pytest.mark.parametrize("tie_break", ["declared_order", "report"])
@pytest.mark.parametrize("seed", range(20))
def test_every_seat_is_filled_and_the_votes_add_up(seed: int, tie_break: str) -> None:
    generator = random.Random(seed)
    ids = tuple("abcdefgh"[: generator.randint(3, 8)])
    seats = generator.randint(1, len(ids) - 1)
    votes = []
    for _ in range(generator.randint(1, 200)):
        order = list(ids)
        generator.shuffle(order)
        votes.append(Ranking(tuple(order[: generator.randint(1, len(ids))])))
    result = tabulate(rules(Method.STV, ids, tie_break=tie_break, seats=seats), votes)
    assert len(result.winners) == len(set(result.winners))
    if tie_break == "declared_order":
        assert result.tie is None
    # Every seat filled; a reported tie makes every option elected for some choice a winner.
    assert (len(result.winners) == seats) == (result.tie is None)
    declared = tabulate(rules(Method.STV, ids, tie_break="declared_order", seats=seats), votes)
    assert result.stages == declared.stages  # the stages shown are the declared-order ones
    if result.tie is None:  # every choice elects the same options
        assert result.winners == declared.winners
    else:
        assert set(declared.winners) < set(result.winners)
    assert len(result.stages) <= len(ids) + seats + 1
    for stage in result.stages:
        # Continuing votes and non-transferable papers never exceed the ballots.
        assert sum(stage.counts.values()) + stage.exhausted <= len(votes) * 100_000


def test_quota_and_decimal_form() -> None:
    assert droop_quota(20, 3) == 6
    assert droop_quota(1000, 2) == 334  # the City of Edinburgh's worked example
    assert droop_quota(5000, 4) == 1001
    assert decimal_votes(127_272) == "1.27272"
    assert decimal_votes(5) == "0.00005"


def test_no_ballots_elect_nobody() -> None:
    document = count(("a", "b", "c"), {}, seats=2)
    assert document["winners"] == []
    assert document["stages"] == []
    assert (document["seats"], document["quota"]) == (2, None)


# -- the look-back keeps what it separated (rules 49(2), 51(2)(a)) ---------------------------


def test_an_exclusion_tie_the_look_back_narrows_stays_narrowed() -> None:
    """Quota 2 of 5, 3 seats. Stage 1: a 4, b 0, c 0, d 1; stage 2 (a's surplus at 0.5):
    b, c and d on 1. Stage 1 sets d aside (it had more), and no stage separates b and c:
    the lot (declared order) is between b and c only, and c is excluded."""
    document = count(
        ("a", "b", "c", "d"),
        {"a>b>d>c": 2, "a>c": 2, "d>b": 1},
        seats=3,
        tie_break="declared_order",
    )
    assert document["stages"][2]["excluded"] == ["c"]
    assert document["winners"] == ["a", "b", "d"]
    assert not any("at every stage" in note for note in document["notes"])
    assert any("set d aside" in note for note in document["notes"])


def test_equal_surpluses_the_look_back_narrows_stay_narrowed() -> None:
    """At stage 4 b, e and h have equal surpluses; stage 1 (b 0, e 3, h 3) rules b out,
    so b's surplus cannot move first: e's does (declared first of e and h)."""
    document = count(
        tuple("abcdefgh"),
        {
            "d>h>b>e": 5,
            "e>g>a>b>f>d>c": 3,
            "g>c>h": 3,
            "g>e>c>f>b": 1,
            "h>f>c>e>d>a>b>g": 3,
        },
        seats=7,
        tie_break="declared_order",
    )
    assert document["stages"][3]["from"] == "e"
    assert document["winners"] == ["d", "g", "e", "h", "b", "c", "a"]


def test_a_reported_tie_names_only_the_options_the_look_back_leaves() -> None:
    """2 seats, quota 2 of 5. At stage 4 a, b and c are tied and stage 1 sets c aside:
    the unsettled tie is a and b's. Excluding a elects b, excluding b elects c: e is
    elected either way, and b and c contend for the other seat."""
    document = count(("a", "b", "c", "d", "e"), {"c>d": 1, "e>a>d>b": 2, "e>b": 2}, seats=2)
    assert document["winners"] == ["e", "b", "c"]
    assert document["tie"]["options"] == ["b", "c"]
    assert "stage 4, a and b were tied for exclusion" in document["tie"]["reason"]


# -- under report, every choice is counted ----------------------------------------------------


def test_declared_order_never_picks_a_winner_under_report() -> None:
    """a and d have equal surpluses at every stage, and neither transfer elects anyone at
    once; but the order changes the later stages' counts, which a later look-back reads:
    a first elects b, d first elects c. Declaring a and d the other way round names the
    same winners."""
    ballots = {"a>b>d>c>e": 4, "d>a>c>e>b": 4}
    for ids in (("a", "b", "c", "d", "e"), ("d", "b", "c", "a", "e")):
        document = count(ids, ballots, seats=3)
        assert sorted(document["winners"]) == ["a", "b", "c", "d"]
        assert document["tie"]["options"] == ["b", "c"]
        assert "contend for 1 seat" in document["tie"]["reason"]
        pair = "a and d" if ids[0] == "a" else "d and a"  # named in declared order
        assert f"stage 2, {pair} were tied with equal surpluses" in document["tie"]["reason"]


def test_a_tie_whose_every_choice_elects_the_same_options_is_no_tie() -> None:
    """1 seat, quota 3 of 4: c and d are tied on 1 at every stage, and excluding either
    elects b."""
    document = count(("a", "b", "c", "d"), {"b>d": 2, "c>d>b>a": 1, "d": 1}, seats=1)
    assert document["winners"] == ["b"]
    assert document["tie"] is None
    assert any("did not change who is elected" in note for note in document["notes"])


def _random_election(
    generator: random.Random,
) -> tuple[int, int, list[tuple[tuple[int, ...], int]]]:
    """A small election drawn from a few ranking patterns, so that ties are common."""
    n = generator.randint(2, 8)
    seats = generator.randint(1, n - 1)
    pool = []
    for _ in range(generator.randint(1, 5)):
        order = list(range(n))
        generator.shuffle(order)
        pool.append(tuple(order[: generator.randint(1, n)]))
    counted: dict[tuple[int, ...], int] = {}
    for _ in range(generator.randint(1, 60)):
        pattern = generator.choice(pool)
        counted[pattern] = counted.get(pattern, 0) + 1
    return n, seats, sorted(counted.items())


def _ours(
    n: int, seats: int, ballots: list[tuple[tuple[int, ...], int]], tie_break: str
) -> dict[str, Any]:
    ids = tuple("abcdefgh"[:n])
    return count(
        ids,
        {">".join(ids[i] for i in pattern): weight for pattern, weight in ballots},
        seats=seats,
        tie_break=tie_break,
    )


@pytest.mark.parametrize("seed", range(20))
def test_declared_order_counts_as_the_reference_does(seed: int) -> None:
    """Winners and every stage's counts against the independent count, lots by declared
    order (the earlier-declared surplus first, the later-declared option out). About one
    election in 3,000 has a tie the look-back narrows but does not settle."""
    generator = random.Random(seed)
    for _ in range(1000):
        n, seats, ballots = _random_election(generator)
        ids = "abcdefgh"
        winners, shown, _ = stv_reference.count(n, seats, ballots)
        document = _ours(n, seats, ballots, "declared_order")
        assert document["winners"] == [ids[i] for i in winners], ballots
        assert counts(document) == [
            {ids[i]: decimal_votes(v) for i, v in stage.items()} for stage in shown
        ], ballots


@pytest.mark.parametrize("seed", range(10))
def test_report_names_the_winners_of_every_way_of_drawing_the_lots(seed: int) -> None:
    """Under report: where every way of drawing the reference's lots elects the same
    options, they are the winners with no tie; otherwise the winners are every option
    elected for some way, and the tie names those not elected for every way."""
    generator = random.Random(seed)
    for _ in range(300):
        n, seats, ballots = _random_election(generator)
        ids = "abcdefgh"
        found = stv_reference.outcomes(n, seats, ballots)
        document = _ours(n, seats, ballots, "report")
        every = frozenset.intersection(*found)
        some = frozenset.union(*found)
        assert sorted(document["winners"]) == sorted(ids[i] for i in some), ballots
        if len(found) == 1:
            assert document["tie"] is None, ballots
        else:
            assert document["tie"]["options"] == [ids[i] for i in sorted(some - every)]
            assert document["winners"][: len(every)] == [
                w for w in document["winners"] if "abcdefgh".index(w) in every
            ]


@pytest.mark.parametrize("seed", range(10))
def test_one_seat_under_report_elects_as_irv_does(seed: int) -> None:
    """With one seat STV and IRV elect alike under report too: the same winners, and a tie
    exactly where IRV reports one."""
    generator = random.Random(seed)
    for _ in range(200):
        n, _, ballots = _random_election(generator)
        ids = tuple("abcdefgh"[:n])
        votes = [
            Ranking(tuple(ids[i] for i in pattern))
            for pattern, weight in ballots
            for _ in range(weight)
        ]
        stv = tabulate(rules(Method.STV, ids, seats=1), votes)
        irv = tabulate(rules(Method.IRV, ids), votes)
        assert stv.winners == irv.winners, ballots
        assert (stv.tie is None) == (irv.tie is None), ballots


def test_a_search_past_its_budget_keeps_the_stages_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``SEARCH_BUDGET`` the declared-order count stands, and a note says so."""
    monkeypatch.setattr(stv_module, "SEARCH_BUDGET", 10)
    document = count(("a", "b", "c", "d", "e"), {"a>b>d>c>e": 4, "d>a>c>e>b": 4}, seats=3)
    assert document["winners"] == ["a", "d", "b"]
    assert document["tie"] is None
    assert "the search was cut short" in document["notes"][-1]
