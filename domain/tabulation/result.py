"""The outcome of a tabulation: winners, per-option figures, rounds, pairwise matrix, ties.

``Result.to_json`` gives the results shape of ARCHITECTURE.md ("HTTP API"); the API adds
``election_id``, ``status`` and ``position`` around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.rules import ElectionRules, Method

NO_BALLOTS = "No ballots were cast, so there is no winner yet."


@dataclass(frozen=True, slots=True)
class OptionResult:
    """One option's figures; which figures depends on the method (see ARCHITECTURE.md)."""

    id: str
    label: str
    figures: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, **self.figures}


@dataclass(frozen=True, slots=True)
class Round:
    """One counting round (IRV, STAR): counts per option, who left, and exhausted ballots."""

    counts: Mapping[str, int]
    eliminated: tuple[str, ...] = ()
    exhausted: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "eliminated": list(self.eliminated),
            "exhausted": self.exhausted,
        }


@dataclass(frozen=True, slots=True)
class Tie:
    """A tie for the win that the election's pinned tie-break rule leaves unresolved."""

    options: tuple[str, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"options": list(self.options), "reason": self.reason}


@dataclass(frozen=True)
class Result:
    """The tabulated result of one election at one point of its log."""

    method: Method
    ballots: int
    winners: tuple[str, ...]
    options: tuple[OptionResult, ...]
    rounds: tuple[Round, ...] = ()
    pairwise: Mapping[str, Mapping[str, int]] | None = None
    tie: Tie | None = None
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The results document served by the API and checked by the audit replay."""
        return {
            "method": self.method.value,
            "ballots": self.ballots,
            "winners": list(self.winners),
            "options": [option.to_json() for option in self.options],
            "rounds": [one.to_json() for one in self.rounds],
            "pairwise": (
                None
                if self.pairwise is None
                else {a: dict(row) for a, row in self.pairwise.items()}
            ),
            "tie": None if self.tie is None else self.tie.to_json(),
            "notes": list(self.notes),
        }


def option_results(
    rules: ElectionRules, figures: Sequence[Mapping[str, Any]]
) -> tuple[OptionResult, ...]:
    """Pair each declared option with its figures, in declared order."""
    return tuple(
        OptionResult(option.id, option.label, figures[i]) for i, option in enumerate(rules.options)
    )


def pairwise_json(
    rules: ElectionRules, matrix: Sequence[Sequence[int]]
) -> dict[str, dict[str, int]]:
    """``pairwise[a][b]``: ballots preferring a to b, for every ordered pair of options."""
    ids = rules.option_ids
    return {a: {b: matrix[i][j] for j, b in enumerate(ids) if j != i} for i, a in enumerate(ids)}
