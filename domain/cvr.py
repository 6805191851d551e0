"""Cast vote records as jurisdictions publish them: a ballot's marks, rank by rank, turned
into a ranking by the rules the jurisdiction counts by.

A published ranked-choice CVR (Minneapolis 2017's, for one) has a column per rank, and in
each either a candidate, ``overvote`` (more than one candidate marked at that rank),
``undervote`` (none), or a write-in that is not on the ballot. Laws differ on what such
marks do to the rest of the ballot; ``MarkRules`` names the choice for each:

- an overvote either exhausts the ballot there (the ranks after it are ignored), or is
  skipped like a blank;
- an undervote is skipped, or exhausts the ballot;
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


@dataclass(frozen=True, slots=True)
class MarkRules:
    overvote: Then = Then.EXHAUST
    undervote: Then = Then.SKIP
    duplicate: Then = Then.SKIP
    unknown: Then = Then.SKIP


Mark = str | Marker  # an option id, or a marker


def ranking(marks: Sequence[Mark], rules: MarkRules) -> list[str]:
    """The option ids a ballot ranks, most preferred first, under ``rules``."""
    ranked: list[str] = []
    for mark in marks:
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
        if then is Then.EXHAUST:
            break
    return ranked
