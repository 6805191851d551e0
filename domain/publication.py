"""Stepped live results: what readers other than auditors see while an election is open.

Exact live results betray ballots: whoever reads them just before and just after a known
voter votes learns that vote. So while an election is open, its results are *published*
only at step boundaries: after every ``live_results_step``-th counted ballot entry of the
election (a cast, a revision or a withdrawal that precedes its Closed entry). Two
publications therefore differ by whole steps of entries, never by one ballot alone (unless
the step is 1, which an election must ask for). The close publishes the final, exact
results. Before the first boundary, the published results are the empty count as of the
election's creation, and from its Opened entry on, as of that entry (where the status they
show changed: dated at the creation, an "open" document shared a position with the
draft's).

Everything that serves or checks published results (the tally projection, live and in a
rebuild; the recount behind time travel and the audit) follows this one rule, through
``Steps``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from domain.tabulation.statistics import Tally
from domain.votes import Vote

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class Steps:
    """Where one election's publications stand, entry by entry."""

    step: int
    created_at: int = 0  # the election's creation: what is published before any step
    entries: int = 0  # counted ballot entries so far
    published_at: int = 0  # position of the last publication (0: none yet)
    published_entries: int = 0
    opened_at: int = 0  # the election's Opened entry (0: not opened yet)

    @property
    def position(self) -> int:
        """The position the published results reflect: the last publication; before any,
        the Opened entry, or the creation before that."""
        return self.published_at or self.opened_at or self.created_at

    def open(self, position: int) -> None:
        """The election's Opened entry: what readers see changes there (its status), before
        any ballot is counted. (Steps read back from a row hold the position shown, the
        creation's, as ``published_at``: no publication comes before the Opened entry.)"""
        if self.entries == 0:  # (a ballot before it: a log written around the application)
            self.published_at = 0
            self.opened_at = position

    def count(self, position: int) -> bool:
        """Count one ballot entry at ``position``; True if it completes a step, so that the
        results as of this entry are published."""
        self.entries += 1
        if self.entries % self.step:
            return False
        self.published_at = position
        self.published_entries = self.entries
        return True


@dataclass
class Trail(Generic[K, V]):
    """The entries counted since the last publication, each with the vote it replaced
    (``V``: a Vote, or a vote as stored): enough to work the published tally out from the
    current one. At most ``step - 1`` entries are kept."""

    entries: list[tuple[K, V | None]] = field(default_factory=list)

    def follow(self, published: bool, ballot: K, replaced: V | None) -> None:
        """Note one counted entry (``published``: it completed a step)."""
        if published:
            self.entries.clear()
        else:
            self.entries.append((ballot, replaced))

    def undo(
        self, tally: Tally, current: Callable[[K], V | None], vote: Callable[[V], Vote]
    ) -> Tally:
        """``tally`` (modified in place) taken back to the last publication; ``current``
        gives each ballot's vote now (None: none, or withdrawn), ``vote`` makes a Vote of
        one."""
        later: dict[K, V | None] = {}
        for ballot, replaced in reversed(self.entries):
            now = later[ballot] if ballot in later else current(ballot)
            if now is not None:
                tally.add(vote(now), -1)
            if replaced is not None:
                tally.add(vote(replaced))
            later[ballot] = replaced
        return tally
