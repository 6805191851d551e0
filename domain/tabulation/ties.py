"""The election's pinned tie-break rule, applied once a method's own tie-breaks are spent.

``TieBreak.REPORT`` leaves the tie standing: every tied option is a winner and the result
carries a ``Tie`` saying why. ``TieBreak.DECLARED_ORDER`` lets the option declared earliest
win and records a note. Nothing here, nor anywhere in the tabulation, lets dictionary or set
iteration order decide: tied options are always handled in declared order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from domain.rules import ElectionRules, TieBreak
from domain.tabulation.result import Tie, name


@dataclass(frozen=True, slots=True)
class Decision:
    """Who wins once the pinned rule has been applied, and what the result must say."""

    winners: tuple[int, ...]
    tie: Tie | None = None
    notes: tuple[str, ...] = ()


def names(rules: ElectionRules, indices: Sequence[int]) -> str:
    """Option ids in declared order, joined for a sentence: 'a', 'a and b', 'a, b and c'
    (each marked as a name: see ``result.Text``)."""
    ids = [name(rules.options[i].id) for i in sorted(indices)]
    return ids[0] if len(ids) == 1 else ", ".join(ids[:-1]) + " and " + ids[-1]


def decide(rules: ElectionRules, tied: Sequence[int], why: str) -> Decision:
    """Settle a tie for the win among ``tied``; ``why`` completes 'x and y are tied ...'."""
    ordered = tuple(sorted(tied))
    if len(ordered) == 1:
        return Decision(ordered)
    if rules.tie_break is TieBreak.DECLARED_ORDER:
        first = ordered[0]
        return Decision(
            (first,),
            notes=(
                f"{names(rules, ordered)} are tied {why}; {names(rules, [first])} wins "
                "because it was declared first among them (tie-break rule: declared order).",
            ),
        )
    return Decision(
        ordered,
        tie=Tie(
            tuple(rules.options[i].id for i in ordered),
            f"{names(rules, ordered)} are tied {why}, and the election's tie-break rule "
            "reports such a tie instead of breaking it.",
        ),
    )
