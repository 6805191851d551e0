"""The EventWriter port's contract, run against each of its adapters.

``DirectWriter`` records through the library's recorder (here on its in-memory
persistence); ``GroupCommitWriter`` batches appends into PostgreSQL transactions. The
service layer relies on exactly these promises from either.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID, uuid4

import pytest

from domain.application import DirectWriter, VotingApplication
from domain.ballot import Ballot
from domain.election import Election, ElectionStatus
from domain.errors import ElectionNotOpen
from domain.ports import EventWriter, VersionConflict
from domain.rules import ElectionRules
from infra.store import open_application
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from tests.databases import create_database, drop_database

RULES = ElectionRules.create(
    options=[{"id": "a", "label": "A"}, {"id": "b", "label": "B"}], method="plurality"
)


def _ballot(election_id: UUID, voter: str, choice: str = "a") -> list[Ballot.Cast]:
    return [Ballot.first_cast(election_id, voter, {"choice": choice}, None)]


class EventWriterContract:
    """What every EventWriter promises. Subclasses provide the ``writer`` fixture."""

    async def _open_election(self, writer: EventWriter) -> Election:
        election = Election.start("Contract", RULES)
        election.open()
        await writer.append(election)
        return election

    async def test_an_append_returns_where_it_landed_and_positions_grow(
        self, writer: EventWriter
    ) -> None:
        election = await self._open_election(writer)
        first = await writer.append_events(_ballot(election.id, "v1"))
        second = await writer.append_events(_ballot(election.id, "v2"))
        assert 0 < first.position < second.position
        assert first.digest is None or len(first.digest) == 64
        assert (await writer.recorded(election.id, 2)).position < first.position

    async def test_a_taken_version_is_a_conflict_and_records_nothing(
        self, writer: EventWriter
    ) -> None:
        election = await self._open_election(writer)
        await writer.append_events(_ballot(election.id, "same"))
        with pytest.raises(VersionConflict):
            await writer.append_events(_ballot(election.id, "same", "b"))
        ballot = await writer.load_ballot(_ballot(election.id, "same")[0].originator_id)
        assert ballot is not None
        assert (ballot.version, ballot.vote) == (1, {"choice": "a"})

    async def test_appends_of_several_events_are_atomic(self, writer: EventWriter) -> None:
        election = await self._open_election(writer)
        taken = _ballot(election.id, "taken")
        await writer.append_events(taken)
        fresh = _ballot(election.id, "fresh")
        with pytest.raises(VersionConflict):
            await writer.append_events([*fresh, *taken])
        assert await writer.load_ballot(fresh[0].originator_id) is None

    async def test_a_guarded_append_after_the_close_is_refused(self, writer: EventWriter) -> None:
        election = await self._open_election(writer)
        on_time = _ballot(election.id, "early")
        await writer.append_events(on_time, while_open=election.id)
        election.close()
        await writer.append(election)
        late = _ballot(election.id, "late")
        with pytest.raises(ElectionNotOpen):
            await writer.append_events(late, while_open=election.id)
        assert await writer.load_ballot(late[0].originator_id) is None
        loaded = await writer.load_election(election.id)
        assert loaded is not None
        assert loaded.status is ElectionStatus.CLOSED

    async def test_concurrent_appends_are_all_recorded(self, writer: EventWriter) -> None:
        election = await self._open_election(writer)
        recorded = await asyncio.gather(
            *(writer.append_events(_ballot(election.id, f"c{n}")) for n in range(40))
        )
        assert len({r.position for r in recorded}) == 40

    async def test_append_each_settles_each_append_on_its_own(self, writer: EventWriter) -> None:
        election = await self._open_election(writer)
        taken = _ballot(election.id, "taken")
        await writer.append_events(taken)
        fresh = [_ballot(election.id, f"each{n}") for n in range(30)]
        results = await writer.append_each(
            [*fresh[:10], _ballot(election.id, "taken", "b"), *fresh[10:]],
            while_open=election.id,
        )
        assert isinstance(results[10], VersionConflict)
        positions = [r.position for r in results if not isinstance(r, Exception)]
        assert len(set(positions)) == 30
        for events in fresh:
            assert await writer.load_ballot(events[0].originator_id) is not None
        ballot = await writer.load_ballot(taken[0].originator_id)
        assert ballot is not None
        assert ballot.vote == {"choice": "a"}  # the conflicting one changed nothing
        assert await writer.append_each([]) == []

    async def test_append_each_after_the_close_refuses_every_guarded_append(
        self, writer: EventWriter
    ) -> None:
        election = await self._open_election(writer)
        election.close()
        await writer.append(election)
        late = [_ballot(election.id, f"late{n}") for n in range(5)]
        results = await writer.append_each(late, while_open=election.id)
        assert all(isinstance(r, ElectionNotOpen) for r in results)
        for events in late:
            assert await writer.load_ballot(events[0].originator_id) is None

    async def test_unknown_aggregates_read_as_none_and_unknown_versions_as_lookup_errors(
        self, writer: EventWriter
    ) -> None:
        assert await writer.load_election(uuid4()) is None
        assert await writer.load_ballot(uuid4()) is None
        election = await self._open_election(writer)
        assert await writer.load_ballot(election.id) is None  # not a ballot
        with pytest.raises(LookupError):
            await writer.recorded(election.id, 99)

    async def test_load_ballots_reads_many_ballots_with_where_each_version_landed(
        self, writer: EventWriter
    ) -> None:
        """The bulk path's retries are answered from this one read: each ballot as
        ``load_ballot`` has it, each version's place (and receipt) as ``recorded`` has it."""
        election = await self._open_election(writer)
        ids = []
        for n in range(5):
            events = [Ballot.first_cast(election.id, f"many{n}", {"choice": "a"}, f"k{n}")]
            await writer.append_events(events, while_open=election.id)
            ids.append(events[0].originator_id)
        revised = await writer.load_ballot(ids[0])
        assert revised is not None
        revised.revise({"choice": "b"}, "k0-again")
        await writer.append(revised, while_open=election.id)
        assert await writer.load_ballots([]) == {}
        found = await writer.load_ballots([*ids, uuid4(), election.id])  # (not ballots)
        assert sorted(found) == sorted(ids)
        for ballot_uuid, stored in found.items():
            alone = await writer.load_ballot(ballot_uuid)
            assert alone is not None
            assert (stored.ballot.id, stored.ballot.version) == (alone.id, alone.version)
            assert (stored.ballot.vote, stored.ballot.requests) == (alone.vote, alone.requests)
            assert sorted(stored.recorded) == list(range(1, alone.version + 1))
            for version, recorded in stored.recorded.items():
                assert recorded == await writer.recorded(ballot_uuid, version)
        assert found[ids[0]].ballot.requests == {
            "k0": (1, {"choice": "a"}),
            "k0-again": (2, {"choice": "b"}),
        }


class TestDirectWriter(EventWriterContract):
    @pytest.fixture
    def writer(self) -> EventWriter:
        return DirectWriter(VotingApplication())


class TestGroupCommitWriter(EventWriterContract):
    @pytest.fixture
    async def writer(self) -> AsyncIterator[EventWriter]:
        url = create_database("cardinal_contract")
        migrate(url)
        app = open_application(url)
        writer = GroupCommitWriter(app, url)
        writer.start()
        try:
            yield writer
        finally:
            await writer.stop()
            app.close()
            drop_database(url)
