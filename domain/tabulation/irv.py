"""Instant-runoff voting (IRV, "ranked choice", Hare), from ranking-pattern counts.

Each round counts every ballot for its highest-ranked continuing option. An option with
more than half of the continuing (not exhausted) ballots wins; otherwise the option with
the fewest votes is eliminated and its ballots move on. A ballot whose ranked options have
all been eliminated is exhausted; each round reports the exhausted ballots so far.

Tied for fewest votes, the option eliminated is found by "backwards" tie-breaking, the rule
the issue pins and many preferential counting rules use (there is no universal standard;
a drawing of lots is the usual alternative): the tied option with fewer votes in the most
recent earlier round where they differ, narrowing round by round for three or more. The
rounds shown then eliminate the one declared last among those no earlier round separates
(so the earlier-declared option survives), with a note. What that leaves open depends on
the election's pinned rule:

- ``TieBreak.DECLARED_ORDER``: nothing; the declared-last option goes, and a tie between
  the last two options (a tie for the win) goes to the earlier-declared one.
- ``TieBreak.REPORT``: every choice of elimination is explored (pref_voting's PUT,
  "parallel universes", applied only where backwards tie-breaking leaves a tie), and the
  winners are every option that wins for some choice, so that declared order decides
  nothing. More than one is a tie that says which elimination tie was left unsettled (the
  rounds shown are the declared-order ones, and a note says so); one is the winner, and
  the note on the declared-order elimination says it did not change the winner. A final
  two tied in every round are both winners.

  The search (``_Search``) is exact: a state is the continuing options and their order
  by earlier rounds' counts, all that backwards tie-breaking can read, and a state once
  explored is not explored again (the set of continuing options alone would not do: how
  they got there can decide a later tie, and which path came first would depend on
  declared order). It does not branch where the choice cannot matter (the tied have no
  votes, or their ballots would all be exhausted, and some other option continues) and
  stops where no option not yet known to win can still win (one another continuing
  option outnumbers by more than the ballots that rank it above that option). It is
  bounded by ``SEARCH_BUDGET``; past it, the result is that of the rounds shown, and a
  note says the search was cut short.

Speed: ballots are kept in piles by their current option, and a round only moves the pile
of the eliminated option, so a count is O(patterns x average moves), not O(patterns x
rounds); 10,000 patterns of 20 options take a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from domain.rules import TieBreak
from domain.tabulation.ranked import ranked_result
from domain.tabulation.result import Result, Round, Tie
from domain.tabulation.ties import Decision, decide, names

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally

# Work the search for other choices of elimination may do: each round costs its options
# (and the options it checks can still win, times the options), each elimination tie the
# ballot patterns of the tied, each branch the patterns it copies. A quarter of a second
# of CPU at most here; 40 options and 20-100 ballots of short rankings, where many options
# tie on a vote or two, reach it in about a third of elections, 20 options or 1,000
# ballots hardly ever. Counted, never timed, so that every run (the API's, an auditor's
# replay) reaches the same result.
SEARCH_BUDGET = 2_000_000


def irv(tally: Tally) -> Result:
    """IRV rounds until an option holds a majority of the continuing ballots."""
    if not tally.ballots:
        return ranked_result(tally, None)
    rules = tally.rules
    ids = rules.option_ids
    # Every choice of elimination is explored under REPORT, in the counting edition that
    # does so (an election pinned to edition 1 keeps the results it was served).
    report = rules.tie_break is TieBreak.REPORT and rules.counting >= 2
    piles = _Piles(tally)
    counts = piles.counts
    exhausted = 0
    history: list[list[int]] = []
    rounds: list[Round] = []
    notes: list[str] = []
    # Under REPORT: the first elimination tie left to declared order (a round and the count
    # as it stood before it), and the notes that tell of such eliminations.
    unsettled: _Unsettled | None = None
    declared_notes: list[int] = []
    while True:
        continuing = [i for i in range(len(ids)) if piles.active[i]]
        if len(continuing) == 1 and rounds:
            # The last two tied and one went: the other wins, with no round of its own. Such
            # a round would move ballots to their last option even where the voter left it
            # out (a ranking of all options but one counts as ranking that one last).
            decision = Decision((continuing[0],))
            break
        history.append(counts.copy())
        shown = {ids[i]: counts[i] for i in continuing}
        top = max(counts[i] for i in continuing)
        if 2 * top > sum(counts[i] for i in continuing) or len(continuing) == 1:
            rounds.append(Round(shown, (), exhausted))
            decision = Decision((next(i for i in continuing if counts[i] == top),))
            break
        low = min(counts[i] for i in continuing)
        lowest = [i for i in continuing if counts[i] == low]
        loser, note, left_open = _fewest(tally, lowest, len(continuing), history)
        if loser is None:
            why = f"in the final round with {_votes(low)} each, and no earlier round separates them"
            decision = decide(rules, lowest, why)
            if decision.tie is not None:
                rounds.append(Round(shown, (), exhausted))
                break
            loser = next(i for i in lowest if i not in decision.winners)
            notes.extend(decision.notes)
        elif note:
            if report and left_open:
                if low == 0:
                    note += " With no votes to transfer, the choice cannot change the winner."
                else:
                    declared_notes.append(len(notes))
                    if unsettled is None:
                        unsettled = _Unsettled(
                            len(history), left_open, low, piles.copy(), history[:-1]
                        )
            notes.append(note)
        rounds.append(Round(shown, (ids[loser],), exhausted))
        exhausted += piles.eliminate(loser)
    if unsettled is None:
        return ranked_result(tally, decision, rounds=rounds, notes=notes)
    return _with_every_choice(
        tally,
        decision,
        rounds=rounds,
        notes=notes,
        unsettled=unsettled,
        declared_notes=declared_notes,
    )


@dataclass(frozen=True, slots=True)
class _Unsettled:
    """An elimination tie that backwards tie-breaking left open, and the count before it."""

    round: int
    tied: list[int]
    votes: int
    piles: _Piles
    history: list[list[int]]


def _with_every_choice(
    tally: Tally,
    decision: Decision,
    *,
    rounds: list[Round],
    notes: list[str],
    unsettled: _Unsettled,
    declared_notes: list[int],
) -> Result:
    """The result under REPORT once every choice of elimination has been explored."""
    rules = tally.rules
    try:
        winners = _Search(tally).winners(unsettled.piles, unsettled.history)
    except _SearchBudgetSpentError:
        notes.append(
            "There were too many choices of elimination to examine every one (the tie-break "
            "rule reports a tie wherever the choice changes the winner), so the search was "
            "cut short: the result is that of the rounds shown, which eliminate the option "
            "declared last among the tied."
        )
        return ranked_result(tally, decision, rounds=rounds, notes=notes)
    if len(winners) == 1:
        for k in declared_notes:
            notes[k] += " It did not change the winner, who wins for every choice."
        return ranked_result(tally, decision, rounds=rounds, notes=notes)
    notes.append(
        "The rounds shown eliminate, in each elimination tie that no earlier round "
        "separates, the option declared last among the tied; other choices give the "
        "other winners."
    )
    tie = Tie(
        tuple(rules.options[i].id for i in winners),
        f"{names(rules, winners)} each win for some choice of elimination: in round "
        f"{unsettled.round}, {names(rules, unsettled.tied)} tied for the fewest votes "
        f"({_votes(unsettled.votes)} each) and no earlier round separates them, and the "
        "election's tie-break rule reports such a tie instead of breaking it.",
    )
    return ranked_result(tally, Decision(tuple(winners), tie=tie), rounds=rounds, notes=notes)


class _SearchBudgetSpentError(Exception):
    pass


class _Search:
    """Every option that wins for some choice in the elimination ties left open.

    Backwards tie-breaking keeps, of the tied, those whose votes round by round, latest
    first, are least in lexicographic order; so all that the earlier rounds tell the rest
    of the count is that order of the continuing options (a rank each, equal ranks for
    equal histories), and a state is the continuing options with their ranks: each round
    ranks by its own counts first, then by the ranks before it."""

    def __init__(self, tally: Tally) -> None:
        self.n = len(tally.rules.options)
        self.patterns = len(tally.patterns)
        self.budget = SEARCH_BUDGET
        self.found = 0  # bitmask of the winners found so far
        # ``pairwise[x][y]``: the ballots that may count for x while y continues. An option
        # some continuing y already outnumbers by more can never win: counts only grow, so
        # while both continue y keeps more votes than x, and x goes first or loses to y.
        self.pairwise = tally.pairwise
        self.done: set[tuple[int, tuple[int, ...]]] = set()

    def winners(self, piles: _Piles, history: list[list[int]]) -> list[int]:
        """The winners over every choice, from the count ``piles`` after ``history``."""
        continuing = [i for i in range(self.n) if piles.active[i]]
        ranks = [0] * self.n
        for earlier in history:
            ranks = _ranked(continuing, earlier, ranks)
        self._explore(piles, ranks)
        return [i for i in range(self.n) if self.found >> i & 1]

    def _spend(self, work: int) -> None:
        self.budget -= work
        if self.budget < 0:
            raise _SearchBudgetSpentError

    def _hopeful(self, continuing: list[int], counts: list[int]) -> bool:
        """Whether some continuing option not yet a known winner could still win."""
        for x in continuing:
            if not self.found >> x & 1:
                self._spend(len(continuing))
                most = self.pairwise[x]
                if all(counts[y] <= most[y] for y in continuing if y != x):
                    return True
        return False

    def _explore(self, piles: _Piles, ranks: list[int]) -> None:
        """Count on from ``piles`` (before its round), branching on every open choice."""
        counts = piles.counts
        while True:
            continuing = [i for i in range(self.n) if piles.active[i]]
            self._spend(self.n)
            if len(continuing) == 1:
                self.found |= 1 << continuing[0]
                return
            if not self._hopeful(continuing, counts):
                return  # no option that could still win is one not yet found
            top = max(counts[i] for i in continuing)
            if 2 * top > sum(counts[i] for i in continuing):
                self.found |= 1 << next(i for i in continuing if counts[i] == top)
                return
            low = min(counts[i] for i in continuing)
            lowest = [i for i in continuing if counts[i] == low]
            least = min(ranks[i] for i in lowest)
            remaining = [i for i in lowest if ranks[i] == least]  # backwards tie-breaking
            if len(remaining) > 1 and len(lowest) == len(continuing) == 2:
                self.found |= 1 << lowest[0] | 1 << lowest[1]  # a final tie, reported
                return
            key = (sum(1 << i for i in continuing), tuple(ranks[i] for i in continuing))
            ranks = _ranked(continuing, counts, ranks)
            self._spend(sum(len(piles.piles[i]) for i in remaining))
            if len(remaining) == 1 or (
                len(remaining) < len(continuing) and (low == 0 or all(map(piles.inert, remaining)))
            ):
                # Eliminating any of the tied moves no ballot to another option (they have
                # none, or their ballots are exhausted): every order of them leaves the
                # other options the same counts, round by round, so any one may go first.
                # Not where they are all the continuing options: which of them go first
                # decides which are the final two.
                piles.eliminate(remaining[-1])
                continue
            if key in self.done:
                return
            for loser in reversed(remaining):
                self._spend(self.patterns + self.n)
                branch = piles.copy()
                self._spend(len(branch.piles[loser]))
                branch.eliminate(loser)
                self._explore(branch, ranks)
            self.done.add(key)
            return


def _ranked(continuing: list[int], counts: list[int], ranks: list[int]) -> list[int]:
    """Ranks of the continuing options by ``counts``, then by their ranks before."""
    order = sorted((counts[i], ranks[i]) for i in continuing)
    dense = {pair: rank for rank, pair in enumerate(dict.fromkeys(order))}
    ranked = [0] * len(counts)
    for i in continuing:
        ranked[i] = dense[counts[i], ranks[i]]
    return ranked


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

    def copy(self) -> _Piles:
        """The same count, to go on with separately (patterns and weights are shared)."""
        other = _Piles.__new__(_Piles)
        other.patterns, other.weights = self.patterns, self.weights
        other.position = self.position.copy()
        other.piles = [pile.copy() for pile in self.piles]
        other.counts = self.counts.copy()
        other.active = self.active.copy()
        return other

    def inert(self, option: int) -> bool:
        """Whether eliminating ``option`` would move none of its ballots to another."""
        active, position = self.active, self.position
        for k in self.piles[option]:
            pattern = self.patterns[k]
            if any(active[j] for j in pattern[position[k] + 1 :]):
                return False
        return True

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


def _votes(count: int) -> str:
    return "1 vote" if count == 1 else f"{count} votes"


def _backwards(lowest: list[int], history: list[list[int]]) -> tuple[list[int], int]:
    """Those of ``lowest`` left by backwards tie-breaking, and the round that last narrowed
    them (0 if none did): fewest votes in the latest earlier round where they differ."""
    remaining, separated_in = list(lowest), 0
    for earlier in range(len(history) - 2, -1, -1):
        counts = history[earlier]
        least = min(counts[i] for i in remaining)
        fewest = [i for i in remaining if counts[i] == least]
        if len(fewest) < len(remaining):
            remaining, separated_in = fewest, earlier + 1
            if len(remaining) == 1:
                break
    return remaining, separated_in


def _fewest(
    tally: Tally, lowest: list[int], continuing: int, history: list[list[int]]
) -> tuple[int | None, str, list[int]]:
    """The option to eliminate among ``lowest`` (None for a final-two tie), a note, and
    the tied that no earlier round separates where declared order chose among them."""
    if len(lowest) == 1:
        return lowest[0], "", []
    rules = tally.rules
    opening = (
        f"Round {len(history)}: {names(rules, lowest)} tied for the fewest votes "
        f"({history[-1][lowest[0]]})"
    )
    remaining, separated_in = _backwards(lowest, history)
    if len(remaining) == 1:
        loser = remaining[0]
        return (
            loser,
            f"{opening}; {names(rules, [loser])} is eliminated because it had fewer votes "
            f"in round {separated_in}, the latest earlier round that separates them.",
            [],
        )
    if len(lowest) == continuing == 2:
        return None, "", []
    loser = max(remaining)
    return (
        loser,
        f"{opening}; no earlier round separates {names(rules, remaining)}, so "
        f"{names(rules, [loser])} is eliminated because it was declared last among them.",
        remaining,
    )
