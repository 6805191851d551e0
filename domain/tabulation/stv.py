"""Single transferable vote (STV), multi-seat, by the Scottish rules, from ranking patterns.

The count follows The Scottish Local Government Elections Order 2007, Schedule 1, rules
45-52:

- the quota (rule 46) is floor(valid ballots / (seats + 1)) + 1 (Droop);
- an option whose votes equal or exceed the quota is elected (rule 47);
- a surplus moves by the Weighted Inclusive Gregory Method (rule 48): every paper the
  elected option holds moves to its next continuing preference at the transfer value
  surplus x (the paper's value) / (the option's votes), truncated to five decimal places;
  papers with no next continuing preference are non-transferable (``exhausted``);
- of two or more surpluses the largest moves first, one per stage (rule 49); equal
  surpluses go by the most recent preceding stage at which the options' votes differed
  (the higher first);
- with no surplus to move, the option with the fewest votes is excluded and all its papers
  move at the value they came with (rule 50); a tie goes by the most recent preceding stage
  at which the tied options' votes differed (the lower is excluded), narrowing stage by
  stage for three or more (rule 51);
- once the continuing options are as many as the seats left, they are elected and nothing
  more moves (rule 52).

Where the rules draw lots (rules 49(3), 51(2)(b)), the election's pinned ``tie_break``
decides instead: ``declared_order`` moves the earlier-declared option's surplus first and
excludes the later-declared option (a note says so); ``report`` reports the tie. A tie for
exclusion among the last options, where excluding any one fills the last seats, is a tie
for those seats: like every method's tie for the win, each continuing option is a winner
(more winners than seats). Any other such tie stops the count there: the options elected
so far are the winners, and the seats left are unfilled. Two kinds of such tie are
settled by declared order under either rule because they cannot change who is elected,
each with a note: equal surpluses whose transfer, in any order, elects nobody, and options
tied on no votes at all whose exclusion leaves more continuing options than seats.

Arithmetic is exact: votes are integers in units of 1/100000 (``VOTE_UNIT``), which is what
truncating each transfer value to five places allows, shown as decimal texts.

Winners are the elected options in order of election; options elected at the same stage in
order of their votes (most first), equal votes in declared order.

Work: papers with one ranking always travel together, so the count keeps one pile entry
per ranking pattern. Each stage moves one option's pile (a surplus or an exclusion), and
there is at most one stage per elected or excluded option plus the first: O(patterns x
stages) at worst.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from domain.rules import TieBreak
from domain.tabulation.ranked import ranked_result
from domain.tabulation.result import VOTE_UNIT, Result, Stage, Tie, decimal_votes
from domain.tabulation.ties import Decision, names

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally

CONTINUING, ELECTED, EXCLUDED = 0, 1, 2


def droop_quota(ballots: int, seats: int) -> int:
    """Rule 46: votes (whole) that elect an option."""
    return ballots // (seats + 1) + 1


def stv(tally: Tally) -> Result:
    """Count ``tally`` by Scottish STV for the election's pinned number of seats."""
    rules = tally.rules
    seats = rules.seats or 1
    if not tally.ballots:
        return replace(ranked_result(tally, None), seats=seats)
    count = _Count(tally, seats)
    count.run()
    tie = count.tie
    decision = Decision(tuple(count.elected), tie=tie)
    elected_in = {
        option: number for number, stage in enumerate(count.stages, 1) for option in stage.elected
    }
    extra = [{"elected_in_stage": elected_in.get(option.id)} for option in rules.options]
    result = ranked_result(tally, decision, extra=extra, notes=count.notes)
    return replace(result, seats=seats, quota=count.quota, stages=tuple(count.stages))


