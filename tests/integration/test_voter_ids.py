"""Voter ids are told apart after Unicode NFC normalisation, in elections pinned to it.

"José" typed precomposed (NFC) and with a combining accent (NFD, as macOS file systems
and some identity providers give it) were two voters: in an election without revoting,
one person cast two ballots. Elections created now pin ``voter_ids: "nfc"``; those
created before keep comparing exactly (their voters must not become new voters).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import httpx
import pytest

from domain.rules import ElectionRules
from infra.runtime.bootstrap import running_services
from tests.integration.client import VotingClient, assert_problem, bearer, options
from tests.servers import ADMIN, CLIENT, settings_for

NFC = "Jos\u00e9"
NFD = "Jose\u0301"
ZWNJ = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # Persian, ZWNJ within
ZWJ = "ada-\U0001f469\u200d\U0001f4bb"  # an emoji ZWJ sequence


def test_the_two_forms_differ_byte_for_byte() -> None:
    assert NFC.encode() != NFD.encode()


async def test_nfc_and_nfd_are_one_voter_without_revoting(voting: VotingClient) -> None:
    election_id = await voting.open_election(allow_revote=False)
    first = await voting.cast(election_id, {"choice": "a"}, NFC)
    assert first.status_code == 201, first.text
    again = await voting.cast(election_id, {"choice": "b"}, NFD)
    assert_problem(again, 409, "already cast")
    reverse = await voting.open_election(allow_revote=False)
    assert (await voting.cast(reverse, {"choice": "a"}, NFD)).status_code == 201
    assert_problem(await voting.cast(reverse, {"choice": "b"}, NFC), 409, "already cast")


async def test_nfd_revises_the_nfc_ballot_where_revoting_is_on(
    http: httpx.AsyncClient, voting: VotingClient
) -> None:
    election_id = await voting.open_election()
    first = await voting.cast(election_id, {"choice": "a"}, NFC)
    assert first.status_code == 201, first.text
    revised = await voting.cast(election_id, {"choice": "b"}, NFD)
    assert revised.status_code == 200, revised.text
    assert (revised.json()["status"], revised.json()["version"]) == ("revised", 2)
    assert revised.json()["ballot_id"] == first.json()["ballot_id"]
    withdrawn = await http.post(
        f"/api/elections/{election_id}/withdrawals",
        json={"voter_id": NFD},
        headers=bearer(CLIENT),
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["ballot_id"] == first.json()["ballot_id"]


@pytest.mark.parametrize(
    ("voter_id", "said"),
    [
        ("ada ", "starts or ends with whitespace"),
        (" ada", "starts or ends with whitespace"),
        ("ada\u00a0", "starts or ends with whitespace"),
        ("\u3000ada", "starts or ends with whitespace"),
        ("ada\u202e", "bidirectional text control (U+202E)"),
        ("\u202aada\u202c", "bidirectional text control (U+202A)"),
        ("a\u2066d\u2069a", "bidirectional text control (U+2066)"),
    ],
)
async def test_surrounding_whitespace_and_bidi_controls_are_refused(
    http: httpx.AsyncClient, voting: VotingClient, voter_id: str, said: str
) -> None:
    election_id = await voting.open_election()
    refused = await voting.cast(election_id, {"choice": "a"}, voter_id)
    body = assert_problem(refused, 422, said)
    assert body["field"] == "voter_id"
    withdrawn = await http.post(
        f"/api/elections/{election_id}/withdrawals",
        json={"voter_id": voter_id},
        headers=bearer(CLIENT),
    )
    assert_problem(withdrawn, 422, said)


async def test_zwnj_and_zwj_are_part_of_a_voter_id(voting: VotingClient) -> None:
    election_id = await voting.open_election(allow_revote=False)
    for voter_id in (ZWNJ, ZWJ):
        cast = await voting.cast(election_id, {"choice": "a"}, voter_id)
        assert cast.status_code == 201, cast.text
    # and without them, another voter (they are not dropped)
    for voter_id in (ZWNJ.replace("\u200c", ""), ZWJ.replace("\u200d", "")):
        cast = await voting.cast(election_id, {"choice": "a"}, voter_id)
        assert cast.status_code == 201, cast.text


async def test_the_batch_path_applies_the_rule_ballot_by_ballot(
    http: httpx.AsyncClient, voting: VotingClient
) -> None:
    election_id = await voting.open_election(allow_revote=False)
    response = await http.post(
        f"/api/elections/{election_id}/ballots/batch",
        json={
            "ballots": [
                {"voter_id": NFC, "choice": "a"},
                {"voter_id": NFD, "choice": "b"},
                {"voter_id": "ada ", "choice": "a"},
                {"voter_id": "b\u202eob", "choice": "a"},
                {"voter_id": ZWNJ, "choice": "a"},
            ]
        },
        headers=bearer(CLIENT),
    )
    assert response.status_code == 200, response.text
    cast, twice, spaced, bidi, zwnj = response.json()["results"]
    assert cast["status"] == "cast"
    assert twice["status"] == 409, twice
    assert "already cast" in twice["detail"]
    assert (spaced["status"], spaced["field"]) == (422, "ballots[2].voter_id"), spaced
    assert "whitespace" in spaced["detail"]
    assert (bidi["status"], bidi["field"]) == (422, "ballots[3].voter_id"), bidi
    assert "U+202E" in bidi["detail"]
    assert zwnj["status"] == "cast"


def _stored_before(rules: ElectionRules) -> dict[str, Any]:
    """Rules as an election created before voter ids were normalised stored them."""
    stored = rules.to_json()
    del stored["voter_ids"]
    return stored


async def test_an_election_stored_without_the_rule_keeps_comparing_exactly(
    database_url: str, http: httpx.AsyncClient, voting: VotingClient
) -> None:
    """Its voters already cast under exact comparison: one who cast as NFD and comes back
    as NFD must stay that voter (normalising now would make them a new one), so NFC and
    NFD stay two voters there, and nothing is refused that was taken before."""
    created = ElectionRules.create(options=options("a", "b"), method="plurality")
    old = ElectionRules.from_json(_stored_before(created))
    async with running_services(settings_for(database_url)) as services:
        election = await services.app.create_election("Before the rule", old)
        await services.app.open_election(election.id)
    election_id = str(election.id)
    document = (await http.get(f"/api/elections/{election_id}", headers=bearer(ADMIN))).json()
    assert "voter_ids" not in document
    for voter_id in (NFD, NFC, "ada ", "ada"):
        cast = await voting.cast(election_id, {"choice": "a"}, voter_id)
        assert cast.status_code == 201, (voter_id, cast.text)
    again = await voting.cast(election_id, {"choice": "b"}, NFD)
    assert again.status_code == 200, again.text  # the NFD voter revises their own ballot
    assert UUID(again.json()["ballot_id"])


async def test_the_election_document_shows_the_rule(
    http: httpx.AsyncClient, voting: VotingClient
) -> None:
    election = await voting.create_election()
    assert election["voter_ids"] == "nfc"
    read = await http.get(f"/api/elections/{election['id']}", headers=bearer(ADMIN))
    assert read.json()["voter_ids"] == "nfc"
    schema = (await http.get("/openapi.json")).json()["components"]["schemas"]["Election"]
    voter_ids = schema["properties"]["voter_ids"]
    assert voter_ids["enum"] == ["exact", "nfc"]
    assert voter_ids["default"] == "exact"
