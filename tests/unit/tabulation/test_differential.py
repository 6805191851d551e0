"""Differential tests against an independent implementation, the pref_voting package.

2,000 seeded random profiles per method, with complete and partial ballots. Under
``TieBreak.REPORT`` our winners must equal pref_voting's winner set for the methods that
define one set (plurality, approval, score, Borda, Schulze, Ranked Pairs, Copeland,
Minimax). For IRV and STAR, pref_voting resolves ties by "parallel universes" (every
option that wins under some tie-break), while we apply the published tie-breaks: our
winners must lie within its set, and equal it wherever it names a single winner.

Matching variants: Borda for partial ballots is pref_voting's ``symmetric_borda_scores``
(an affine image of our averaged points); Schulze compares with ``beat_path`` using the
``support`` (winning votes) strength; Ranked Pairs and Minimax use margins, pref_voting's
default; the ranked profiles use extended strict preference (unranked below ranked).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import pytest
from pref_voting.c1_methods import copeland
from pref_voting.grade_methods import approval, score_voting, star
from pref_voting.grade_profiles import GradeProfile
from pref_voting.iterative_methods import instant_runoff_put
from pref_voting.margin_based_methods import beat_path, minimax, ranked_pairs, ranked_pairs_tb
from pref_voting.profiles import Profile
from pref_voting.profiles_with_ties import ProfileWithTies
from pref_voting.scoring_methods import borda_for_profile_with_ties, plurality

from domain.rules import Method
from domain.tabulation import tabulate
from domain.votes import Approval, Choice, Ranking, Vote
from tests.budget import examples
from tests.unit.tabulation.elections import OPTION_IDS, rules, scores

PROFILES = examples(800)

Profile_ = tuple[tuple[str, ...], list[tuple[str, ...]]]


@cache
def ranked_profiles() -> list[Profile_]:
    """Options 2-6, voters 1-40; per profile no, some or only partial rankings."""
    rng = random.Random(20240503)
    profiles = []
    for _ in range(PROFILES):
        ids = tuple(rng.sample(OPTION_IDS, rng.randint(2, 6)))
        partial = rng.choice([0.0, 0.5, 1.0])
        ballots = []
        for _ in range(rng.randint(1, 40)):
            order = rng.sample(ids, len(ids))
            if rng.random() < partial:
                order = order[: rng.randint(1, len(ids))]
            ballots.append(tuple(order))
        profiles.append((ids, ballots))
    return profiles


def pref_profile(ids: Sequence[str], ballots: list[tuple[str, ...]]) -> Any:
    index = {option: i for i, option in enumerate(ids)}
    profile = ProfileWithTies(
        [{index[o]: rank for rank, o in enumerate(ballot, 1)} for ballot in ballots],
        candidates=list(range(len(ids))),
    )
    profile.use_extended_strict_preference()
    return profile


REFERENCES: dict[Method, Callable[[Any], list[int]]] = {
    Method.BORDA: borda_for_profile_with_ties,
    Method.SCHULZE: lambda p: beat_path(p, strength_function=p.support),
    # "from_stacks" (Zavist-Tideman stacks) gives the same winners as the default
    # enumeration of tie orders, which takes factorial time on many equal margins.
    Method.RANKED_PAIRS: lambda p: ranked_pairs(p, algorithm="from_stacks"),
    Method.COPELAND: copeland,
    Method.MINIMAX: minimax,
}


def test_the_profiles_cover_complete_and_partial_ballots() -> None:
    ballots = [(ids, b) for ids, profile in ranked_profiles() for b in profile]
    partial = sum(1 for ids, b in ballots if len(b) < len(ids))
    assert len(ranked_profiles()) == PROFILES
    assert 0.2 < partial / len(ballots) < 0.6
    assert {len(ids) for ids, _ in ranked_profiles()} == {2, 3, 4, 5, 6}


@pytest.mark.parametrize("method", list(REFERENCES))
def test_ranked_methods_name_the_same_winners_as_pref_voting(method: Method) -> None:
    mismatches, single = [], 0
    for ids, ballots in ranked_profiles():
        expected = sorted(ids[i] for i in REFERENCES[method](pref_profile(ids, ballots)))
        ours = tabulate(rules(method, ids), [Ranking(b) for b in ballots])
        single += len(expected) == 1
        if sorted(ours.winners) != expected:
            mismatches.append((ids, ballots, expected, ours.winners))
    assert mismatches == []
    assert single > PROFILES // 2  # most profiles have one winner: the test has teeth


def test_irv_winners_are_pref_voting_parallel_universe_winners() -> None:
    mismatches, single = [], 0
    for ids, ballots in ranked_profiles():
        possible = sorted(ids[i] for i in instant_runoff_put(pref_profile(ids, ballots)))
        ours = tabulate(rules(Method.IRV, ids), [Ranking(b) for b in ballots])
        single += len(possible) == 1
        within = set(ours.winners) <= set(possible)
        if not within or (len(possible) == 1 and list(ours.winners) != possible):
            mismatches.append((ids, ballots, possible, ours.winners))
    assert mismatches == []
    assert single > PROFILES // 2


def test_ranked_pairs_in_declared_order_matches_pref_voting_ranked_pairs_tb() -> None:
    # Complete rankings from an odd number of voters: no zero margins, where pref_voting
    # would also lock tied pairs.
    rng = random.Random(7)
    mismatches = []
    for _ in range(PROFILES):
        ids = tuple(rng.sample(OPTION_IDS, rng.randint(3, 6)))
        ballots = [tuple(rng.sample(ids, len(ids))) for _ in range(rng.randrange(1, 30, 2))]
        reference = Profile([[ids.index(o) for o in ballot] for ballot in ballots])
        expected = [ids[i] for i in ranked_pairs_tb(reference, tie_breaker=list(range(len(ids))))]
        election = rules(Method.RANKED_PAIRS, ids, tie_break="declared_order")
        ours = tabulate(election, [Ranking(b) for b in ballots])
        if list(ours.winners) != expected:
            mismatches.append((ids, ballots, expected, ours.winners))
    assert mismatches == []


def grade_profile(ids: Sequence[str], ballots: list[Vote], grades: list[int]) -> Any:
    maps = [dict(enumerate(v.values)) for v in ballots]  # type: ignore[union-attr]
    return GradeProfile(maps, grades, candidates=list(range(len(ids))))


def cardinal_profiles(seed: int) -> list[tuple[tuple[str, ...], random.Random, int]]:
    rng = random.Random(seed)
    return [
        (tuple(rng.sample(OPTION_IDS, rng.randint(2, 6))), rng, rng.randint(1, 40))
        for _ in range(PROFILES)
    ]


def test_plurality_matches_pref_voting() -> None:
    mismatches = []
    for ids, rng, voters in cardinal_profiles(1):
        choices = [rng.choice(ids) for _ in range(voters)]
        reference = ProfileWithTies(
            [{ids.index(c): 1} for c in choices], candidates=list(range(len(ids)))
        )
        expected = sorted(ids[i] for i in plurality(reference))
        ours = tabulate(rules(Method.PLURALITY, ids), [Choice(c) for c in choices])
        if sorted(ours.winners) != expected:
            mismatches.append((choices, expected, ours.winners))
    assert mismatches == []


def test_approval_matches_pref_voting() -> None:
    mismatches = []
    for ids, rng, voters in cardinal_profiles(2):
        ballots = [
            Approval(tuple(o for o in ids if rng.random() < 0.4) or (rng.choice(ids),))
            for _ in range(voters)
        ]
        maps = [{ids.index(o): 1 for o in ballot.options} for ballot in ballots]
        expected = sorted(
            ids[i] for i in approval(GradeProfile(maps, [0, 1], candidates=list(range(len(ids)))))
        )
        ours = tabulate(rules(Method.APPROVAL, ids), ballots)
        if sorted(ours.winners) != expected:
            mismatches.append((ballots, expected, ours.winners))
    assert mismatches == []


@pytest.mark.parametrize(("low", "high"), [(-2, 2), (0, 10), (1, 3)])
def test_score_matches_pref_voting(low: int, high: int) -> None:
    mismatches = []
    for ids, rng, voters in cardinal_profiles(3):
        ballots: list[Vote] = [
            scores(ids, [rng.randint(low, high) for _ in ids]) for _ in range(voters)
        ]
        reference = grade_profile(ids, ballots, list(range(low, high + 1)))
        expected = sorted(ids[i] for i in score_voting(reference))
        election = rules(Method.SCORE, ids, min_score=low, max_score=high)
        ours = tabulate(election, ballots)
        if sorted(ours.winners) != expected:
            mismatches.append((ballots, expected, ours.winners))
    assert mismatches == []


def test_star_winners_are_pref_voting_star_winners() -> None:
    mismatches, single = [], 0
    for ids, rng, voters in cardinal_profiles(4):
        ballots: list[Vote] = [scores(ids, [rng.randint(0, 5) for _ in ids]) for _ in range(voters)]
        possible = sorted(ids[i] for i in star(grade_profile(ids, ballots, [0, 1, 2, 3, 4, 5])))
        ours = tabulate(rules(Method.STAR, ids), ballots)
        single += len(possible) == 1
        within = set(ours.winners) <= set(possible)
        if not within or (len(possible) == 1 and list(ours.winners) != possible):
            mismatches.append((ballots, possible, ours.winners))
    assert mismatches == []
    assert single > PROFILES // 2
