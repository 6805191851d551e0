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


# The most positions one run of merged pages spans. A run is applied in one transaction,
# its entries counted on the event loop without a pause: 256 full pages of a STAR election
# over 100 options (440 us an entry) held the loop about two minutes, past the idle limits
# of the page's own transaction and of the leaders' sessions whose keepalives share that
# loop in `cardinal serve` (merge reviews mr2, mr4). 20,000: 9 s at that worst, 0.6 s for
# a few options.
MAX_RUN_SPAN = 20_000


def contiguous_runs(pages: list[Page], max_span: int = MAX_RUN_SPAN) -> list[list[Page]]:
    """Pages grouped so that each group covers one unbroken range of positions, at most
    ``max_span`` positions long unless one page is longer.

    Pages (a1, l1] and (a2, l2] with a2 <= l1 together say "all entries in (a1, max(l1, l2)]";
    with a2 > l1 they do not (the entries in between may exist), so they stay apart. A run
    cut for its length goes on in the next one, which starts within it (entries applied
    already are passed over as duplicates).
    """
    runs: list[list[Page]] = []
    for page in sorted(pages, key=lambda p: (p.after, p.last)):
        if (
            runs
            and page.after <= max(p.last for p in runs[-1])
            and page.last - runs[-1][0].after <= max_span
        ):
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
