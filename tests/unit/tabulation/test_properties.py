"""Algebraic properties of the sufficient statistics, for every method (hypothesis)."""

from __future__ import annotations

import re
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.rules import ElectionRules, Method
from domain.tabulation import Tally, tabulate
from domain.votes import Vote
from tests.budget import examples
from tests.unit.tabulation.elections import elections, elections_with_votes, votes

PROPERTY_SETTINGS = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
KEY = re.compile(r"^(n|c:[^:>]+|h:[^:>]+:-?\d+|p:[^:>]+:[^:>]+|r:[^:>]+(>[^:>]+)*)$")


def one_by_one(election: ElectionRules, ballots: list[Vote]) -> Tally:
    tally = Tally(election)
    for vote in ballots:
        tally.add(vote)
    return tally


@PROPERTY_SETTINGS
@given(elections_with_votes())
def test_adding_one_by_one_equals_counting_at_once(case: tuple[ElectionRules, list[Vote]]) -> None:
    election, ballots = case
    incremental = one_by_one(election, ballots)
    grouped = Tally(election)
    for vote, count in Counter(ballots).items():
        grouped.add(vote, count)
    summed: Counter[str] = Counter()
    for vote in ballots:
        summed.update(Tally.delta(election, vote))
    assert incremental == grouped == Tally.from_votes(election, ballots)
    assert Tally.from_counters(election, summed) == incremental
    assert incremental.ballots == len(ballots)


@PROPERTY_SETTINGS
@given(st.data())
def test_removing_a_ballot_restores_the_previous_state(data: st.DataObject) -> None:
    election, ballots = data.draw(elections_with_votes())
    extra = data.draw(votes(election))
    tally = one_by_one(election, ballots)
    before = tally.counters()
    tally.add(extra)
    assert tally.ballots == len(ballots) + 1
    tally.add(extra, -1)
    assert tally.counters() == before
    assert tally == one_by_one(election, ballots)


@PROPERTY_SETTINGS
@given(st.data())
def test_a_revision_is_a_removal_and_an_addition(data: st.DataObject) -> None:
    election, ballots = data.draw(elections_with_votes())
    old, new = data.draw(votes(election)), data.draw(votes(election))
    revised = one_by_one(election, [*ballots, old])
    revised.add(old, -1)
    revised.add(new)
    assert revised == one_by_one(election, [*ballots, new])


@PROPERTY_SETTINGS
@given(st.data())
def test_merging_is_associative_commutative_and_equals_counting_everything(
    data: st.DataObject,
) -> None:
    election = data.draw(elections())
    parts = [data.draw(st.lists(votes(election), max_size=8)) for _ in range(3)]
    a, b, c = (one_by_one(election, part) for part in parts)
    assert (a + b) + c == a + (b + c)
    assert a.merge(b) == b.merge(a)
    assert (a + b) + c == one_by_one(election, [v for part in parts for v in part])
    assert a == one_by_one(election, parts[0])  # merging left its operands alone


@PROPERTY_SETTINGS
@given(st.data())
def test_results_do_not_depend_on_ballot_order(data: st.DataObject) -> None:
    election, ballots = data.draw(elections_with_votes())
    shuffled = data.draw(st.permutations(ballots))
    assert tabulate(election, shuffled).to_json() == tabulate(election, ballots).to_json()
    assert one_by_one(election, shuffled).result() == one_by_one(election, ballots).result()


@PROPERTY_SETTINGS
@given(elections_with_votes())
def test_counters_are_sparse_documented_keys_that_round_trip(
    case: tuple[ElectionRules, list[Vote]],
) -> None:
    election, ballots = case
    tally = one_by_one(election, ballots)
    counters = tally.counters()
    assert all(KEY.match(key) for key in counters), counters
    assert 0 not in counters.values()
    assert counters.get("n", 0) == len(ballots)
    assert Tally.from_counters(election, counters) == tally
    assert Tally.from_counters(election, counters).result() == tally.result()


@PROPERTY_SETTINGS
@given(elections_with_votes(methods=[m for m in Method if m.is_ranked]))
def test_ranked_statistics_agree_with_their_patterns(
    case: tuple[ElectionRules, list[Vote]],
) -> None:
    election, ballots = case
    tally = one_by_one(election, ballots)
    n = len(election.options)
    for a in range(n):
        for b in range(n):
            if a != b:
                # every ballot prefers a to b, b to a, or leaves them level (both unranked)
                level = sum(
                    count
                    for pattern, count in tally.patterns.items()
                    if a not in pattern and b not in pattern
                )
                assert tally.pairwise[a][b] + tally.pairwise[b][a] + level == len(ballots)
    assert sum(tally.first_preferences()) == len(ballots)
