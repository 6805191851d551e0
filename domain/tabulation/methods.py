"""Which tabulation each method uses, and the checks every tabulation starts with."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from domain.rules import Method
from domain.tabulation.borda import borda
from domain.tabulation.condorcet import copeland, minimax, schulze
from domain.tabulation.counting import approval, plurality, score
from domain.tabulation.irv import irv
from domain.tabulation.ranked_pairs import ranked_pairs
from domain.tabulation.result import Result
from domain.tabulation.star import star
from domain.tabulation.stv import stv

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally

TABULATIONS: Mapping[Method, Callable[[Tally], Result]] = {
    Method.PLURALITY: plurality,
    Method.APPROVAL: approval,
    Method.SCORE: score,
    Method.STAR: star,
    Method.BORDA: borda,
    Method.IRV: irv,
    Method.SCHULZE: schulze,
    Method.RANKED_PAIRS: ranked_pairs,
    Method.COPELAND: copeland,
    Method.MINIMAX: minimax,
    Method.STV: stv,
}


def tabulate_tally(tally: Tally) -> Result:
    """The result of ``tally`` by its election's method; refuses impossible statistics."""
    negative = (
        tally.ballots < 0
        or any(count < 0 for count in tally.counts)
        or any(count < 0 for levels in tally.histograms for count in levels)
        or any(count < 0 for row in tally.pairwise for count in row)
        or any(count < 0 for count in tally.patterns.values())
    )
    if negative:
        raise ValueError(
            "the tally holds a negative count: a ballot was removed that was never added"
        )
    return TABULATIONS[tally.rules.method](tally)
