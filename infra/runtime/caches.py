"""A cache bounded by the bytes its values take, not by how many there are.

Results documents and time travel's recounts differ in size by orders of magnitude: a
plurality election's document is a few hundred bytes, a recount of a Schulze election of
60 options and 4,000 ballots with its document about 1.5 MB. Bounded by entries (512 of
them), 300 distinct ``?at=`` positions of such an election grew a process by 450 MB. So
each value is kept with an estimate of its size (cheap to make: the caller knows what it
holds), and the least recently used go first once the budget is spent. A value larger than
the whole budget is not kept.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import orjson

# Rough bytes a Python object graph takes per byte of its JSON (dicts, lists, small ints
# and short strings: measured at 3-6 for results documents), and per counter kept
# beside its key's characters (a dict slot, the key's str header, an int).
PER_JSON_BYTE = 6
PER_COUNTER = 130


def json_size(value: Any) -> int:
    """An estimate of the memory a JSON-like value (a results document) takes."""
    return len(orjson.dumps(value)) * PER_JSON_BYTE


def counters_size(counters: dict[str, int] | None) -> int:
    """An estimate of the memory a tally's counters take."""
    if not counters:
        return 0
    return sum(len(key) for key in counters) + PER_COUNTER * len(counters)


class SizedCache:
    """Values by key, within ``budget`` bytes (as estimated by whoever puts them)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._items: dict[Hashable, tuple[Any, int]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Any:
        """The value kept for ``key`` (None: none), now the most recently used."""
        item = self._items.pop(key, None)
        if item is None:
            return None
        self._items[key] = item
        return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep ``value`` (about ``size`` bytes), dropping the least recently used ones
        for room."""
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old[1]
        size = max(size, 1)
        if size > self.budget:
            return
        self._items[key] = (value, size)
        self.used += size
        while self.used > self.budget:
            _, (_, dropped) = self._oldest()
            self.used -= dropped

    def discard(self, key: Hashable) -> None:
        """Let the value kept for ``key`` go, if any."""
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old[1]

    def _oldest(self) -> tuple[Hashable, tuple[Any, int]]:
        key = next(iter(self._items))
        return key, self._items.pop(key)

    def clear(self) -> None:
        self._items.clear()
        self.used = 0
