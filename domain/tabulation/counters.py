"""The storage form of a tally: a flat, sparse mapping of short string keys to integers.

The read models keep one row per key and upsert the increments each ballot causes
(``Tally.delta``), so these keys live in a database column for years. They are stable:
change them only with a migration that rewrites the rows.

=================  =====================================================================
key                value
=================  =====================================================================
``n``              ballots counted (every method)
``c:A``            plurality: ballots choosing option ``A``; approval: ballots approving ``A``
``h:A:S``          score and STAR: ballots giving option ``A`` exactly the score ``S``
                   (a decimal integer, negative for e.g. ``h:A:-2``); sums, means and
                   STAR's top-score counts are derived from these histograms
``p:A:B``          STAR and ranked methods: ballots preferring ``A`` to ``B`` (scoring ``A``
                   higher; ranking ``A`` above ``B``, where unranked options rank below
                   every ranked one)
``r:A>B>C``        ranked methods: ballots whose ranking is exactly ``A, B, C``
=================  =====================================================================

Option ids match ``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$``, so ``:`` and ``>`` never occur in
them and every key splits unambiguously. A ranking that leaves out exactly one option is
stored with that option appended (``r:A>B`` of options A, B, C is kept as ``r:A>B>C``):
both say the same thing, and one key per preference keeps the counts canonical. Zero
entries are omitted; a delta may hold negative values (a removed or revised ballot).
"""

from __future__ import annotations

from collections.abc import Iterable

BALLOTS = "n"
SEPARATOR = ":"
RANK_SEPARATOR = ">"


def count_key(option: str) -> str:
    return f"c:{option}"


def histogram_key(option: str, score: int) -> str:
    return f"h:{option}:{score}"


def pairwise_key(preferred: str, other: str) -> str:
    return f"p:{preferred}:{other}"


def ranking_key(order: Iterable[str]) -> str:
    return "r:" + RANK_SEPARATOR.join(order)


def split_key(key: str) -> tuple[str, list[str]]:
    """The kind of a key (``n``, ``c``, ``h``, ``p``, ``r``) and its fields."""
    if key == BALLOTS:
        return BALLOTS, []
    kind, sep, rest = key.partition(SEPARATOR)
    if not sep:
        raise ValueError(f"unknown tally counter key {key!r}")
    if kind == "r":
        return kind, rest.split(RANK_SEPARATOR)
    return kind, rest.split(SEPARATOR)