class _Count:
    """The state of one count: piles of ranking patterns per option, at their values."""

    def __init__(self, tally: Tally, seats: int) -> None:
        rules = tally.rules
        n = len(rules.options)
        self.rules = rules
        self.ids = rules.option_ids
        self.vacancies = seats
        self.quota = droop_quota(tally.ballots, seats) * VOTE_UNIT
        self.patterns = list(tally.patterns)
        self.weights = [tally.patterns[pattern] for pattern in self.patterns]
        self.position = [0] * len(self.patterns)
        self.value = [VOTE_UNIT] * len(self.patterns)  # of one paper, in units
        self.piles: list[list[int]] = [[] for _ in range(n)]
        self.votes = [0] * n
        self.status = [CONTINUING] * n
        self.transferred = [False] * n  # an elected option's surplus has moved
        self.exhausted = 0
        self.history: list[list[int]] = []  # votes at the end of each stage
        self.stages: list[Stage] = []
        self.elected: list[int] = []
        self.notes: list[str] = []
        self.tie: Tie | None = None
        for k, pattern in enumerate(self.patterns):
            self.piles[pattern[0]].append(k)
            self.votes[pattern[0]] += self.weights[k] * VOTE_UNIT

    # -- the count -----------------------------------------------------------------------

    def run(self) -> None:
        self._end_stage("first_preferences")
        while self.vacancies and self.tie is None:
            pending = [
                i
                for i in range(len(self.ids))
                if self.status[i] == ELECTED
                and not self.transferred[i]
                and self.votes[i] > self.quota
            ]
            if pending:
                self._surplus(pending)
            else:
                self._exclude()

    def _surplus(self, pending: list[int]) -> None:
        largest = max(self.votes[i] for i in pending)
        tied = [i for i in pending if self.votes[i] == largest]
        source = self._look_back(tied, highest=True) if len(tied) > 1 else tied[0]
        if source is None:
            source = self._unresolved_surplus(tied)
            if source is None:
                return
        total = self.votes[source]
        surplus = total - self.quota
        self._move(source, lambda value: surplus * value // total)
        self.votes[source] = self.quota
        self.transferred[source] = True
        self._end_stage(
            "surplus",
            source=source,
            surplus=surplus,
            transfer_value=surplus * VOTE_UNIT // total,
        )

    def _exclude(self) -> None:
        continuing = self._continuing()
        fewest = min(self.votes[i] for i in continuing)
        tied = [i for i in continuing if self.votes[i] == fewest]
        loser = self._look_back(tied, highest=False) if len(tied) > 1 else tied[0]
        if loser is None:
            loser = self._unresolved_exclusion(tied, len(continuing))
            if loser is None:
                return
        self.status[loser] = EXCLUDED
        if len(continuing) - 1 > self.vacancies:
            self._move(loser, lambda value: value)
        # else rule 52: the rest are elected by _end_stage, and no paper moves.
        self.votes[loser] = 0
        self._end_stage("exclusion", source=loser, excluded=(loser,))

    def _move(self, source: int, value_of: Callable[[int], int]) -> None:
        """Move every paper ``source`` holds to its next continuing preference."""
        status, position, piles, votes = self.status, self.position, self.piles, self.votes
        for k in piles[source]:
            pattern = self.patterns[k]
            value = value_of(self.value[k])
            j = position[k] + 1
            while j < len(pattern) and status[pattern[j]] != CONTINUING:
                j += 1
            if j < len(pattern):
                position[k] = j
                self.value[k] = value
                piles[pattern[j]].append(k)
                votes[pattern[j]] += self.weights[k] * value
            else:
                self.exhausted += self.weights[k] * value
        piles[source] = []

    def _end_stage(
        self,
        action: str,
        *,
        source: int | None = None,
        surplus: int | None = None,
        transfer_value: int | None = None,
        excluded: tuple[int, ...] = (),
    ) -> None:
        """Rules 47 and 52 at the end of a stage, then the stage's record."""
        continuing = self._continuing()
        ids = self.ids
        shown = {ids[i]: self.votes[i] for i in continuing}  # before any is elected
        reached = [i for i in continuing if self.votes[i] >= self.quota]
        elected = self._in_order(reached)[: self.vacancies]
        self._elect(elected)
        continuing = self._continuing()
        if self.vacancies and len(continuing) == self.vacancies:
            last = self._in_order(continuing)
            self._elect(last)
            elected += last
            self.notes.append(
                f"Stage {len(self.stages) + 1}: {names(self.rules, last)} "
                f"{'is' if len(last) == 1 else 'are'} elected without reaching the quota, "
                "as the continuing options are as many as the seats left."
            )
        self.history.append(self.votes.copy())
        self.stages.append(
            Stage(
                action,
                shown,
                source=None if source is None else ids[source],
                surplus=surplus,
                transfer_value=transfer_value,
                elected=tuple(ids[i] for i in elected),
                excluded=tuple(ids[i] for i in excluded),
                exhausted=self.exhausted,
            )
        )

    def _elect(self, options: list[int]) -> None:
        for i in options:
            self.status[i] = ELECTED
            self.elected.append(i)
            self.vacancies -= 1

    def _in_order(self, options: list[int]) -> list[int]:
        """Most votes first, equal votes in declared order."""
        return sorted(options, key=lambda i: (-self.votes[i], i))

    def _continuing(self) -> list[int]:
        return [i for i, state in enumerate(self.status) if state == CONTINUING]

    # -- ties ----------------------------------------------------------------------------

    def _look_back(self, tied: list[int], *, highest: bool) -> int | None:
        """Rules 49(2) and 51(2)(a): the most recent preceding stage that separates them."""
        remaining = list(tied)
        for earlier in range(len(self.history) - 2, -1, -1):
            votes = self.history[earlier]
            pick = max if highest else min
            best = pick(votes[i] for i in remaining)
            narrowed = [i for i in remaining if votes[i] == best]
            if len(narrowed) < len(remaining):
                remaining = narrowed
                if len(remaining) == 1:
                    what = "surplus moves first" if highest else "is excluded"
                    self.notes.append(
                        f"Stage {len(self.stages) + 1}: {names(self.rules, tied)} are tied "
                        f"on {decimal_votes(self.votes[tied[0]])} votes; "
                        f"{self.ids[remaining[0]]} {what} as it had "
                        f"{'more' if highest else 'fewer'} votes at the end of stage "
                        f"{earlier + 1}, the latest earlier stage that separates them."
                    )
                    return remaining[0]
        return None

    def _unresolved_surplus(self, tied: list[int]) -> int | None:
        """Equal surpluses that no earlier stage separates (rule 49(3))."""
        first = min(tied)
        stage = len(self.stages) + 1
        if not any(self._transfer_elects(i) for i in tied):
            self.notes.append(
                f"Stage {stage}: {names(self.rules, tied)} have equal surpluses at every "
                f"stage; {self.ids[first]}'s moves first (declared first), the order "
                "changing nothing as no transfer of them elects an option."
            )
            return first
        why = (
            f"with equal surpluses at every stage, and the order of their transfer "
            f"decides who is elected (stage {stage})"
        )
        return self._decide(tied, first, why, f"{self.ids[first]}'s surplus moves first")

    def _unresolved_exclusion(self, tied: list[int], continuing: int) -> int | None:
        """Options tied for exclusion at every stage (rule 51(2)(b))."""
        last = max(tied)
        stage = len(self.stages) + 1
        if self.votes[last] == 0 and continuing - len(tied) >= self.vacancies:
            self.notes.append(
                f"Stage {stage}: {names(self.rules, tied)} have no votes; "
                f"{self.ids[last]} is excluded first (declared last), the order changing "
                "nothing as every one of them is excluded before any seat is filled."
            )
            return last
        why = (
            f"for exclusion with {decimal_votes(self.votes[last])} votes at every stage "
            f"(stage {stage})"
        )
        return self._decide(tied, last, why, f"{self.ids[last]} is excluded")

    def _decide(self, tied: list[int], chosen: int, why: str, outcome: str) -> int | None:
        """The pinned tie-break rule where the Scottish rules draw lots."""
        rules = self.rules
        if rules.tie_break is TieBreak.DECLARED_ORDER:
            self.notes.append(
                f"{names(rules, tied)} are tied {why}; {outcome} by the declared order "
                "(tie-break rule: declared order)."
            )
            return chosen
        left = self.vacancies
        continuing = self._continuing()
        if len(continuing) - 1 == left and set(tied) <= set(continuing):
            # A tie for the last seats: like every method's tie for the win, each tied
            # option is a winner (with the continuing ones elected whichever goes).
            self._elect(self._in_order(continuing))
            self.tie = Tie(
                tuple(self.ids[i] for i in sorted(tied)),
                f"{names(rules, tied)} are tied {why} for the last "
                f"seat{'' if left == 1 else 's'}, and the election's tie-break rule reports "
                "such a tie instead of breaking it.",
            )
            return None
        self.tie = Tie(
            tuple(self.ids[i] for i in sorted(tied)),
            f"{names(rules, tied)} are tied {why}, and the election's tie-break rule "
            f"reports such a tie instead of breaking it: the count stops with {left} "
            f"seat{'' if left == 1 else 's'} unfilled.",
        )
        return None

    def _transfer_elects(self, source: int) -> bool:
        """Would moving ``source``'s surplus now bring a continuing option to the quota?"""
        trial = copy.copy(self)
        trial.position = self.position.copy()
        trial.value = self.value.copy()
        trial.votes = self.votes.copy()
        trial.piles = [pile.copy() for pile in self.piles]
        total = self.votes[source]
        surplus = total - self.quota
        trial._move(source, lambda value: surplus * value // total)
        return any(trial.votes[i] >= self.quota for i in self._continuing())
