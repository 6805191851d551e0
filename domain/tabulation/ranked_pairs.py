"""Ranked Pairs (Tideman, Social Choice and Welfare 4, 1987), by margins.

Every pair whose margin is positive is a majority; majorities are locked from the largest
margin down, each unless it would close a cycle with those already locked, and the options
no locked pair beats are the winners. Strength is the margin, pref_voting's default;
Wikipedia's "Ranked pairs" sorts by winning votes, which orders pairs the same way when
every ballot is a complete ranking (the two differ only with partial rankings).

The method does not say in which order majorities of equal margin are locked, and that
order can change the winner. Cardinal Vote never lets an accident decide it:

- ``TieBreak.DECLARED_ORDER``: equal majorities are locked in declared order of their
  winner, then of their loser (a fixed tie-breaking ranking of the options, in the spirit
  of Zavist and Tideman's 1989 TBRC; pref_voting's ``ranked_pairs_tb`` locks equal
  majorities in this order too); when that order decided something a note says so, and
  among several unbeaten options (tied with each other) the earliest declared wins, as
  TBRC's own pair would lock it (``ranked_pairs_tb`` can name another there).
- ``TieBreak.REPORT``: every option that wins under *some* order of the equal majorities
  is a winner ("parallel universes", as pref_voting's ``ranked_pairs``). Options are
  bounded cheaply first (see ``parallel_winners``); the search for the rest locks forced
  pairs without branching, never locks a pair against the option it tries to make win,
  and remembers dead ends by the reachability of the locked graph;
  deciding this set is NP-complete in general (Brill and Fischer, AAAI 2012), so the
  search is bounded by ``SEARCH_BUDGET`` (pairs examined, times the options); past it,
  options not yet ruled out are listed too, and the tie says so (only elections with
  many options and many equal margins come near it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from domain.rules import TieBreak
from domain.tabulation.ranked import margins, ranked_result
from domain.tabulation.result import Result, Tie, name
from domain.tabulation.ties import Decision, decide, names

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally

# Pairs examined, each weighed by the options a lock updates (a pair of 100 options costs
# 20 times one of 5): half a second of search at most, whatever the size (100 options,
# random rankings: 0.5 s in all here, where a budget of pairs alone took 2.4 s on the
# event loop), and up to 10 options as much search as a budget of 100,000 pairs gave
# (review helper-47: less made some 8-10 option elections inexact). Counted, never timed,
# so that every run (the API's, an auditor's replay) reaches the same result.
SEARCH_BUDGET = 1_000_000

Pair = tuple[int, int]
Reach = tuple[int, ...]  # reach[u]: bitmask of the options that u beats through locked pairs


def ranked_pairs(tally: Tally) -> Result:
    """Ranked Pairs winners under the election's pinned tie-break rule."""
    if not tally.ballots:
        return ranked_result(tally, None)
    rules = tally.rules
    m = margins(tally)
    groups = majorities(m)
    if rules.tie_break is TieBreak.DECLARED_ORDER:
        reach, notes = _lock_in_declared_order(tally, groups, m)
        decision = decide(rules, unbeaten(reach), "as unbeaten after every majority is locked")
        return ranked_result(tally, decision, notes=notes)
    winners, exact = parallel_winners(m, groups)
    if len(winners) == 1:
        return ranked_result(tally, Decision(tuple(winners)))
    caveat = (
        ""
        if exact
        else " (there were too many orders to examine every one; options that could not "
        "be ruled out are included)"
    )
    tie = Tie(
        tuple(rules.options[i].id for i in winners),
        f"{names(rules, winners)} each end unbeaten under some order of the majorities "
        f"with equal margins, which Ranked Pairs leaves open{caveat}; the election's "
        "tie-break rule reports such a tie.",
    )
    return ranked_result(tally, Decision(tuple(winners), tie=tie))


def majorities(m: list[list[int]]) -> list[list[Pair]]:
    """Pairs (winner, loser) with a positive margin, grouped by margin, largest first."""
    n = len(m)
    by_margin: dict[int, list[Pair]] = {}
    for a in range(n):
        for b in range(n):
            if m[a][b] > 0:
                by_margin.setdefault(m[a][b], []).append((a, b))
    return [sorted(by_margin[margin]) for margin in sorted(by_margin, reverse=True)]


def closes_cycle(reach: Reach, pair: Pair) -> bool:
    winner, loser = pair
    return bool(reach[loser] >> winner & 1)


def lock(reach: Reach, pair: Pair) -> Reach:
    winner, loser = pair
    gained = reach[loser] | 1 << loser
    return tuple(r | gained if u == winner or r >> winner & 1 else r for u, r in enumerate(reach))


def unbeaten(reach: Reach) -> list[int]:
    beaten = 0
    for r in reach:
        beaten |= r
    return [u for u in range(len(reach)) if not beaten >> u & 1]


def _lock_in_declared_order(
    tally: Tally, groups: list[list[Pair]], m: list[list[int]]
) -> tuple[Reach, list[str]]:
    ids = tally.rules.option_ids
    reach: Reach = (0,) * len(m)
    notes: list[str] = []
    for group in groups:
        before = reach
        decided: list[str] = []
        for pair in group:
            if closes_cycle(reach, pair):
                if not closes_cycle(before, pair):
                    decided.append(f"{name(ids[pair[0]])}>{name(ids[pair[1]])}")
            else:
                reach = lock(reach, pair)
        if decided:
            margin = m[group[0][0]][group[0][1]]
            notes.append(
                f"Majorities with margin {margin} were locked in declared option order "
                f"(tie-break rule: declared order), so {', '.join(decided)} "
                f"{'was' if len(decided) == 1 else 'were'} not locked."
            )
    return reach, notes


