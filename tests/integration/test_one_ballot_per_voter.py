"""One ballot per voter is enforced by the event store itself, across API processes."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import CLIENT, running_api, settings_for

ROUNDS = 20


async def test_concurrent_first_casts_record_exactly_one_ballot(
    database_url: str, api_url: str, voting: VotingClient
) -> None:
    """Two API servers, each with its own writer and connections, race for the same voter."""
    election_id = await voting.open_election(allow_revote=False)
    async with (
        running_api(settings_for(database_url)) as second_url,
        httpx.AsyncClient(base_url=api_url) as first_http,
        httpx.AsyncClient(base_url=second_url) as second_http,
    ):
        first, second = VotingClient(first_http), VotingClient(second_http)
        voters = [voting.voter() for _ in range(ROUNDS)]
        for voter in voters:
            responses = await asyncio.gather(
                first.cast(election_id, {"choice": "a"}, voter),
                second.cast(election_id, {"choice": "b"}, voter),
                first.cast(election_id, {"choice": "c"}, voter),
            )
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [201, 409, 409], [r.text for r in responses]
            for refused in (r for r in responses if r.status_code == 409):
                assert_problem(refused, 409, "already cast a ballot")

    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT state->>'election_id' FROM ("
            "  SELECT convert_from(state, 'UTF8')::jsonb AS state FROM cardinal_events"
            "  WHERE topic = 'domain.ballot:Ballot.Cast') casts"
            " WHERE state->>'election_id' = %s",
            (election_id,),
        ).fetchall()
    assert len(rows) == ROUNDS  # one Cast event per voter, never two


async def test_a_retry_after_the_close_gets_the_receipt_of_the_ballot_it_counted(
    http: httpx.AsyncClient, voting: VotingClient
) -> None:
    """A client whose answer was lost retries after the close: the ballot is counted, so
    the answer is its receipt, not a refusal that says it was not (review helper-31).
    Anything else after the close is still refused."""
    election_id = await voting.open_election()
    voter, other, leaver = voting.voter(), voting.voter(), voting.voter()
    cast = await voting.cast(election_id, {"choice": "a"}, voter, idempotency_key="k-1")
    assert cast.status_code == 201, cast.text
    bulk = f"/api/elections/{election_id}/ballots/batch"
    sent = {"ballots": [{"voter_id": other, "choice": "b", "idempotency_key": "k-2"}]}
    first = await http.post(bulk, json=sent, headers=bearer(CLIENT))
    assert "ballot_id" in first.json()["results"][0], first.text
    assert (await voting.cast(election_id, {"choice": "c"}, leaver)).status_code == 201
    gone = await http.post(
        f"/api/elections/{election_id}/withdrawals",
        json={"voter_id": leaver},
        headers={**bearer(CLIENT), "Idempotency-Key": "k-3"},
    )
    assert gone.status_code == 200, gone.text
    await voting.close(election_id)

    again = await voting.cast(election_id, {"choice": "a"}, voter, idempotency_key="k-1")
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["position"] == cast.json()["position"]
    resent = await http.post(bulk, json=sent, headers=bearer(CLIENT))
    assert resent.json()["results"][0]["position"] == first.json()["results"][0]["position"]
    withdrawn = await http.post(
        f"/api/elections/{election_id}/withdrawals",
        json={"voter_id": leaver},
        headers={**bearer(CLIENT), "Idempotency-Key": "k-3"},
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["position"] == gone.json()["position"]
    # A withdrawal under the key of the voter's cast: the election is closed (not 422).
    reused = await http.post(
        f"/api/elections/{election_id}/withdrawals",
        json={"voter_id": voter},
        headers={**bearer(CLIENT), "Idempotency-Key": "k-1"},
    )
    assert_problem(reused, 409, "closed")
    # Another ballot under the same key, no key, or a new voter: the election is closed.
    for refused in (
        await voting.cast(election_id, {"choice": "b"}, voter, idempotency_key="k-1"),
        await voting.cast(election_id, {"choice": "a"}, voter),
        await voting.cast(election_id, {"choice": "a"}, voting.voter(), idempotency_key="k-9"),
    ):
        assert_problem(refused, 409, "closed")
