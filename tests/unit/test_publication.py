"""Stepped live results, as a property of the recount: whatever the log and whenever one
reads, the published results move only in whole steps, and are exact at each step."""

from __future__ import annotations

import itertools
from uuid import UUID, uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.recount import Recount
from domain.rules import ElectionRules
from tests.budget import examples

OPTIONS = [{"id": i, "label": i.upper()} for i in "abc"]
# (voter, what they do): a choice casts or revises, None withdraws
Operation = tuple[int, str | None]
operations = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["a", "b", "c", None])), max_size=60
)


def _replay(step: int, ops: list[Operation], upto: int | None = None) -> Recount:
    """An election with these ballot entries (position 3 on), recounted up to ``upto``."""
    recount = Recount()
    election = UUID(int=1)
    rules = ElectionRules.create(options=OPTIONS, method="plurality", live_results_step=step)
    recount.record(1, election, "ElectionCreated", {"rules": rules.to_json()})
    recount.record(2, election, "ElectionOpened", {})
    voting: set[int] = set()
    position = 2
    for voter, choice in ops:
        if choice is None and voter not in voting:
            continue  # nothing to withdraw: the API would refuse it
        position += 1
        if upto is not None and position > upto:
            break
        data = {
            "election_id": str(election),
            "vote": None if choice is None else {"choice": choice},
        }
        kind = "BallotWithdrawn" if choice is None else "BallotCast"
        recount.record(position, UUID(int=1000 + voter), kind, data)
        (voting.discard if choice is None else voting.add)(voter)
    return recount


@settings(max_examples=examples(300), deadline=None)
@given(step=st.integers(1, 6), ops=operations, reads=st.lists(st.integers(0, 60), max_size=12))
def test_published_results_move_only_in_whole_steps(
    step: int, ops: list[Operation], reads: list[int]
) -> None:
    seen = []
    for read in sorted(reads):
        count = _replay(step, ops, upto=2 + read).elections[UUID(int=1)]
        published = count.published_tally()
        seen.append((count.steps.published_entries, count.steps.position, published.counters()))
        # What is published at a step is exactly the count at that step's position.
        exact = _replay(step, ops, upto=count.steps.position).elections[UUID(int=1)]
        assert published.counters() == exact.tally.counters()
        assert count.steps.published_entries % step == 0
        assert count.steps.entries - count.steps.published_entries < step
    for (entries_a, position_a, counters_a), (
        entries_b,
        position_b,
        counters_b,
    ) in itertools.pairwise(seen):
        if (position_a, counters_a) != (position_b, counters_b):
            assert entries_b - entries_a >= step  # never fewer ballot entries than a step


@settings(max_examples=examples(100), deadline=None)
@given(ops=operations)
def test_exact_live_results_are_published_at_every_entry(ops: list[Operation]) -> None:
    count = _replay(1, ops).elections[UUID(int=1)]
    assert count.published_tally().counters() == count.tally.counters()
    assert count.steps.published_entries == count.steps.entries


def test_before_the_first_step_nothing_is_published() -> None:
    count = _replay(10, [(v, "a") for v in range(5)]).elections[UUID(int=1)]
    assert count.tally.ballots == 5
    assert count.published_tally().ballots == 0
    assert count.steps.position == 2  # the Opened entry (where the status changed)


def test_an_entry_for_an_unknown_election_is_set_aside_and_counting_goes_on() -> None:
    recount = _replay(1, [(0, "a")])
    recount.record(10, uuid4(), "BallotCast", {"election_id": str(uuid4()), "vote": None})
    recount.record(
        11, UUID(int=1001), "BallotCast", {"election_id": str(UUID(int=1)), "vote": {"choice": "b"}}
    )
    assert [aside.position for aside in recount.set_aside] == [10]
    assert "holds no election" in recount.set_aside[0].reason
    assert recount.elections[UUID(int=1)].tally.ballots == 2
