"""Plurality, approval and score (range) voting: the option with the most wins.

Plurality and approval count ballots per option. Score voting sums each option's scores
over any integer range (Cardinal Vote's -2..+2 by default); since every ballot scores every
option (an omitted option gets ``min_score``), the highest sum is also the highest mean.
None of these methods has a published tie-break of its own, so a tie for the most goes
straight to the election's pinned rule (``ties.decide``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from domain.tabulation.result import NO_BALLOTS, Result, option_results
from domain.tabulation.ties import decide

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally


def plurality(tally: Tally) -> Result:
    """Most first choices wins."""
    return _most(tally, tally.counts, [{"votes": n} for n in tally.counts], "with {} votes each")


def approval(tally: Tally) -> Result:
    """Most approvals wins."""
    return _most(
        tally, tally.counts, [{"approvals": n} for n in tally.counts], "with {} approvals each"
    )


def score(tally: Tally) -> Result:
    """Highest total score wins; figures carry sum, mean and the full histogram."""
    sums = score_sums(tally)
    figures = [
        {"sum": total, "mean": mean(total, tally.ballots), "histogram": histogram(tally, i)}
        for i, total in enumerate(sums)
    ]
    return _most(tally, sums, figures, "on a total score of {}")


def score_sums(tally: Tally) -> list[int]:
    """Each option's total score, from its histogram."""
    low = tally.rules.min_score or 0
    return [
        sum((low + level) * count for level, count in enumerate(levels))
        for levels in tally.histograms
    ]


def mean(total: int, ballots: int) -> float | None:
    return total / ballots if ballots else None


def histogram(tally: Tally, option: int) -> dict[str, int]:
    """Ballots per score for one option, every score of the range present."""
    low = tally.rules.min_score or 0
    return {str(low + level): count for level, count in enumerate(tally.histograms[option])}


def _most(
    tally: Tally, values: Sequence[int], figures: Sequence[Mapping[str, Any]], why: str
) -> Result:
    rules = tally.rules
    options = option_results(rules, figures)
    if not tally.ballots:
        return Result(rules.method, 0, (), options, notes=(NO_BALLOTS,))
    top = max(values)
    decision = decide(rules, [i for i, v in enumerate(values) if v == top], why.format(top))
    return Result(
        rules.method,
        tally.ballots,
        tuple(rules.options[i].id for i in decision.winners),
        options,
        tie=decision.tie,
        notes=decision.notes,
    )
