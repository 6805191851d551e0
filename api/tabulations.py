"""Live results' documents, counted off the event loop.

A results document is counted from the tally's counters on read, and a ranked method over
many options takes a good part of a second of CPU (STV, 100 options and 25,000 distinct
rankings: about 0.7 s; Ranked Pairs' and IRV's searches of ties, hundreds of ms even on a
few ballots). On the event loop that stalled every request of the process meanwhile, and
every new entry (of an election counted in steps of one, or for auditors) or step makes a
new document. So a document is counted in a worker thread, one at a time per process (a
turn of its own, beside time travel's recounts: a recount holds its turn for seconds), and
identical requests (same election, tally version, position and view) share one count.

Python code holds the GIL, and CPython hands it over every switch interval (5 ms): with
one count running, the event loop still gets it back within that, each time it wakes up.
More counts at once would each take their share from the loop, and they would not go
faster together, for the GIL runs one at a time anyway: hence one per process.

A request waits up to ``TABULATION_WAIT`` for its turn, in arrival order, then gets a 503
with Retry-After: a reader (a dashboard, a client after its ballot) expects the results, and
a few documents queued before it are seconds at most; a wait past that means the process
has more distinct documents to count than it can, and a retry later sheds that load.

A tiny tally (few options, few counters) is counted inline: a thread hop costs more than
the count (about 60 µs against well under a millisecond).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

from api import turns
from domain.rules import ElectionRules
from infra.runtime.bootstrap import Services
from projections.queries import TallySnapshot

T = TypeVar("T")

TABULATION_WAIT = 5.0  # seconds a document waits for its turn, then 503
BUSY = "this process is counting other results documents (one at a time); retry in a few seconds"
# Counted inline at most: measured at 2.6 ms for the slowest method (STV, tied), under
# 0.5 ms for most; one more option or a few more counters and a search can take 100s of ms.
INLINE_OPTIONS = 10
INLINE_COUNTERS = 200


def tiny(rules: ElectionRules, snapshot: TallySnapshot) -> bool:
    """Whether a document of this snapshot is cheaper counted inline than in a thread."""
    counters = max(len(snapshot.counters), len(snapshot.published_counters or {}))
    return len(rules.options) <= INLINE_OPTIONS and counters <= INLINE_COUNTERS


async def tabulate(services: Services, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` (which counts in a worker thread) in the process's tabulation turn, shared
    by every request for the same ``key``."""
    return await turns.run_shared(
        services.tabulations, key, work, turn=services.tabulating, wait=TABULATION_WAIT, busy=BUSY
    )
