"""The sufficient statistics of one election (``Tally``), updated one ballot at a time.

What a tally keeps depends on the method: counts (plurality, approval), score histograms
(score), histograms plus the pairwise matrix (STAR), ranking-pattern counts plus the
pairwise matrix (ranked methods). Every update is a weighted sum, so adding ballots one by
one equals adding them at once, ``add(v, -1)`` undoes ``add(v)``, and tallies of disjoint
parts of the log merge by addition. One ``add`` costs O(options²) at most.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from domain.rules import ElectionRules, Method
from domain.tabulation import counters as keys
from domain.tabulation.methods import tabulate_tally
from domain.votes import Approval, Choice, Ranking, Scores, Vote

if TYPE_CHECKING:
    from domain.tabulation.result import Result

_VOTE_KIND: dict[str, type] = {
    "choice": Choice,
    "approve": Approval,
    "scores": Scores,
    "ranking": Ranking,
}


class Tally:
    """The sufficient statistics of one election's ballots, under its pinned rules."""

    __slots__ = ("_ballots", "_counts", "_histograms", "_low", "_pairwise", "_patterns", "rules")

    def __init__(self, rules: ElectionRules) -> None:
        n = len(rules.options)
        method = rules.method
        self.rules = rules
        self._ballots = 0
        self._low = rules.min_score if rules.min_score is not None else 0
        levels = (rules.max_score - self._low + 1) if rules.max_score is not None else 0
        counted = method in (Method.PLURALITY, Method.APPROVAL)
        paired = method is Method.STAR or method.is_ranked
        self._counts = [0] * n if counted else []
        self._histograms = [[0] * levels for _ in range(n)] if method.is_scored else []
        self._pairwise = [[0] * n for _ in range(n)] if paired else []
        self._patterns: dict[tuple[int, ...], int] = {}

    # -- reading -------------------------------------------------------------------------

    @property
    def ballots(self) -> int:
        return self._ballots

    @property
    def counts(self) -> Sequence[int]:
        """Plurality votes or approvals per option, in declared order (read-only)."""
        return self._counts

    @property
    def histograms(self) -> Sequence[Sequence[int]]:
        """Per option, ballots per score from min_score upwards (read-only)."""
        return self._histograms

    @property
    def pairwise(self) -> Sequence[Sequence[int]]:
        """``pairwise[i][j]``: ballots preferring option i to option j (read-only)."""
        return self._pairwise

    @property
    def patterns(self) -> Mapping[tuple[int, ...], int]:
        """Ballots per ranking, as option indices, canonical (see ``counters``) (read-only)."""
        return self._patterns

    def first_preferences(self) -> list[int]:
        """Ballots ranking each option first."""
        firsts = [0] * len(self.rules.options)
        for pattern, count in self._patterns.items():
            firsts[pattern[0]] += count
        return firsts

    # -- updating ------------------------------------------------------------------------

    def add(self, vote: Vote, weight: int = 1) -> None:
        """Count ``vote`` ``weight`` times; a negative weight removes it (O(options²))."""
        method = self.rules.method
        kind = _VOTE_KIND[method.ballot_field]
        if not isinstance(vote, kind):
            raise TypeError(f"a {method.value} tally counts {kind.__name__} votes, not {vote!r}")
        index = self.rules.option_index
        try:
            if isinstance(vote, Choice):
                self._counts[index[vote.option]] += weight
            elif isinstance(vote, Approval):
                approved = [index[option] for option in vote.options]  # all known, or none
                for i in approved:
                    self._counts[i] += weight
            elif isinstance(vote, Scores):
                self._add_scores(vote, weight)
            else:
                self._add_ranking(self._canonical(vote.order), weight)
        except KeyError as missing:
            raise ValueError(f"{missing.args[0]!r} is not an option of this election") from None
        self._ballots += weight

    def _add_scores(self, vote: Scores, weight: int) -> None:
        if tuple(option for option, _ in vote.scores) != self.rules.option_ids:
            raise ValueError("scores must cover every option, in declared order")
        values = vote.values
        high = self._low + len(self._histograms[0]) - 1
        if any(not self._low <= value <= high for value in values):
            raise ValueError(f"scores must lie within {self._low}..{high}; got {values}")
        for i, value in enumerate(values):
            self._histograms[i][value - self._low] += weight
        if self._pairwise:
            pairwise = self._pairwise
            for i, a in enumerate(values):
                row = pairwise[i]
                for j, b in enumerate(values):
                    if a > b:
                        row[j] += weight

    def _canonical(self, order: Sequence[str]) -> tuple[int, ...]:
        pattern = tuple(map(self.rules.option_index.__getitem__, order))
        n = len(self.rules.options)
        if len(set(pattern)) != len(pattern) or not pattern:
            raise ValueError(f"a ranking names each option at most once; got {list(order)}")
        if len(pattern) == n - 1:
            # The one option left out ranks last: the same preference as ranking it last.
            pattern = (*pattern, n * (n - 1) // 2 - sum(pattern))
        return pattern

    def _add_ranking(self, pattern: tuple[int, ...], weight: int) -> None:
        self._add_pattern(pattern, weight)
        pairwise = self._pairwise
        ranked = set(pattern)
        unranked = [j for j in range(len(pairwise)) if j not in ranked]
        for position, i in enumerate(pattern):
            row = pairwise[i]
            for j in pattern[position + 1 :]:
                row[j] += weight
            for j in unranked:
                row[j] += weight

    # -- combining -----------------------------------------------------------------------

    def merge(self, other: Tally) -> Tally:
        """A new tally of both tallies' ballots (e.g. two partitions of the log)."""
        if other.rules != self.rules:
            raise ValueError("only tallies of the same election rules can be merged")
        merged = Tally(self.rules)
        merged._ballots = self._ballots + other._ballots
        merged._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        merged._histograms = _add_rows(self._histograms, other._histograms)
        merged._pairwise = _add_rows(self._pairwise, other._pairwise)
        merged._patterns = dict(self._patterns)
        for pattern, count in other._patterns.items():
            total = merged._patterns.get(pattern, 0) + count
            if total:
                merged._patterns[pattern] = total
            else:
                del merged._patterns[pattern]
        return merged

    __add__ = merge

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tally):
            return NotImplemented
        return self.rules == other.rules and self.counters() == other.counters()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Tally({self.rules.method.value}, ballots={self._ballots})"

    # -- storage form --------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The tally as sparse counters (keys documented in ``counters``), zeros omitted."""
        ids = self.rules.option_ids
        found: dict[str, int] = {keys.BALLOTS: self._ballots}
        for i, count in enumerate(self._counts):
            found[keys.count_key(ids[i])] = count
        for i, histogram in enumerate(self._histograms):
            for level, count in enumerate(histogram):
                found[keys.histogram_key(ids[i], self._low + level)] = count
        for i, row in enumerate(self._pairwise):
            for j, count in enumerate(row):
                found[keys.pairwise_key(ids[i], ids[j])] = count
        for pattern, count in self._patterns.items():
            found[keys.ranking_key(ids[i] for i in pattern)] = count
        return {key: count for key, count in found.items() if count}

    @classmethod
    def from_counters(cls, rules: ElectionRules, counters: Mapping[str, int]) -> Tally:
        """Rebuild a tally from its stored counters; unknown or misplaced keys raise."""
        tally = cls(rules)
        rankings: list[tuple[str, int]] = []
        for key, count in counters.items():
            if key.startswith("r:"):
                rankings.append((key, count))
            else:
                tally._load(key, count)
        if rankings and not (tally._pairwise and not tally._histograms):
            raise ValueError(f"{rankings[0][0]!r} is not a counter of a {rules.method.value} tally")
        # Patterns are most of a ranked tally's rows; this loop is its read path's hot spot.
        index = rules.option_index.__getitem__
        n = len(rules.options)
        patterns = tally._patterns
        for key, count in rankings:
            try:
                pattern = tuple(map(index, key[2:].split(keys.RANK_SEPARATOR)))
            except KeyError:
                raise ValueError(f"counter {key!r} names an option this election lacks") from None
            if len(set(pattern)) != len(pattern):
                raise ValueError(f"counter {key!r} names an option twice")
            if len(pattern) == n - 1:
                pattern = (*pattern, n * (n - 1) // 2 - sum(pattern))
            total = patterns.get(pattern, 0) + count
            if total:
                patterns[pattern] = total
            else:
                patterns.pop(pattern, None)
        return tally

    @classmethod
    def delta(cls, rules: ElectionRules, vote: Vote, weight: int = 1) -> dict[str, int]:
        """The counter increments that counting ``vote`` ``weight`` times causes."""
        tally = cls(rules)
        tally.add(vote, weight)
        return tally.counters()

    def _load(self, key: str, count: int) -> None:
        kind, fields = keys.split_key(key)
        index = self.rules.option_index
        misplaced = ValueError(f"{key!r} is not a counter of a {self.rules.method.value} tally")
        try:
            if kind == keys.BALLOTS:
                self._ballots += count
            elif kind == "c" and self._counts and len(fields) == 1:
                self._counts[index[fields[0]]] += count
            elif kind == "h" and self._histograms and len(fields) == 2:
                histogram = self._histograms[index[fields[0]]]
                level = int(fields[1]) - self._low
                if not 0 <= level < len(histogram):
                    raise misplaced
                histogram[level] += count
            elif kind == "p" and self._pairwise and len(fields) == 2 and fields[0] != fields[1]:
                self._pairwise[index[fields[0]]][index[fields[1]]] += count
            else:
                raise misplaced
        except KeyError:
            raise ValueError(f"counter {key!r} names an option this election lacks") from None

    def _add_pattern(self, pattern: tuple[int, ...], count: int) -> None:
        total = self._patterns.get(pattern, 0) + count
        if total:
            self._patterns[pattern] = total
        else:
            self._patterns.pop(pattern, None)

    # -- results -------------------------------------------------------------------------

    @classmethod
    def from_votes(cls, rules: ElectionRules, votes: Iterable[Vote]) -> Tally:
        """The tally of a plain sequence of votes (audit replay), identical votes grouped."""
        tally = cls(rules)
        for vote, count in Counter(votes).items():
            tally.add(vote, count)
        return tally

    def result(self) -> Result:
        """Winners, figures, rounds and ties under the election's pinned rules."""
        return tabulate_tally(self)


def _add_rows(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    return [[x + y for x, y in zip(r, s, strict=True)] for r, s in zip(a, b, strict=True)]
