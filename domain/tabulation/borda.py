"""Borda count, with a published rule for partial rankings.

With n options, the option ranked in position i (from 0) gets n-1-i points; the options a
ballot leaves unranked share the points left over, (n-k)(n-k-1)/2 for k ranked options,
equally: (n-k-1)/2 each. This is the "averaged" Borda score for top-truncated ballots
(Terzopoulou and Endriss, "The Borda class", J. Math. Econ. 2021), the same ranking of
options as pref_voting's ``symmetric_borda_scores``. Per ballot it is one point for each
option ranked below and half a point for each option left equal, so it follows from the
pairwise matrix alone: points(a) = sum over b of (ballots + p[a][b] - p[b][a]) / 2.
Points are computed doubled, as exact integers, and halved only for display.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from domain.tabulation.ranked import ranked_result
from domain.tabulation.result import Result
from domain.tabulation.ties import decide

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally


def borda(tally: Tally) -> Result:
    """Most Borda points wins; a tie goes to the election's pinned rule."""
    doubled = doubled_points(tally)
    extra = [{"points": half(points)} for points in doubled]
    if not tally.ballots:
        return ranked_result(tally, None, extra)
    top = max(doubled)
    tied = [i for i, points in enumerate(doubled) if points == top]
    return ranked_result(tally, decide(tally.rules, tied, f"on {half(top)} points"), extra)


def doubled_points(tally: Tally) -> list[int]:
    """Twice each option's Borda points (exact with partial rankings)."""
    p = tally.pairwise
    ballots = tally.ballots
    n = len(p)
    return [sum(ballots + p[a][b] - p[b][a] for b in range(n) if b != a) for a in range(n)]


def half(doubled: int) -> int | float:
    """Points for display: an int when whole, else a float ending in .5."""
    return doubled // 2 if doubled % 2 == 0 else doubled / 2
