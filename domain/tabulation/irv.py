"""Instant-runoff voting (IRV, "ranked choice", Hare), from ranking-pattern counts.

Each round counts every ballot for its highest-ranked continuing option. An option with
more than half of the continuing (not exhausted) ballots wins; otherwise the option with
the fewest votes is eliminated and its ballots move on. A ballot whose ranked options have
all been eliminated is exhausted; each round reports the exhausted ballots so far.

Tied for fewest votes, the option eliminated is found by "backwards" tie-breaking, the rule
the issue pins and many preferential counting rules use (there is no universal standard;
a drawing of lots is the usual alternative, and pref_voting's PUT variant keeps every
branch): the tied option with fewer votes in the most recent earlier round where they
differ, narrowing round by round for three or more; if every earlier round ties them too,
the one declared last on the ballot (so the earlier-declared option survives, as
``TieBreak.DECLARED_ORDER`` would also have it). Either step leaves a note. The exception
is a tie between the last two options, a tie for the win: after backwards tie-breaking it
goes to the election's pinned rule.

Speed: ballots are kept in piles by their current option, and a round only moves the pile
of the eliminated option, so a count is O(patterns x average moves), not O(patterns x
rounds); 10,000 patterns of 20 options take a few milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from domain.tabulation.ranked import ranked_result
from domain.tabulation.result import Result, Round
from domain.tabulation.ties import Decision, decide, names

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally


def irv(tally: Tally) -> Result:
    """IRV rounds until an option holds a majority of the continuing ballots."""
    if not tally.ballots:
        return ranked_result(tally, None)
    rules = tally.rules
    ids = rules.option_ids
    piles = _Piles(tally)
    counts = piles.counts
    exhausted = 0
    history: list[list[int]] = []
    rounds: list[Round] = []
    notes: list[str] = []
    while True:
        continuing = [i for i in range(len(ids)) if piles.active[i]]
        if len(continuing) == 1 and rounds:
            # The last two tied and one went: the other wins, with no round of its own. Such
            # a round would move ballots to their last option even where the voter left it
            # out (a ranking of all options but one counts as ranking that one last).
            return ranked_result(tally, Decision((continuing[0],)), rounds=rounds, notes=notes)
        history.append(counts.copy())
        shown = {ids[i]: counts[i] for i in continuing}
        top = max(counts[i] for i in continuing)
        if 2 * top > sum(counts[i] for i in continuing) or len(continuing) == 1:
            rounds.append(Round(shown, (), exhausted))
            leader = next(i for i in continuing if counts[i] == top)
            return ranked_result(tally, Decision((leader,)), rounds=rounds, notes=notes)
        low = min(counts[i] for i in continuing)
        lowest = [i for i in continuing if counts[i] == low]
        loser, note = _fewest(tally, lowest, len(continuing), history)
        if loser is None:
            why = f"in the final round with {low} votes each, and no earlier round separates them"
            decision = decide(rules, lowest, why)
            if decision.tie is not None:
                rounds.append(Round(shown, (), exhausted))
                return ranked_result(tally, decision, rounds=rounds, notes=notes)
            loser = next(i for i in lowest if i not in decision.winners)
            notes.extend(decision.notes)
        elif note:
            notes.append(note)
        rounds.append(Round(shown, (ids[loser],), exhausted))
        exhausted += piles.eliminate(loser)


class _Piles:
    """Ballot patterns in piles by their current option; eliminating moves one pile."""

    def __init__(self, tally: Tally) -> None:
        n = len(tally.rules.options)
        self.patterns = list(tally.patterns)
        self.weights = [tally.patterns[pattern] for pattern in self.patterns]
        self.position = [0] * len(self.patterns)
        self.piles: list[list[int]] = [[] for _ in range(n)]
        self.counts = [0] * n
        self.active = [True] * n
        for k, pattern in enumerate(self.patterns):
            self.piles[pattern[0]].append(k)
            self.counts[pattern[0]] += self.weights[k]

    def eliminate(self, loser: int) -> int:
        """Move the loser's ballots to their next continuing option; return those exhausted."""
        active, position, piles, counts = self.active, self.position, self.piles, self.counts
        active[loser] = False
        exhausted = 0
        for k in piles[loser]:
            pattern = self.patterns[k]
            j = position[k] + 1
            while j < len(pattern) and not active[pattern[j]]:
                j += 1
            if j < len(pattern):
                position[k] = j
                piles[pattern[j]].append(k)
                counts[pattern[j]] += self.weights[k]
            else:
                exhausted += self.weights[k]
        piles[loser] = []
        counts[loser] = 0
        return exhausted


def _fewest(
    tally: Tally, lowest: list[int], continuing: int, history: list[list[int]]
) -> tuple[int | None, str]:
    """The option to eliminate among ``lowest`` and a note; None for a final-two tie."""
    if len(lowest) == 1:
        return lowest[0], ""
    rules = tally.rules
    number = len(history)
    opening = (
        f"Round {number}: {names(rules, lowest)} tied for the fewest votes "
        f"({history[-1][lowest[0]]})"
    )
    remaining, separated_in = list(lowest), 0
    for earlier in range(number - 2, -1, -1):
        counts = history[earlier]
        least = min(counts[i] for i in remaining)
        fewest = [i for i in remaining if counts[i] == least]
        if len(fewest) < len(remaining):
            remaining, separated_in = fewest, earlier + 1
            if len(remaining) == 1:
                break
    if len(remaining) == 1:
        loser = remaining[0]
        return loser, (
            f"{opening}; {rules.options[loser].id} is eliminated because it had fewer votes "
            f"in round {separated_in}, the latest earlier round that separates them."
        )
    if len(lowest) == continuing == 2:
        return None, ""
    loser = max(remaining)
    return loser, (
        f"{opening}; no earlier round separates {names(rules, remaining)}, so "
        f"{rules.options[loser].id} is eliminated because it was declared last among them."
    )
