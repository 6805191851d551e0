"""The whole life of an election over HTTP, checked against the log it leaves behind."""

from __future__ import annotations

import httpx

from tests.integration.client import VotingClient, bearer, every_election, options
from tests.servers import ADMIN, AUDITOR, CLIENT


async def test_an_election_from_creation_to_results_leaves_every_fact_in_the_log(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    created = await voting.create_election("plurality", allow_revote=True)
    election_id = created["id"]
    assert created["status"] == "draft"
    assert created["options"] == options("a", "b", "c")
    assert created["method"] == "plurality"
    assert isinstance(created["position"], int)

    opened = await voting.open(election_id)
    assert opened["status"] == "open"
    assert opened["position"] > created["position"]

    first = await voting.cast(election_id, {"choice": "a"}, "alice")
    assert first.status_code == 201, first.text
    receipt = first.json()
    assert receipt["status"] == "cast"
    assert receipt["version"] == 1
    assert receipt["position"] > opened["position"]

    assert (await voting.cast(election_id, {"choice": "b"}, "bob")).status_code == 201
    assert (await voting.cast(election_id, {"choice": "b"}, "carol")).status_code == 201
    revised = await voting.cast(election_id, {"choice": "c"}, "alice")
    assert revised.status_code == 200, revised.text
    assert revised.json()["status"] == "revised"
    assert revised.json()["ballot_id"] == receipt["ballot_id"]
    assert revised.json()["version"] == 2

    withdrawn = await http.post(
        f"/api/elections/{election_id}/withdrawals",
        json={"voter_id": "carol"},
        headers=bearer(CLIENT),
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["status"] == "withdrawn"

    closed = await voting.close(election_id)
    assert closed["status"] == "closed"

    results = await voting.results(election_id, min_position=closed["position"])
    assert results.status_code == 200, results.text
    body = results.json()
    assert body["election_id"] == election_id
    assert body["status"] == "closed"
    assert body["ballots"] == 2
    votes = {option["id"]: option["votes"] for option in body["options"]}
    assert votes == {"a": 0, "b": 1, "c": 1}
    assert sorted(body["winners"]) == ["b", "c"]  # a tie the default rule reports
    assert body["position"] >= closed["position"]

    log = [e for e in await voting.audit_events() if _belongs(e, election_id, receipt)]
    assert [e["type"] for e in log] == [
        "ElectionCreated",
        "ElectionOpened",
        "BallotCast",
        "BallotCast",
        "BallotCast",
        "BallotRevised",
        "BallotWithdrawn",
        "ElectionClosed",
    ]
    positions = [e["position"] for e in log]
    assert positions == sorted(positions)
    cast_event = log[2]
    assert cast_event["data"]["vote"] == {"choice": "a"}
    assert "alice" not in str(log)  # only the HMAC voter key reaches the log


def _belongs(event: dict[str, object], election_id: str, receipt: dict[str, object]) -> bool:
    # (The shared log also holds entries other tests wrote unreadable on purpose.)
    data = event["data"] if isinstance(event["data"], dict) else {}
    return event["stream_id"] == election_id or data.get("election_id") == election_id


async def test_elections_are_listed_and_fetched_by_any_role(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("approval")
    for token in (ADMIN, AUDITOR, CLIENT):
        fetched = await http.get(f"/api/elections/{election_id}", headers=bearer(token))
        assert fetched.status_code == 200
        assert fetched.json()["method"] == "approval"
    listed = await every_election(http, bearer(CLIENT), status="open")
    assert election_id in [e["id"] for e in listed]
    assert all(e["status"] == "open" for e in listed)


async def test_token_elections_take_ballots_from_issued_voter_tokens_only(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id, tokens = await voting.token_election("irv", tokens=3, allow_revote=False)
    assert len(set(tokens)) == 3

    cast = await voting.cast(election_id, {"ranking": ["b", "a"]}, token=tokens[0])
    assert cast.status_code == 201, cast.text
    fetched = await http.get(f"/api/elections/{election_id}", headers=bearer(ADMIN))
    assert fetched.json()["tokens_issued"] == 3

    events = [e for e in await voting.audit_events() if e["stream_id"] == election_id]
    issued_event = next(e for e in events if e["type"] == "ElectionTokensIssued")
    assert not set(tokens) & set(issued_event["data"]["voter_keys"])  # keys, never tokens
