"""The counting rule has three implementations, for speed: the recount (the law, as the
audit replays it), the tally's live path (deltas per batch) and its rebuild path (the whole
log in memory). One generated log goes to all three, with no database; they must agree on
every election's statistics, its late ballots, and its stepped publications.

The live path's writes are mirrored here in a few lines (what TallyProjection.apply does
with the rows TallyChanges gives it); tests/integration checks the SQL itself.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any
from uuid import UUID

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.publication import Steps
from domain.recount import Recount
from domain.rules import ElectionRules
from infra.store.log import LogEvent
from projections.tally.bulk import TallyBulk
from projections.tally.changes import BALLOT_TYPES, CountedBallot, CountedElection, TallyChanges
from tests.budget import examples

METHODS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "plurality": lambda rng: {"choice": rng.choice("abc")},
    "approval": lambda rng: {"approve": sorted(set(rng.choices("abc", k=2)))},
    "irv": lambda rng: {"ranking": rng.sample("abc", rng.randint(1, 3))},
    "star": lambda rng: {"scores": {o: rng.randint(0, 5) for o in "abc"}},
}
OPTIONS = [{"id": o, "label": o.upper()} for o in "abc"]
STAMP = "2026-12-04T12:00:00+00:00"


@st.composite
def logs(draw: st.DrawFn) -> list[LogEvent]:
    """A log of a few elections: created, opened, ballots cast, revised and withdrawn,
    some closed and then sent late ballots, all interleaved."""
    rng = draw(st.randoms(use_true_random=False))
    elections = []
    for n in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from(sorted(METHODS)))
        rules = ElectionRules.create(
            options=OPTIONS, method=method, live_results_step=draw(st.integers(1, 5))
        )
        elections.append((UUID(int=n + 1), method, rules))
    entries: list[tuple[UUID, int, str, dict[str, Any]]] = []
    versions: Counter[UUID] = Counter()

    def add(stream: UUID, kind: str, data: dict[str, Any]) -> None:
        versions[stream] += 1
        entries.append((stream, versions[stream], kind, {**data, "timestamp": STAMP}))

    for election_id, _, rules in elections:
        add(election_id, "ElectionCreated", {"rules": rules.to_json(), "title": "t"})
        add(election_id, "ElectionOpened", {})
    voting: dict[UUID, bool] = {}
    closed: set[UUID] = set()
    for _ in range(draw(st.integers(0, 80))):
        election_id, method, _ = rng.choice(elections)
        if election_id not in closed and rng.random() < 0.02:
            add(election_id, "ElectionClosed", {})
            closed.add(election_id)
            continue
        ballot = UUID(int=1000 * election_id.int + rng.randrange(8))
        if voting.get(ballot) and rng.random() < 0.2:
            add(ballot, "BallotWithdrawn", {"election_id": str(election_id), "vote": None})
            voting[ballot] = False
            continue
        kind = "BallotCast" if ballot not in voting else "BallotRevised"
        vote = METHODS[method](rng)
        add(ballot, kind, {"election_id": str(election_id), "vote": vote})
        voting[ballot] = True
    return [
        LogEvent(position, stream, version, kind, data)
        for position, (stream, version, kind, data) in enumerate(entries, start=1)
    ]


def _by_recount(log: list[LogEvent]) -> dict[UUID, tuple[Any, ...]]:
    recount = Recount()
    for e in log:
        recount.record(e.position, e.stream_id, e.type, e.data)
    found = {}
    for election_id, count in recount.elections.items():
        published = (
            count.published_tally().counters() if count.rules.live_results_step > 1 else None
        )
        if published is not None and not count.steps.published_at:
            published = None  # nothing published yet: no statistics stored either
        steps = count.steps
        found[election_id] = (
            count.tally.counters(),
            count.late,
            steps.entries,
            steps.position,
            published,
        )
    return found


def _by_rebuild(log: list[LogEvent]) -> dict[UUID, tuple[Any, ...]]:
    bulk = TallyBulk()
    bulk.add(log)
    assert bulk.set_aside == []
    late = Counter(election_id for _, election_id, *_ in bulk.late)
    found = {}
    for election_id, tally in bulk.tallies().items():
        steps = bulk.steps[election_id]
        published = bulk.published(election_id, tally)
        found[election_id] = (
            tally.counters(),
            late[election_id],
            steps.entries,
            steps.position,
            None if published is None else orjson.loads(published),
        )
    return found


def _by_live_pages(log: list[LogEvent], cuts: list[int]) -> dict[UUID, tuple[Any, ...]]:
    """Batches as a live worker gets them, each loading what the tables would hold."""
    elections: dict[UUID, dict[str, Any]] = {}
    ballots: dict[UUID, CountedBallot] = {}
    counters: dict[UUID, Counter[str]] = {}
    late: Counter[UUID] = Counter()
    bounds = sorted({0, len(log), *(c % (len(log) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        batch = log[start:end]
        changes = TallyChanges()
        for election_id, row in elections.items():  # what _load_elections reads
            rules = row["rules"]
            steps = Steps(rules.live_results_step, entries=row["entries"])
            steps.published_at = row["published_position"]
            changes.elections[election_id] = CountedElection(rules, row["closed_at"], steps)
        for event in batch:  # what _load_ballots reads
            if event.type in BALLOT_TYPES and event.stream_id in ballots:
                changes.ballots[event.stream_id] = ballots[event.stream_id]
        changes.add(batch)
        for election_id, _ in changes.created:
            election = changes.elections[election_id]
            elections[election_id] = {
                "rules": election.rules,
                "closed_at": None,
                "entries": 0,
                "published_position": election.steps.created_at,
                "published_counters": None,
            }
        for election_id in changes.opened:
            opened = changes.elections[election_id].steps.position
            elections[election_id]["published_position"] = opened
        for election_id, position in changes.closed:
            elections[election_id]["closed_at"] = position
        for ballot_id in changes.changed:
            ballots[ballot_id] = changes.ballots[ballot_id]
        stored = {i: dict(counters.get(i, {})) for i in changes.tallies}
        for election_id, entries, position, published in changes.step_rows(stored):
            row = elections[election_id]
            row["entries"], row["published_position"] = entries, position
            if published is not None:
                row["published_counters"] = orjson.loads(published)
        for election_id, key, value in changes.counter_rows():
            counters.setdefault(election_id, Counter())[key] += value
        late.update(election_id for _, election_id, *_ in changes.late)
    return {
        election_id: (
            {k: v for k, v in counters.get(election_id, Counter()).items() if v},
            late[election_id],
            row["entries"],
            row["published_position"],
            row["published_counters"] if row["rules"].live_results_step > 1 else None,
        )
        for election_id, row in elections.items()
    }


@settings(max_examples=examples(120), deadline=None)
@given(log=logs(), cuts=st.lists(st.integers(0, 200), max_size=8))
def test_recount_live_pages_and_rebuild_count_alike(log: list[LogEvent], cuts: list[int]) -> None:
    truth = _by_recount(log)
    assert _by_rebuild(log) == truth
    assert _by_live_pages(log, cuts) == truth
