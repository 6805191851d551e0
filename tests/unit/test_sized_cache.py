"""Results caches bounded by bytes (review of time travel and streams, 4): a Schulze
election's recount with its document takes about 1.5 MB, a plurality document a few
hundred bytes, so a bound in entries bounded nothing."""

from __future__ import annotations

import random
import tracemalloc
import uuid

import orjson

from domain.election import ElectionStatus
from domain.rules import ElectionRules
from domain.tabulation.statistics import Tally
from domain.votes import stored_vote
from infra.runtime.caches import SizedCache, counters_size, json_size
from projections.queries import TallySnapshot
from projections.results import results_document


def test_it_keeps_within_its_bytes_dropping_the_least_recently_used() -> None:
    cache = SizedCache(100)
    cache.put("a", 1, 40)
    cache.put("b", 2, 40)
    assert cache.get("a") == 1  # now the most recently used
    cache.put("c", 3, 40)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert cache.used == 80
    cache.put("a", 4, 10)  # replaced: its old size is given back
    assert (cache.get("a"), cache.used) == (4, 50)
    cache.put("huge", 5, 101)  # larger than the whole budget: not kept, nothing dropped
    assert ("huge" in cache, len(cache), cache.used) == (False, 2, 50)


def _measured(value: object) -> int:
    """The memory a copy of a JSON-like value takes, as tracemalloc sees it."""
    text = orjson.dumps(value)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        copy = orjson.loads(text)
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del copy
    return size


def test_the_estimates_are_near_what_a_large_ranked_election_takes() -> None:
    options = [{"id": f"o{n}", "label": f"o{n}"} for n in range(60)]
    rules = ElectionRules.from_json(
        {
            "method": "schulze",
            "options": options,
            "eligibility": "client",
            "allow_revote": True,
            "results_visibility": "live",
        }
    )
    tally = Tally(rules)
    chance = random.Random(3)
    for _ in range(1_000):
        ids = [o["id"] for o in options]
        chance.shuffle(ids)
        tally.add(stored_vote(rules, {"ranking": ids[: chance.randint(1, 60)]}))
    counters = tally.counters()
    snapshot = TallySnapshot(1, rules.to_json(), None, 0, counters)
    document = results_document(
        uuid.uuid4(), snapshot, rules, status=ElectionStatus.OPEN, exact=True
    )
    for estimate, measured in (
        (json_size(document), _measured(document)),
        (counters_size(counters), _measured(counters)),
    ):
        assert measured / 2 <= estimate <= measured * 3, (estimate, measured)
