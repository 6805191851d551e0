"""The tally's rebuild counts the whole log in memory: within a bound per voter."""

from __future__ import annotations

import random
import tracemalloc
import uuid

from domain.rules import ElectionRules
from domain.votes import Vote, parse_vote
from infra.store.log import LogEvent
from projections.tally.bulk import TallyBulk

OPTIONS = [{"id": f"o{n}", "label": f"Option {n}"} for n in range(100)]
VOTERS = 2_000


def test_a_rebuild_holds_each_voters_vote_as_its_stored_text() -> None:
    """A decoded vote of 100 scores took about 13 KB, and a rebuild held every voter's:
    1.1 GB for 60,000 such ballots (review helper-59). Identical votes share one text."""
    rules = ElectionRules.create(options=OPTIONS, method="score", min_score=0, max_score=9)
    election = uuid.uuid4()
    created = LogEvent(1, election, 1, "ElectionCreated", {"rules": rules.to_json()})
    chance = random.Random(7)
    votes = [
        parse_vote(rules, {"scores": {o["id"]: chance.randint(0, 9) for o in OPTIONS}})
        for _ in range(VOTERS)
    ]
    bulk = TallyBulk()
    bulk.add([created])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bulk.add(_cast(election, votes))  # decoded as from a relay page, then dropped
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / VOTERS < 2_000, f"{held / VOTERS:.0f} bytes per voter"
    assert bulk.tallies()[election].counters() == _direct(rules, votes)

    same = TallyBulk()
    same.add([created, *_cast(election, [votes[0]] * 50)])
    texts = {id(vote) for _, vote, *_ in same.ballots.values()}
    assert len(texts) == 1


def _cast(election: uuid.UUID, votes: list[Vote]) -> list[LogEvent]:
    return [
        LogEvent(
            2 + n,
            uuid.uuid4(),
            1,
            "BallotCast",
            {
                "election_id": str(election),
                "vote": vote.to_json(),
                "timestamp": "2026-12-06T10:00:00+00:00",
            },
        )
        for n, vote in enumerate(votes)
    ]


def _direct(rules: ElectionRules, votes: list) -> dict:  # type: ignore[type-arg]
    from domain.tabulation import Tally

    tally = Tally(rules)
    for vote in votes:
        tally.add(vote, 1)
    return tally.counters()
