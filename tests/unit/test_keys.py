"""The hot path's own computations of ids and keys equal their definitions."""

from __future__ import annotations

import hashlib
import hmac
from uuid import UUID, uuid5

from hypothesis import given
from hypothesis import strategies as st

from domain.ballot import ballot_id
from domain.rules import VoterIds
from infra.runtime.voters import VoterKeys


@given(st.uuids(), st.text())
def test_a_ballot_id_is_uuid5_of_the_election_and_the_ballot_key(
    election_id: UUID, ballot_key: str
) -> None:
    assert ballot_id(election_id, ballot_key) == uuid5(election_id, ballot_key)


@given(st.text(min_size=1), st.uuids(), st.text())
def test_voter_keys_are_the_documented_hmacs(secret: str, election_id: UUID, voter: str) -> None:
    keys = VoterKeys(secret)
    key = secret.encode()
    credential = hmac.new(
        key, b"voter-id\x00" + election_id.bytes + voter.encode(), hashlib.sha256
    ).hexdigest()
    expected = hmac.new(key, b"ballot\x00" + credential.encode(), hashlib.sha256).hexdigest()
    found = keys.for_voter_id(election_id, voter, VoterIds.EXACT)
    assert (found.credential, found.ballot_key) == (credential, expected)
    again = keys.for_voter_id(
        election_id, voter, VoterIds.EXACT
    )  # the keyed state is copied, not used up
    assert again == found
