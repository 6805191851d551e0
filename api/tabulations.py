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

A tiny tally (few options, few counters) of a method whose count searches nothing is
counted inline: a thread hop costs more than the count (about 60 µs against at most about
1.2 ms). Size alone bounds nothing for IRV, STV and Ranked Pairs: under REPORT they (IRV
from counting edition 2) explore every choice a tie leaves open, and small elections can cost
hundreds of ms (a review measured 269 ms for IRV, 10 options and 50 ballots with each option
first 5 times; 463 ms for STV, 3 seats and 20 random ballots), so those are always counted
in a thread, whatever their size.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

from api import turns
from domain.rules import ElectionRules, Method
from infra.runtime.bootstrap import Services
from projections.queries import TallySnapshot

T = TypeVar("T")

TABULATION_WAIT = 5.0  # seconds a document waits for its turn, then 503
BUSY = "this process is counting other results documents (one at a time); retry in a few seconds"
# Methods whose count has no search (no exploring of ties, no backtracking): a fixed number
# of passes over the counters and at most O(options³) on the pairwise matrix (Schulze), and
# STAR's open runoff at most C(10, 2) = 45 runoffs. Within the size bounds below, the worst
# tallies constructed (all tied, under both tie-break rules, 101 score levels for score and
# STAR; 2 shared cores) cost, counters decoded to JSON document: STAR 1.2 ms, score, Borda
# and Schulze 0.6 ms, Minimax 0.5 ms, Copeland 0.4 ms, plurality and approval 0.06 ms.
# IRV, STV and Ranked Pairs search the choices a tie leaves open (bounded by their
# SEARCH_BUDGETs, not by the tally's size): never inline, however small. A method added later is
# counted in a thread until it is shown to belong here.
INLINE_METHODS = frozenset(
    {
        Method.PLURALITY,
        Method.APPROVAL,
        Method.SCORE,
        Method.STAR,
        Method.BORDA,
        Method.SCHULZE,
        Method.COPELAND,
        Method.MINIMAX,
    }
)
INLINE_OPTIONS = 10
INLINE_COUNTERS = 200
INLINE_TEXT = 32_768  # characters of counters decoded on the loop, at most (about 0.1 ms)


def inline_method(rules: ElectionRules) -> bool:
    """Whether a document of these rules may be counted inline at all: a method with no
    search (``INLINE_METHODS``), few options."""
    return rules.method in INLINE_METHODS and len(rules.options) <= INLINE_OPTIONS


def counters_bound(rules: ElectionRules, entries: int) -> int:
    """At most how many counters a tally of these rules holds after ``entries`` ballot
    entries (``domain.tabulation.counters``; the published counters, of fewer entries, no
    more): the ballots' count, one per option (plurality, approval), per option and score
    level held, each ballot holding one per option (score, STAR), per ordered pair of
    options (ranked methods, STAR), and for ranked methods one per distinct ranking, a new
    one at most per entry (a revision replaces one ranking by another)."""
    n = len(rules.options)
    method = rules.method
    bound = 1
    if method in (Method.PLURALITY, Method.APPROVAL):
        bound += n
    if method.is_scored:
        low = rules.min_score if rules.min_score is not None else 0
        levels = rules.max_score - low + 1 if rules.max_score is not None else 0
        bound += n * min(levels, max(entries, 0))
    if method is Method.STAR or method.is_ranked:
        bound += n * (n - 1)
    if method.is_ranked:
        bound += max(entries, 0)
    return bound


def may_be_tiny(rules: ElectionRules, entries: int) -> bool:
    """Whether a document of these rules, counted after ``entries`` ballot entries (as
    its snapshot's head says), may be tiny (``tiny``): an inline method whose counters may
    be few (``counters_bound``). Its counters are read before its turn, to tell; every
    other document's are read in its turn, where identical misses share one read (a ranked
    tally holds one counter per distinct ranking: read before the turn, 8 concurrent
    misses of a Borda election after a publication read its counters 4 times)."""
    return inline_method(rules) and counters_bound(rules, entries) <= INLINE_COUNTERS


def tiny(rules: ElectionRules, snapshot: TallySnapshot) -> bool:
    """Whether a document of this snapshot is cheaper counted inline than in a thread: a
    method with no search (``INLINE_METHODS``), few options, few counters."""
    counters = max(len(snapshot.counters), len(snapshot.published_counters or {}))
    return inline_method(rules) and counters <= INLINE_COUNTERS


async def tabulate(services: Services, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
    """``work`` (which counts in a worker thread) in the process's tabulation turn, shared
    by every request for the same ``key``."""
    return await turns.run_shared(
        services.tabulations, key, work, turn=services.tabulating, wait=TABULATION_WAIT, busy=BUSY
    )
