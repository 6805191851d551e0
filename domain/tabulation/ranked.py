"""What every ranked method's result shares: first preferences and the pairwise matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from domain.tabulation.result import NO_BALLOTS, Result, Round, option_results, pairwise_json
from domain.tabulation.ties import Decision

if TYPE_CHECKING:
    from domain.tabulation.statistics import Tally


def ranked_result(
    tally: Tally,
    decision: Decision | None,
    extra: Sequence[Mapping[str, Any]] | None = None,
    rounds: Sequence[Round] = (),
    notes: Sequence[str] = (),
) -> Result:
    """A ranked method's result; ``decision`` None means no ballots were cast."""
    rules = tally.rules
    firsts = tally.first_preferences()
    figures = [
        {"first_preferences": firsts[i], **(extra[i] if extra else {})}
        for i in range(len(rules.options))
    ]
    options = option_results(rules, figures)
    pairwise = pairwise_json(rules, tally.pairwise)
    if decision is None:
        return Result(rules.method, 0, (), options, pairwise=pairwise, notes=(NO_BALLOTS,))
    return Result(
        rules.method,
        tally.ballots,
        tuple(rules.options[i].id for i in decision.winners),
        options,
        rounds=tuple(rounds),
        pairwise=pairwise,
        tie=decision.tie,
        notes=(*notes, *decision.notes),
    )


def margins(tally: Tally) -> list[list[int]]:
    """``margins[i][j]``: ballots preferring i to j minus ballots preferring j to i."""
    p = tally.pairwise
    n = len(p)
    return [[p[i][j] - p[j][i] for j in range(n)] for i in range(n)]
