"""Single transferable vote (STV), multi-seat, by the Scottish rules, from ranking patterns.

The count follows The Scottish Local Government Elections Order 2007, Schedule 1, rules
45-52, whose numbers are cited below. The Scottish Local Government Elections Order 2011
(SSI 2011/399), which replaced it from the elections of May 2012, carries these rules one
number higher (46-53):

- the quota (rule 46) is floor(valid ballots / (seats + 1)) + 1 (Droop);
- an option whose votes equal or exceed the quota is elected (rule 47);
- a surplus moves by the Weighted Inclusive Gregory Method (rule 48): every paper the
  elected option holds moves to its next continuing preference at the transfer value
  surplus x (the paper's value) / (the option's votes), truncated to five decimal places;
  papers with no next continuing preference are non-transferable (``exhausted``);
- of two or more surpluses the largest moves first, one per stage (rule 49); equal
  surpluses go by the most recent preceding stage at which the options' votes differed
  (the higher first), narrowing stage by stage for three or more;
- with no surplus to move, the option with the fewest votes is excluded and all its papers
  move at the value they came with (rule 50); a tie goes by the most recent preceding stage
  at which the tied options' votes differed (the lower is excluded), narrowing stage by
  stage for three or more (rule 51);
- once the continuing options are as many as the seats left, they are elected and nothing
  more moves (rule 52).

Where the rules draw lots (rules 49(3), 51(2)(b)), among the options the look-back leaves
(an option an earlier stage set aside stays out), the stages shown move the
earlier-declared surplus first and exclude the later-declared option, with a note. What
that leaves open depends on the election's pinned ``tie_break``:

- ``declared_order``: nothing; the note says the declared order decided.
- ``report``: every choice in every such tie is counted (``_Search``), so that declared
  order picks no winner. If every choice elects the same options, they are the winners,
  with no tie, and the notes say the choice did not change who is elected. Otherwise the
  winners are the options elected for every choice, then the options elected for some
  choices but not all, in declared order; the result's tie names the latter, how many
  seats they contend for, and the first tie left open; a note says the stages shown are
  those of declared order. Every seat is filled either way: more winners than seats means
  a tie. Ties whose order cannot matter are not branched on: options tied for exclusion
  whose papers would give no option a vote, when all of them go before any seat is
  filled, and equal surpluses whose papers would give no option a vote.

  The search is exact: a state is the options' states, every paper's holder and value,
  and the order of the live options by the earlier stages' votes, all that the look-back
  can read, and a state once explored is not explored again; it stops where a count can
  no longer add an option to those elected for some choice nor take one from those
  elected for every choice. It is bounded by ``SEARCH_BUDGET`` (work counted, never
  timed); past it, the result is that of the stages shown, and a note says the search was
  cut short.

Arithmetic is exact: votes are integers in units of 1/100000 (``VOTE_UNIT``), which is what
truncating each transfer value to five places allows, shown as decimal texts.

Winners are the elected options in order of election; options elected at the same stage in
order of their votes (most first), equal votes in declared order (a reported tie adds its
options after them, as above).

Work: papers with one ranking always travel together, so the count keeps one pile entry
per ranking pattern. Each stage moves one option's pile (a surplus or an exclusion), and
there is at most one stage per elected or excluded option plus the first: O(patterns x
stages) at worst. The search under ``report`` repeats that per branch: 1,000 ballots of
20 options hardly ever reach its budget, but 40 or more options with a few dozen short
ballots, where many options tie on a vote or two, usually do (about 0.1 s of CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from domain.rules import TieBreak
from domain.tabulation.ranked import ranked_result
from domain.tabulation.result import VOTE_UNIT, Result, Stage, Tie, decimal_votes, name
from domain.tabulation.ties import Decision, names

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally

CONTINUING, ELECTED, EXCLUDED = 0, 1, 2
SURPLUS, EXCLUSION = "surplus", "exclusion"

# Work the search for other choices in unsettled ties may do under ``report``: each stage
# costs its options and the papers it moves, each tie and each branch the patterns and
# options it keys or copies. Counted, never timed, so that every run (the API's, an
# auditor's replay) reaches the same result; as IRV's, about a quarter of a second of CPU.
SEARCH_BUDGET = 2_000_000


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
    decision = Decision(tuple(count.elected))
    if count.unsettled is not None:
        decision = _with_every_choice(count, count.unsettled, seats)
    elected_in = {
        option: number for number, stage in enumerate(count.stages, 1) for option in stage.elected
    }
    extra = [{"elected_in_stage": elected_in.get(option.id)} for option in rules.options]
    result = ranked_result(tally, decision, extra=extra, notes=count.notes)
    return replace(result, seats=seats, quota=count.quota, stages=tuple(count.stages))


@dataclass(frozen=True, slots=True)
class _Unsettled:
    """The first tie, under ``report``, that no earlier stage separates and whose choice
    may matter: its stage, kind and options, and the count as it stood before it."""

    stage: int
    kind: str
    tied: list[int]
    votes: int
    count: _Count


def _with_every_choice(count: _Count, unsettled: _Unsettled, seats: int) -> Decision:
    """The decision under ``report`` once every choice in the unsettled ties is explored."""
    rules = count.rules
    search = _Search()
    try:
        search.explore(unsettled.count.copy(recording=False))
    except _SearchBudgetSpentError:
        count.notes.append(
            "There were too many choices in the ties that no earlier stage separates to "
            "examine every one (the tie-break rule reports a tie wherever the choice changes "
            "who is elected), so the search was cut short: the result is that of the stages "
            "shown, which settle each such tie by declared order."
        )
        return Decision(tuple(count.elected))
    if search.every == search.some:
        for k in count.declared_notes:
            count.notes[k] += (
                " It did not change who is elected: the same options are elected for every choice."
            )
        return Decision(tuple(count.elected))
    every = {i for i in range(len(rules.options)) if (search.every or 0) >> i & 1}
    some = [i for i in range(len(rules.options)) if search.some >> i & 1 and i not in every]
    left = seats - len(every)
    count.notes.append(
        "The stages shown settle each tie that no earlier stage separates by declared order "
        "(the earlier-declared surplus moves first, the later-declared option is excluded); "
        "other choices elect other options."
    )
    seat_text = f"{left} seat{'' if left == 1 else 's'}"
    others = (
        f"{left} seat{' is' if left == 1 else 's are'} left once {names(rules, sorted(every))} "
        f"{'is' if len(every) == 1 else 'are'} elected for every choice"
        if every
        else f"the {seat_text} {'goes' if left == 1 else 'go'} to different options for "
        "different choices"
    )
    if unsettled.kind == SURPLUS:
        what = f"with equal surpluses ({decimal_votes(unsettled.votes)} votes each)"
    else:
        what = f"for exclusion with {decimal_votes(unsettled.votes)} votes each"
    tie = Tie(
        tuple(rules.options[i].id for i in some),
        f"{names(rules, some)} contend for {seat_text}, each elected for some choice and not "
        f"for every one ({others}): at stage {unsettled.stage}, "
        f"{names(rules, unsettled.tied)} were tied {what} and no earlier stage separates "
        "them, and the election's tie-break rule reports such a tie instead of breaking it.",
    )
    sure = [i for i in count.elected if i in every]
    return Decision((*sure, *some), tie=tie)


class _SearchBudgetSpentError(Exception):
    pass


class _Search:
    """Every set of options elected for some choice in the ties no earlier stage separates.

    A state is the count before a tie: the options' states, every paper's holder and value,
    and the order of the live options by the earlier stages' votes, which is all that the
    look-back of rules 49(2) and 51(2)(a) can read (it keeps, of the tied, those whose
    votes stage by stage, latest first, are greatest or least in lexicographic order). A
    state once explored is not explored again."""

    def __init__(self) -> None:
        self.budget = SEARCH_BUDGET
        self.some = 0  # bitmask: the options elected for some choice explored so far
        self.every: int | None = None  # and those elected for every one
        self.done: set[tuple[tuple[int, ...], ...]] = set()

    def _spend(self, work: int) -> None:
        self.budget -= work
        if self.budget < 0:
            raise _SearchBudgetSpentError

    def explore(self, count: _Count) -> None:
        """Count on from ``count``, branching on every tie whose choice may matter."""
        n = len(count.ids)
        while count.vacancies:
            if self.every is not None:
                # Whatever this count goes on to elect is its elected options and some of its
                # continuing ones: stop where that can add nothing to what is known.
                status = count.status
                elected = sum(1 << i for i in range(n) if status[i] == ELECTED)
                possible = elected | sum(1 << i for i in range(n) if status[i] == CONTINUING)
                if possible & ~self.some == 0 and self.every & ~elected == 0:
                    return
            kind, tied, remaining = count.next_step()
            self._spend(n * (1 + len(tied)))
            if len(remaining) > 1 and not count.inert(kind, remaining):
                self._spend(len(count.patterns) + n * len(count.history))
                key = count.key()
                if key in self.done:
                    return
                for option in remaining:
                    self._spend(len(count.patterns) + n * 4)
                    branch = count.copy(recording=False)
                    self._spend(len(branch.piles[option]))
                    branch.apply(kind, option)
                    self.explore(branch)
                self.done.add(key)
                return
            option = remaining[0] if kind == SURPLUS else remaining[-1]
            self._spend(len(count.piles[option]))
            count.apply(kind, option)
        elected = sum(1 << i for i in count.elected)
        self.some |= elected
        self.every = elected if self.every is None else self.every & elected


class _Count:
    """The state of one count: piles of ranking patterns per option, at their values."""

    def __init__(self, tally: Tally, seats: int) -> None:
        rules = tally.rules
        n = len(rules.options)
        self.rules = rules
        self.ids = rules.option_ids
        self.report = rules.tie_break is TieBreak.REPORT
        self.recording = True  # notes and stages (a search's counts keep neither)
        self.vacancies = seats
        self.quota = droop_quota(tally.ballots, seats) * VOTE_UNIT
        self.patterns = list(tally.patterns)
        self.weights = [tally.patterns[pattern] for pattern in self.patterns]
        self.position = [0] * len(self.patterns)  # past the end: non-transferable
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
        # Under REPORT: the first tie left to declared order that may matter, and the notes
        # that tell of such choices.
        self.unsettled: _Unsettled | None = None
        self.declared_notes: list[int] = []
        for k, pattern in enumerate(self.patterns):
            self.piles[pattern[0]].append(k)
            self.votes[pattern[0]] += self.weights[k] * VOTE_UNIT

    def copy(self, *, recording: bool) -> _Count:
        """The same count, to go on with separately (patterns and weights are shared)."""
        other = _Count.__new__(_Count)
        other.__dict__.update(self.__dict__)
        other.recording = recording
        other.position = self.position.copy()
        other.value = self.value.copy()
        other.piles = [pile.copy() for pile in self.piles]
        other.votes = self.votes.copy()
        other.status = self.status.copy()
        other.transferred = self.transferred.copy()
        other.history = self.history.copy()  # the stages' lists are never changed
        other.stages = self.stages.copy() if recording else []
        other.elected = self.elected.copy()
        other.notes = self.notes.copy() if recording else []
        other.unsettled = None
        other.declared_notes = []
        return other

    # -- the count -----------------------------------------------------------------------

    def run(self) -> None:
        self._end_stage("first_preferences")
        while self.vacancies:
            kind, tied, remaining = self.next_step()
            if len(remaining) == 1:
                option = remaining[0]
            else:
                option = self._unresolved(kind, tied, remaining)
            self.apply(kind, option)

    def next_step(self) -> tuple[str, list[int], list[int]]:
        """What the next stage does: a surplus (rule 49) or an exclusion (rule 50), the
        options tied for it and those of them the earlier stages do not separate."""
        pending = [
            i
            for i in range(len(self.ids))
            if self.status[i] == ELECTED and not self.transferred[i] and self.votes[i] > self.quota
        ]
        if pending:
            largest = max(self.votes[i] for i in pending)
            tied = [i for i in pending if self.votes[i] == largest]
            return SURPLUS, tied, self._look_back(tied, highest=True)
        continuing = self._continuing()
        fewest = min(self.votes[i] for i in continuing)
        tied = [i for i in continuing if self.votes[i] == fewest]
        return EXCLUSION, tied, self._look_back(tied, highest=False)

    def apply(self, kind: str, option: int) -> None:
        """Move ``option``'s surplus, or exclude it, as the next stage."""
        if kind == SURPLUS:
            total = self.votes[option]
            surplus = total - self.quota
            self._move(option, lambda value: surplus * value // total)
            self.votes[option] = self.quota
            self.transferred[option] = True
            self._end_stage(
                "surplus",
                source=option,
                surplus=surplus,
                transfer_value=surplus * VOTE_UNIT // total,
            )
            return
        continuing = len(self._continuing())
        self.status[option] = EXCLUDED
        if continuing - 1 > self.vacancies:
            self._move(option, lambda value: value)
        # else rule 52: the rest are elected by _end_stage, and no paper moves.
        self.votes[option] = 0
        self._end_stage("exclusion", source=option, excluded=(option,))

    def _move(self, source: int, value_of: Callable[[int], int]) -> None:
        """Move every paper ``source`` holds to its next continuing preference."""
        status, position, piles, votes = self.status, self.position, self.piles, self.votes
        for k in piles[source]:
            pattern = self.patterns[k]
            value = value_of(self.value[k])
            j = position[k] + 1
            while j < len(pattern) and status[pattern[j]] != CONTINUING:
                j += 1
            position[k] = j
            self.value[k] = value
            if j < len(pattern):
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
            if self.recording:
                self.notes.append(
                    f"Stage {len(self.history) + 1}: {names(self.rules, last)} "
                    f"{'is' if len(last) == 1 else 'are'} elected without reaching the "
                    "quota, as the continuing options are as many as the seats left."
                )
        self.history.append(self.votes.copy())
        if self.recording:
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

    def _look_back(self, tied: list[int], *, highest: bool) -> list[int]:
        """Rules 49(2) and 51(2)(a): the most recent preceding stage that separates them,
        narrowing stage by stage; those of ``tied`` that no earlier stage separates."""
        remaining = list(tied)
        separated_in = 0
        pick = max if highest else min
        for earlier in range(len(self.history) - 2, -1, -1):
            votes = self.history[earlier]
            best = pick(votes[i] for i in remaining)
            narrowed = [i for i in remaining if votes[i] == best]
            if len(narrowed) < len(remaining):
                remaining, separated_in = narrowed, earlier + 1
                if len(remaining) == 1:
                    break
        if self.recording and separated_in and len(remaining) == 1:
            what = "'s surplus moves first" if highest else " is excluded"
            self.notes.append(
                f"Stage {len(self.history) + 1}: {names(self.rules, tied)} are tied "
                f"on {decimal_votes(self.votes[tied[0]])} votes; "
                f"{name(self.ids[remaining[0]])}{what} as it had "
                f"{'more' if highest else 'fewer'} votes at the end of stage "
                f"{separated_in}, the latest earlier stage that separates them."
            )
        elif self.recording and separated_in:
            aside = [i for i in tied if i not in remaining]
            self.notes.append(
                f"Stage {len(self.history) + 1}: {names(self.rules, tied)} are tied "
                f"on {decimal_votes(self.votes[tied[0]])} votes; the earlier stages, latest "
                f"first, set {names(self.rules, aside)} aside (back to stage {separated_in}), "
                f"and none separates {names(self.rules, remaining)}."
            )
        return remaining

    def inert(self, kind: str, tied: list[int]) -> bool:
        """Whether the order of ``tied`` cannot matter: moving any of them gives no option
        a vote, and (for exclusions) every one of them goes before any seat is filled, so
        every order leaves the count the same once they are all moved."""
        if kind == EXCLUSION and len(self._continuing()) - len(tied) < self.vacancies:
            return False
        status, position = self.status, self.position
        for option in tied:
            for k in self.piles[option]:
                if self.value[k] == 0:
                    continue  # moves no vote, at any transfer value
                pattern = self.patterns[k]
                if any(status[j] == CONTINUING for j in pattern[position[k] + 1 :]):
                    return False
        return True

    def key(self) -> tuple[tuple[int, ...], ...]:
        """All that decides the rest of the count: a state of the search."""
        live = [
            i
            for i, state in enumerate(self.status)
            if state == CONTINUING or (state == ELECTED and not self.transferred[i])
        ]
        order = sorted(live, key=lambda i: [votes[i] for votes in reversed(self.history)])
        ranks = [0] * len(self.ids)
        rank, before = 0, None
        for i in order:
            mine = [votes[i] for votes in reversed(self.history)]
            if before is not None and mine != before:
                rank += 1
            ranks[i], before = rank, mine
        return (
            tuple(self.status),
            tuple(map(int, self.transferred)),
            tuple(self.position),
            tuple(self.value),
            tuple(ranks),
        )

    def _unresolved(self, kind: str, tied: list[int], remaining: list[int]) -> int:
        """Options that no earlier stage separates (rules 49(3) and 51(2)(b), lots): the
        earlier-declared surplus moves first, the later-declared option is excluded."""
        stage = len(self.history) + 1
        rules = self.rules
        chosen = remaining[0] if kind == SURPLUS else remaining[-1]
        votes = decimal_votes(self.votes[chosen])
        if kind == EXCLUSION and self.votes[chosen] == 0 and self.inert(kind, remaining):
            self.notes.append(
                f"Stage {stage}: {names(rules, remaining)} have no votes; "
                f"{name(self.ids[chosen])} is excluded first (declared last), the order changing "
                "nothing as every one of them is excluded before any seat is filled."
            )
            return chosen
        if kind == SURPLUS:
            what = f"with equal surpluses ({votes} votes each)"
            outcome = f"{name(self.ids[chosen])}'s surplus moves first"
        else:
            what = f"for exclusion with {votes} votes"
            outcome = f"{name(self.ids[chosen])} is excluded"
        if not self.report:
            self.notes.append(
                f"Stage {stage}: {names(rules, remaining)} are tied {what} and no earlier "
                f"stage separates them; {outcome} by the declared order (tie-break rule: "
                "declared order)."
            )
            return chosen
        note = (
            f"Stage {stage}: {names(rules, remaining)} are tied {what} and no earlier stage "
            f"separates them; {outcome}, as declared {'first' if kind == SURPLUS else 'last'}."
        )
        if self.inert(kind, remaining):
            self.notes.append(f"{note} No vote moves to another option, whatever the order.")
            return chosen
        if self.unsettled is None:
            self.unsettled = _Unsettled(
                stage, kind, remaining, self.votes[chosen], self.copy(recording=False)
            )
        self.declared_notes.append(len(self.notes))
        self.notes.append(note)
        return chosen
