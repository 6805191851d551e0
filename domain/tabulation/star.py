"""STAR voting (Score Then Automatic Runoff), with the official STAR tiebreaker protocol.

Scoring round: the two options with the highest total scores become finalists. Automatic
runoff: the finalist scored higher on more ballots wins; ballots scoring both finalists
equally express no preference and are reported as ``exhausted``.

Ties follow the Equal Vote Coalition's Official Tiebreaker Protocol (starvoting.org/ties,
"Official Tiebreaker Protocol", steps 1-4; also the STAR Voting Technical Specifications
2.b and the ``starvote`` reference implementation by Larry Hastings):

- scoring round, tied for a runoff place: compare the tied options head to head and set
  aside those who lost the most match-ups among them, repeating with those still tied;
  then the most top scores (five-star ratings; ``max_score`` for other ranges);
- runoff tie: the finalist with the higher total score, then the most top scores
  (so the order for the win is head-to-head, total score, top scores);
- then, instead of the protocol's random draw, the election's pinned rule: with
  ``DECLARED_ORDER`` the earlier-declared option; with ``REPORT`` the tie stands. When a
  runoff place stays tied, every option that wins the runoff for some choice of the tied
  finalists is a winner, and the result has only the scoring round.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import TYPE_CHECKING, Any

from domain.rules import ElectionRules, TieBreak
from domain.tabulation.counting import histogram, mean, score_sums
from domain.tabulation.result import NO_BALLOTS, Result, Round, Tie, option_results
from domain.tabulation.ties import Decision, decide, names

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally


def star(tally: Tally) -> Result:
    """STAR: the two highest total scores meet in an automatic runoff."""
    rules = tally.rules
    sums = score_sums(tally)
    tops = [levels[-1] for levels in tally.histograms]
    figures: list[dict[str, Any]] = [
        {
            "sum": total,
            "mean": mean(total, tally.ballots),
            "top_scores": tops[i],
            "histogram": histogram(tally, i),
        }
        for i, total in enumerate(sums)
    ]
    options = option_results(rules, figures)
    if not tally.ballots:
        return Result(rules.method, 0, (), options, notes=(NO_BALLOTS,))
    finalists, tied, need, notes = _scoring_round(tally, sums, tops)
    ids = rules.option_ids
    if need:
        in_contention = set(finalists) | set(tied)
        eliminated = tuple(ids[i] for i in range(len(ids)) if i not in in_contention)
        scoring = Round({ids[i]: sums[i] for i in range(len(ids))}, eliminated)
        decision = _open_runoff(tally, finalists, tied, sums=sums, tops=tops)
        rounds: tuple[Round, ...] = (scoring,)
    else:
        eliminated = tuple(ids[i] for i in range(len(ids)) if i not in finalists)
        scoring = Round({ids[i]: sums[i] for i in range(len(ids))}, eliminated)
        a, b = finalists
        decision = _runoff(tally, a, b, sums, tops)
        loser = () if decision.tie else (ids[b] if decision.winners == (a,) else ids[a],)
        preferring = tally.pairwise
        exhausted = tally.ballots - preferring[a][b] - preferring[b][a]
        runoff = Round({ids[a]: preferring[a][b], ids[b]: preferring[b][a]}, loser, exhausted)
        rounds = (scoring, runoff)
    return Result(
        rules.method,
        tally.ballots,
        tuple(ids[i] for i in decision.winners),
        options,
        rounds=rounds,
        tie=decision.tie,
        notes=(*notes, *decision.notes),
    )


def _scoring_round(
    tally: Tally, sums: list[int], tops: list[int]
) -> tuple[list[int], list[int], int, list[str]]:
    """Finalists, options still tied for the remaining places, places left, notes."""
    rules = tally.rules
    finalists, tied = _take(list(range(len(sums))), 2, sums.__getitem__)
    need = 2 - len(finalists)
    if not tied:
        return finalists, [], 0, []
    places = "both runoff places" if need == 2 else "the second runoff place"
    steps = [
        f"Scoring round: {names(rules, tied)} tied on total score ({sums[tied[0]]}) for {places}."
    ]
    p = tally.pairwise
    before = list(finalists)
    while len(tied) > need:
        losses = {i: sum(1 for j in tied if p[j][i] > p[i][j]) for i in tied}
        most = max(losses.values())
        better = [i for i in tied if losses[i] < most]
        if not better:
            break
        if len(better) >= need:
            tied = better
        else:
            finalists, need = finalists + better, need - len(better)
            tied = [i for i in tied if losses[i] == most]
    if len(tied) == need:
        finalists, tied, need = finalists + tied, [], 0
    steps.append(_step_note(rules, "Head-to-head match-ups among them", before, finalists, tied))
    if tied:
        before = list(finalists)
        ahead, tied = _take(tied, need, tops.__getitem__)
        finalists, need = finalists + ahead, need - len(ahead)
        step = f"Most top scores ({rules.max_score})"
        steps.append(_step_note(rules, step, before, finalists, tied))
    if tied and rules.tie_break is TieBreak.DECLARED_ORDER:
        before = list(finalists)
        finalists, tied, need = finalists + sorted(tied)[:need], [], 0
        step = "Declared order (the election's tie-break rule)"
        steps.append(_step_note(rules, step, before, finalists, tied))
    return sorted(finalists), tied, need, [" ".join(steps)]


def _step_note(
    rules: ElectionRules, step: str, before: list[int], after: list[int], still: list[int]
) -> str:
    advanced = [i for i in after if i not in before]
    parts = [f"{names(rules, advanced)} advanced"] if advanced else []
    if still:
        parts.append(f"{names(rules, still)} still tied")
    return f"{step}: {'; '.join(parts) or 'no change'}."


def _take(group: list[int], need: int, value: Callable[[int], int]) -> tuple[list[int], list[int]]:
    """Those surely among the ``need`` best of ``group`` by ``value``, and those tied for
    the places left (empty when none are)."""
    sure: list[int] = []
    for level in sorted({value(i) for i in group}, reverse=True):
        members = [i for i in group if value(i) == level]
        if len(members) > need - len(sure):
            return sure, members
        sure += members
        if len(sure) == need:
            break
    return sure, []


def _runoff(tally: Tally, a: int, b: int, sums: list[int], tops: list[int]) -> Decision:
    """The automatic runoff between finalists a and b, with the runoff tiebreakers."""
    rules = tally.rules
    p = tally.pairwise
    if p[a][b] != p[b][a]:
        return Decision((a if p[a][b] > p[b][a] else b,))
    ballots = f"{p[a][b]} ballot" + ("" if p[a][b] == 1 else "s")
    opening = f"Automatic runoff: {names(rules, [a, b])} were each preferred on {ballots}"
    for figure, values in (("total score", sums), ("top scores", tops)):
        if values[a] != values[b]:
            winner = a if values[a] > values[b] else b
            return Decision(
                (winner,),
                notes=(
                    f"{opening}; {names(rules, [winner])} wins on {figure} "
                    f"({max(values[a], values[b])} to {min(values[a], values[b])}), "
                    "following the official STAR tiebreaker.",
                ),
            )
    why = (
        f"in the automatic runoff ({ballots} each), on total score "
        f"({sums[a]}) and on top scores ({tops[a]})"
    )
    return decide(rules, [a, b], why)


def _open_runoff(
    tally: Tally, finalists: list[int], tied: list[int], *, sums: list[int], tops: list[int]
) -> Decision:
    """REPORT with a runoff place still tied: who wins for some choice of finalists."""
    rules = tally.rules
    possible: set[int] = set()
    for chosen in combinations(tied, 2 - len(finalists)):
        a, b = [*finalists, *chosen]
        possible.update(_runoff(tally, a, b, sums, tops).winners)
    winners = tuple(sorted(possible))
    if len(winners) == 1:
        return Decision(
            winners,
            notes=(
                f"The tie for the runoff does not decide the result: {names(rules, winners)} "
                "wins the automatic runoff whichever of the tied options advances.",
            ),
        )
    return Decision(
        winners,
        tie=Tie(
            tuple(rules.options[i].id for i in winners),
            f"{names(rules, tied)} remain tied for a runoff place after the official STAR "
            f"tiebreakers, and {names(rules, winners)} each win the automatic runoff for some "
            "choice among them; the election's tie-break rule reports such a tie.",
        ),
    )
