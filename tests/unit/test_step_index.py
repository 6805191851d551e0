"""Time travel's step index dates a stepped reader's document by the rule the tally and
verify use (``Steps.position``), for every log shape: one written around the application
(a ballot before its election's Opened entry) included (merge review mr1, finding 3)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import pytest
from eventsourcing.domain import DomainEventProtocol

from api.recounts import _Replay
from domain.application import VotingApplication
from domain.ballot import Ballot
from domain.election import Election
from domain.rules import ElectionRules
from infra.audit.records import Entry


def application() -> VotingApplication:
    return VotingApplication(env={"TRANSCODER_TOPIC": "infra.store.transcoder:OrjsonTranscoder"})


def _entries(events: Sequence[DomainEventProtocol[UUID]]) -> list[Entry]:
    mapper = application().mapper
    entries = []
    for position, event in enumerate(events, start=1):
        stored = mapper.to_stored_event(event)
        entries.append(
            Entry(
                position,
                UUID(str(stored.originator_id)),
                stored.originator_version,
                stored.topic,
                stored.state,
                None,
                None,
            )
        )
    return entries


@pytest.mark.parametrize("step", [1, 10])
@pytest.mark.parametrize("ballot_first", [False, True])
def test_time_travel_dates_as_steps_do(step: int, ballot_first: bool) -> None:
    rules = ElectionRules.create(
        options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
        method="plurality",
        live_results_step=step,
    )
    election = Election.start("E", rules)
    election.open()
    created, opened = election.collect_events()
    ballot = Ballot.first_cast(election.id, "v1", {"choice": "a"}, None)
    events = [created, ballot, opened] if ballot_first else [created, opened, ballot]
    entries = _entries(events)
    replay = _Replay(application().mapper, election.id, len(entries))
    replay.apply(entries)
    index = replay.finish(len(entries)).index
    steps = replay.recount.elections[election.id].steps
    assert index.view(len(entries))[0] == steps.position
