"""The outcome of a tabulation: winners, per-option figures, rounds, pairwise matrix, ties.

``Result.to_json`` gives the results shape of ARCHITECTURE.md ("HTTP API"); the API adds
``election_id``, ``status`` and ``position`` around it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.rules import ElectionRules, Method

NO_BALLOTS = "No ballots were cast, so there is no winner yet."

# Where a sentence of the count (a tie's reason, a note) names an option, the count marks
# the id while it writes the sentence (``name``); ``Text`` takes the marks out and keeps
# where they were, so that a page can say the option's label there and nowhere else.
# Option ids are ASCII (``domain.rules.OPTION_ID``): these private-use characters are
# never part of one, nor of the count's own words.
OPEN, CLOSE = "\ue000", "\ue001"
MARKED = re.compile(f"{OPEN}([^{CLOSE}]*){CLOSE}")


def name(option_id: str) -> str:
    """An option id as a sentence of the count names it: marked (see ``Text``)."""
    return f"{OPEN}{option_id}{CLOSE}"


class Text(str):
    """A sentence of the count: the plain text (what the document serves and audits
    compare; a ``str`` as any other) that knows where it names options.

    ``pieces`` alternates words and option ids, words first: "a and b are tied" is
    ("", "a", " and ", "b", " are tied"). Only the ids there are names: a page that
    replaces them by labels never mistakes the "2" of "margin 2", or an option "and",
    for a name. A text built anew from a ``Text`` (``+``, an f-string) is a plain ``str``
    again, and a page shows it as it is."""

    pieces: tuple[str, ...]

    @classmethod
    def of(cls, sentence: str) -> Text:
        """The text of a sentence written with ``name``, marks taken out."""
        if isinstance(sentence, Text):
            return sentence
        pieces = tuple(MARKED.split(sentence))
        text = cls("".join(pieces))
        text.pieces = pieces
        return text


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


VOTE_UNIT = 100_000  # STV counts votes in units of 1/100000 (five decimal places)


def decimal_votes(units: int) -> str:
    """Votes held in units of 1/100000 as an exact decimal text with five places."""
    sign = "-" if units < 0 else ""
    whole, part = divmod(abs(units), VOTE_UNIT)
    return f"{sign}{whole}.{part:05d}"


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage of an STV count (first preferences, a surplus transfer or an exclusion).

    Votes are integers in units of 1/100000 (``VOTE_UNIT``), shown as decimal texts.
    ``counts`` holds the votes, at the end of the stage, of every option continuing then
    (those the stage elects included);
    ``exhausted`` the value of the non-transferable papers so far.
    """

    action: str  # "first_preferences", "surplus" or "exclusion"
    counts: Mapping[str, int]
    source: str | None = None  # whose surplus moved, or who was excluded
    surplus: int | None = None
    transfer_value: int | None = None  # of a paper of full value (first preference)
    elected: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()
    exhausted: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "from": self.source,
            "surplus": None if self.surplus is None else decimal_votes(self.surplus),
            "transfer_value": (
                None if self.transfer_value is None else decimal_votes(self.transfer_value)
            ),
            "counts": {key: decimal_votes(value) for key, value in self.counts.items()},
            "elected": list(self.elected),
            "excluded": list(self.excluded),
            "exhausted": decimal_votes(self.exhausted),
        }


@dataclass(frozen=True, slots=True)
class Tie:
    """A tie for the win that the election's pinned tie-break rule leaves unresolved."""

    options: tuple[str, ...]
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", Text.of(self.reason))

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
    # STV only: the seats filled, the Droop quota (units of 1/100000) and every stage.
    seats: int | None = None
    quota: int | None = None
    stages: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "notes", tuple(Text.of(note) for note in self.notes))

    def to_json(self) -> dict[str, Any]:
        """The results document served by the API and checked by the audit replay."""
        document = {
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
        if self.method is Method.STV:
            document["seats"] = self.seats
            document["quota"] = None if self.quota is None else decimal_votes(self.quota)
            document["stages"] = [stage.to_json() for stage in self.stages]
        return document


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
