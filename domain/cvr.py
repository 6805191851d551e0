"""Cast vote records as jurisdictions publish them: a ballot's marks, rank by rank, turned
into a ranking by the rules the jurisdiction counts by.

A published ranked-choice CVR (Minneapolis 2017's, for one) has a column per rank, and in
each either a candidate, ``overvote`` (more than one candidate marked at that rank),
``undervote`` (none), or a write-in that is not on the ballot. Laws differ on what such
marks do to the rest of the ballot; ``MarkRules`` names the choice for each:

- an overvote either exhausts the ballot there (the ranks after it are ignored), or is
  skipped like a blank;
- an undervote is skipped, or exhausts the ballot, or is skipped alone but exhausts the
  ballot where it is the second blank rank in a row (Maine's rule, and Alaska's: an
  exhausted ballot "contains 2 or more sequential skipped rankings before its highest
  continuing ranking", 21-A M.R.S. §723-A(1)(D); blanks after the last ranked candidate
  change nothing);
- a candidate ranked again is skipped, or exhausts the ballot there;
- a name that is no option (a write-in) is skipped like a blank, or exhausts the ballot.

What remains is the ranking the election counts; a ballot with nothing left is blank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum


class Marker(Enum):
    """A rank that names no option."""

    OVERVOTE = "overvote"
    UNDERVOTE = "undervote"
    UNKNOWN = "unknown"  # a name that is no option: a write-in


class Then(StrEnum):
    """What a mark does to the rest of the ballot."""

    SKIP = "skip"  # the rank is passed over; later ranks still count
    EXHAUST = "exhaust"  # the ranks from here on are ignored
    # Undervotes only: one is passed over; two or more in a row exhaust the ballot there.
    EXHAUST_CONSECUTIVE = "exhaust-consecutive"


@dataclass(frozen=True, slots=True)
class MarkRules:
    overvote: Then = Then.EXHAUST
    undervote: Then = Then.SKIP
    duplicate: Then = Then.SKIP
    unknown: Then = Then.SKIP

    def __post_init__(self) -> None:
        for mark, then in (
            ("an overvote", self.overvote),
            ("a duplicate", self.duplicate),
            ("a write-in", self.unknown),
        ):
            if then is Then.EXHAUST_CONSECUTIVE:
                raise ValueError(f"{then} is a rule for undervotes, not for {mark}")


Mark = str | Marker  # an option id, or a marker


def ranking(marks: Sequence[Mark], rules: MarkRules) -> list[str]:
    """The option ids a ballot ranks, most preferred first, under ``rules``."""
    ranked: list[str] = []
    blanks = 0  # undervotes in a row, up to and including this mark
    for mark in marks:
        blanks = blanks + 1 if mark is Marker.UNDERVOTE else 0
        if isinstance(mark, Marker):
            then = {
                Marker.OVERVOTE: rules.overvote,
                Marker.UNDERVOTE: rules.undervote,
                Marker.UNKNOWN: rules.unknown,
            }[mark]
        elif mark in ranked:
            then = rules.duplicate
        else:
            ranked.append(mark)
            continue
        if then is Then.EXHAUST or (then is Then.EXHAUST_CONSECUTIVE and blanks > 1):
            break
    return ranked
