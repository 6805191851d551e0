"""Relay pages as a projection worker reads them: decoded once per process, grouped into
unbroken ranges of positions.

A page is decoded only once its signature holds (infra/broker/signing.py ``verified``), and
is known among decoded pages by that signature, never by its name.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from aio_pika.abc import AbstractIncomingMessage

from infra.store.incarnation import Incarnation
from infra.store.log import LogEvent


@dataclass
class Page:
    message: AbstractIncomingMessage
    after: int
    last: int
    events: list[LogEvent] | None  # None: to be read from the store
    # The store incarnation the relay read it from (None: a relay before it said so, or a
    # page that does not decode): infra/store/incarnation.py.
    incarnation: Incarnation | None = None


def contiguous_runs(pages: list[Page]) -> list[list[Page]]:
    """Pages grouped so that each group covers one unbroken range of positions.

    Pages (a1, l1] and (a2, l2] with a2 <= l1 together say "all entries in (a1, max(l1, l2)]";
    with a2 > l1 they do not (the entries in between may exist), so they stay apart.
    """
    runs: list[list[Page]] = []
    for page in sorted(pages, key=lambda p: (p.after, p.last)):
        if runs and page.after <= max(p.last for p in runs[-1]):
            runs[-1].append(page)
        else:
            runs.append([page])
    return runs


def merge(run: list[Page]) -> list[LogEvent] | None:
    if any(page.events is None for page in run):
        return None
    by_position = {event.position: event for page in run for event in page.events or ()}
    return [by_position[position] for position in sorted(by_position)]


def named_span(message: AbstractIncomingMessage) -> tuple[int, int] | None:
    """The range a relay page covers, from its name ("after-last")."""
    after, _, last = (message.message_id or "").partition("-")
    if after.isdigit() and last.isdigit() and int(after) <= int(last):
        return int(after), int(last)
    return None


# Workers of several projections in one process receive the same pages: decode each once.
# A page is known by its signature, checked before: the relay's MAC of its name and its
# exact body (never by a name alone, which any publisher chooses). The cache is
# bounded by the pages' bodies (a decoded page takes 4-5 times its body): 256 pages of a
# catch-up, 1,000 entries each, held 0.3-1.5 GB.
Decoded = tuple[int, int, list[LogEvent], Incarnation | None]
_DECODED: OrderedDict[str, Decoded] = OrderedDict()
_DECODED_SIZES: dict[str, int] = {}
_DECODED_PAGES = 256
_DECODED_BYTES = 8 * 1024 * 1024


def decode_once(signature: str, body: bytes) -> Decoded:
    """The page ``body`` decoded; ``signature``: its verified signature (``verified``)."""
    found = _DECODED.get(signature)
    if found is None:
        found = _DECODED[signature] = decode(body)
        _DECODED_SIZES[signature] = len(body)
        while len(_DECODED) > 1 and (
            len(_DECODED) > _DECODED_PAGES or sum(_DECODED_SIZES.values()) > _DECODED_BYTES
        ):
            oldest, _ = _DECODED.popitem(last=False)
            del _DECODED_SIZES[oldest]
    return found


def decode(body: bytes) -> Decoded:
    page = orjson.loads(body)
    after, last = int(page["after"]), int(page["last"])
    incarnation = Incarnation.from_message(page.get("incarnation"))
    if last < after:
        raise ValueError(f"last ({last}) before after ({after})")
    events = [LogEvent.from_message(item) for item in page["events"]]
    if any(not after < e.position <= last for e in events):
        raise ValueError("an entry lies outside the page's (after, last] range")
    if any(a.position >= b.position for a, b in itertools.pairwise(events)):
        raise ValueError("entries are not in ascending position order")
    return after, last, events, incarnation
