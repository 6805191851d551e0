"""An election's unsealed entries are picked as the sealer will file them once sealed:
by the election id a ballot names, parsed, not compared as text (infra/audit/records.py)."""

from __future__ import annotations

import uuid

import orjson
import pytest

from infra.audit.records import Entry, _belongs

ELECTION = uuid.UUID("16fc2f67-f0b3-418c-a73c-75595f98e146")  # fixed: test ids name it


def _ballot(named: object) -> Entry:
    state = orjson.dumps({"election_id": named, "vote": {"choice": "a"}})
    return Entry(7, uuid.uuid4(), 1, "domain.ballot:Ballot.Cast", state, None, None)


@pytest.mark.parametrize(
    "named", [str(ELECTION), str(ELECTION).upper(), ELECTION.hex, f"{{{ELECTION}}}"]
)
def test_a_ballot_naming_the_election_in_any_spelling_belongs(named: str) -> None:
    assert _belongs(_ballot(named), ELECTION)


@pytest.mark.parametrize("named", ["032535ff-1f57-4bfe-859a-d84b1b67614e", "not an id", 42, None])
def test_a_ballot_naming_another_election_or_none_does_not(named: object) -> None:
    assert not _belongs(_ballot(named), ELECTION)


def test_the_elections_own_events_belong() -> None:
    entry = Entry(3, ELECTION, 2, "domain.election:Election.Opened", b"{}", None, None)
    assert _belongs(entry, ELECTION)
