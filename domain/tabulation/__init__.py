"""Tabulation of every method Cardinal Vote accepts ballots for, from sufficient statistics.

Pure domain code, used both by the tally projections (which keep ``Tally.counters`` rows
and compute results on read) and by the audit replay (``tabulate``). Nothing here performs
I/O or depends on dictionary order for a decision.
"""

from __future__ import annotations

from collections.abc import Iterable

from domain.rules import ElectionRules
from domain.tabulation.result import OptionResult, Result, Round, Tie
from domain.tabulation.statistics import Tally
from domain.votes import Vote

__all__ = ["OptionResult", "Result", "Round", "Tally", "Tie", "tabulate"]


def tabulate(rules: ElectionRules, votes: Iterable[Vote]) -> Result:
    """The result of a plain sequence of votes, counted at once (audit replay)."""
    return Tally.from_votes(rules, votes).result()