class _SearchBudgetSpentError(Exception):
    pass


def parallel_winners(m: list[list[int]], groups: list[list[Pair]]) -> tuple[list[int], bool]:
    """Options unbeaten under some order of equal majorities; False if the search gave up.

    Cheap bounds first: an option some majority beats by more than its widest path back
    can never win; an option unbeaten when its own pairs go first and pairs against it
    last certainly can. Only options between the bounds are searched for."""
    n = len(m)
    widest = _widest_paths(m)
    possible = [
        c for c in range(n) if all(widest[c][x] >= m[x][c] for x in range(n) if m[x][c] > 0)
    ]
    proven: set[int] = set()
    for c in possible:
        if c not in proven:
            proven.update(_unbeaten_when_favoured(n, groups, c))
    budget = [SEARCH_BUDGET]
    exact = True
    for c in possible:
        if c in proven:
            continue
        try:
            found = _search(n, groups, c, budget)
        except _SearchBudgetSpentError:
            exact = False
            proven.add(c)  # not ruled out: listed, and the tie says so
            continue
        proven.update(found)
    return sorted(proven), exact


def _widest_paths(m: list[list[int]]) -> list[list[int]]:
    n = len(m)
    widest = [[max(m[a][b], 0) for b in range(n)] for a in range(n)]
    for via in range(n):
        for a in range(n):
            for b in range(n):
                width = min(widest[a][via], widest[via][b])
                if a != b and width > widest[a][b]:
                    widest[a][b] = width
    return widest


def _unbeaten_when_favoured(n: int, groups: list[list[Pair]], c: int) -> list[int]:
    reach: Reach = (0,) * n
    for group in groups:
        # c's wins first, c's defeats last; the rest keep declared order (sort is stable)
        for pair in sorted(group, key=lambda p: (p[1] == c) - (p[0] == c)):
            if not closes_cycle(reach, pair):
                reach = lock(reach, pair)
    return unbeaten(reach)


def _search(n: int, groups: list[list[Pair]], target: int, budget: list[int]) -> list[int]:
    """The options unbeaten in some order where ``target`` is unbeaten ([] if none)."""
    dead: set[tuple[int, Reach]] = set()

    def explore(g: int, reach: Reach) -> list[int]:
        if g == len(groups):
            return unbeaten(reach)
        if (g, reach) in dead or not _still_possible(reach, groups, g, target):
            return []
        for outcome in _outcomes(reach, groups[g], budget, target):
            found = explore(g + 1, outcome)
            if found:
                return found
        dead.add((g, reach))
        return []

    return explore(0, (0,) * n)


def _still_possible(reach: Reach, groups: list[list[Pair]], g: int, target: int) -> bool:
    """Whether every majority over ``target`` still to come could meet a path back from it.

    A majority x>target is skipped only if target already reaches x through locked pairs
    of at least its margin, so target must reach x using what is locked and what is yet
    to come up to that group (never pairs against target itself)."""
    n = len(reach)
    beyond = [0] * n  # edges not yet locked, as bitmasks of losers per winner
    for group in groups[g:]:
        for winner, loser in group:
            if loser != target:
                beyond[winner] |= 1 << loser
        against = [winner for winner, loser in group if loser == target]
        if against:
            seen = reach[target] | 1 << target
            frontier = seen
            while frontier:
                step = 0
                for u in range(n):
                    if frontier >> u & 1:
                        step |= beyond[u] | reach[u]
                frontier = step & ~seen
                seen |= step
            if any(not seen >> x & 1 for x in against):
                return False
    return True


def _outcomes(reach: Reach, group: list[Pair], budget: list[int], target: int) -> Iterator[Reach]:
    """Each locked graph that some order of ``group`` can leave with ``target`` unbeaten."""
    seen: set[Reach] = set()

    def extend(reach: Reach, pending: list[Pair], skipped: list[Pair]) -> Iterator[Reach]:
        budget[0] -= (len(pending) + len(skipped)) * len(reach)
        if budget[0] < 0:
            raise _SearchBudgetSpentError
        pending = [pair for pair in pending if not closes_cycle(reach, pair)]
        everything = reach
        for pair in pending:
            everything = lock(everything, pair)
        # A pair left out must end up closing a cycle, or the order was not a real one.
        if any(not closes_cycle(everything, pair) for pair in skipped):
            return
        forced = [pair for pair in pending if not closes_cycle(everything, pair)]
        if any(loser == target for _, loser in forced):
            return
        for pair in forced:
            reach = lock(reach, pair)
        pending = [pair for pair in pending if pair not in forced]
        if not pending:
            if reach not in seen and all(closes_cycle(reach, pair) for pair in skipped):
                seen.add(reach)
                yield reach
            return
        first, rest = pending[0], pending[1:]
        if first[1] != target:
            yield from extend(lock(reach, first), rest, skipped)
        yield from extend(reach, rest, [*skipped, first])

    return extend(reach, list(group), [])
