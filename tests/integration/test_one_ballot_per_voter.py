"""One ballot per voter is enforced by the event store itself, across API processes."""

from __future__ import annotations

import asyncio

import httpx
import psycopg

from tests.integration.client import VotingClient, assert_problem
from tests.servers import running_api, settings_for

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
