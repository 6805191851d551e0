"""Schulze, Copeland and Minimax: Condorcet methods read off the pairwise matrix.

- Schulze (beatpath), as defined by Schulze (Social Choice and Welfare 36, 2011) and in
  Wikipedia's "Schulze method": a link a->b exists when more ballots prefer a to b than b
  to a, and its strength is the number of ballots preferring a (winning votes). Strongest
  paths come from the Floyd-Warshall variant; a wins iff p[a][b] >= p[b][a] for every b.
  With complete rankings winning votes and margins give the same result.
- Copeland: one point per pairwise win, minus one per pairwise loss (wins - losses); this
  ranks options exactly as "wins + ties/2" does.
- Minimax (Simpson-Kramer), by margins: an option's score is its largest pairwise defeat
  (the greatest margin by which another option beats it, 0 if it is unbeaten); the
  smallest score wins.

Ties left by any of them go to the election's pinned rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from domain.tabulation.ranked import margins, ranked_result
from domain.tabulation.result import Result
from domain.tabulation.ties import decide

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally


def schulze(tally: Tally) -> Result:
    """Schulze (winning votes): options not beaten by a stronger path."""
    if not tally.ballots:
        return ranked_result(tally, None)
    strength = strongest_paths(tally)
    n = len(strength)
    unbeaten = [
        a for a in range(n) if all(strength[a][b] >= strength[b][a] for b in range(n) if b != a)
    ]
    why = "under Schulze: between them the strongest paths are equally strong both ways"
    return ranked_result(tally, decide(tally.rules, unbeaten, why))


def strongest_paths(tally: Tally) -> list[list[int]]:
    """Schulze's p[a][b]: the strength of the strongest path from a to b (0 if none)."""
    d = tally.pairwise
    n = len(d)
    p = [[d[a][b] if d[a][b] > d[b][a] else 0 for b in range(n)] for a in range(n)]
    for via in range(n):
        through = p[via]
        for a in range(n):
            to_via = p[a][via]
            if a == via or not to_via:
                continue
            row = p[a]
            for b in range(n):
                # the widest path through ``via`` is as wide as its narrower half
                width = to_via if to_via < through[b] else through[b]
                if width > row[b] and b != a:
                    row[b] = width
    return p


def copeland(tally: Tally) -> Result:
    """Copeland: most pairwise wins minus pairwise losses."""
    m = margins(tally)
    n = len(m)
    wins = [sum(1 for b in range(n) if m[a][b] > 0) for a in range(n)]
    losses = [sum(1 for b in range(n) if m[a][b] < 0) for a in range(n)]
    scores = [w - lost for w, lost in zip(wins, losses, strict=True)]
    extra = [
        {"wins": wins[a], "losses": losses[a], "ties": n - 1 - wins[a] - losses[a], "score": s}
        for a, s in enumerate(scores)
    ]
    if not tally.ballots:
        return ranked_result(tally, None, extra)
    top = max(scores)
    tied = [a for a, s in enumerate(scores) if s == top]
    why = f"on a Copeland score (pairwise wins minus losses) of {top}"
    return ranked_result(tally, decide(tally.rules, tied, why), extra)


def minimax(tally: Tally) -> Result:
    """Minimax (margins): the smallest largest pairwise defeat wins."""
    m = margins(tally)
    n = len(m)
    defeats = [max([0, *(m[b][a] for b in range(n) if b != a)]) for a in range(n)]
    extra = [{"largest_defeat": d} for d in defeats]
    if not tally.ballots:
        return ranked_result(tally, None, extra)
    least = min(defeats)
    tied = [a for a, d in enumerate(defeats) if d == least]
    why = f"with a largest pairwise defeat (margin) of {least}"
    return ranked_result(tally, decide(tally.rules, tied, why), extra)
