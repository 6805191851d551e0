"""Requests that race across API processes (a review ran `cardinal serve` with
WEB_CONCURRENCY=2, a new connection per request): a voter token issued through one process
and used at once through another, and the same keyed revision sent twice at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from infra.runtime.voters import new_voter_token
from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import CLIENT, running_api, settings_for

ROUNDS = 20


@pytest.fixture
async def second(database_url: str) -> AsyncIterator[VotingClient]:
    """A client of a second API process on the same store (its own writer, feed, cache)."""
    async with (
        running_api(settings_for(database_url), projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield VotingClient(http)


async def test_a_token_issued_through_one_process_votes_at_once_through_another(
    voting: VotingClient, second: VotingClient
) -> None:
    """The other process's election did not hold the token yet (its feed follows within a
    poll), and it answered a real token 403 "not issued for this election"."""
    late = await voting.create_election(eligibility="tokens", late_tokens=True)
    await voting.open(late["id"])
    await second.http.get(f"/api/elections/{late['id']}", headers=bearer(CLIENT))  # cached
    for _ in range(ROUNDS):
        (token,) = await voting.issue_tokens(late["id"], 1)
        cast = await second.cast(late["id"], {"choice": "a"}, token=token)
        assert cast.status_code == 201, cast.text

    for _ in range(ROUNDS // 2):  # issued in draft, opened, and voted at once
        election = await voting.create_election(eligibility="tokens")
        tokens = await voting.issue_tokens(election["id"], 2)
        await voting.open(election["id"])
        for token in tokens:
            cast = await second.cast(election["id"], {"choice": "b"}, token=token)
            assert cast.status_code == 201, cast.text

    # A made-up token, and a real one used in another election, are still refused.
    made_up = new_voter_token()  # well formed, never issued: refused after the look
    assert_problem(
        await second.cast(late["id"], {"choice": "a"}, token=made_up),
        403,
        "not issued for this election",
    )
    fixed, (elsewhere, *_) = await voting.token_election()
    assert_problem(
        await second.cast(late["id"], {"choice": "a"}, token=elsewhere),
        403,
        "not issued for this election",
    )
    assert (await second.cast(fixed, {"choice": "a"}, token=elsewhere)).status_code == 201


async def test_the_same_keyed_revision_sent_at_once_is_recorded_once_and_replayed(
    voting: VotingClient, second: VotingClient
) -> None:
    """Copies that lost the race were answered 409 "concurrent revision" although their
    request was recorded (a retry then answered 200, replayed)."""
    election_id = await voting.open_election()
    for round_ in range(ROUNDS):
        voter = voting.voter()
        assert (await voting.cast(election_id, {"choice": "a"}, voter)).status_code == 201
        key = f"revise-{round_}"
        copies = await asyncio.gather(
            voting.cast(election_id, {"choice": "b"}, voter, idempotency_key=key),
            second.cast(election_id, {"choice": "b"}, voter, idempotency_key=key),
            voting.cast(election_id, {"choice": "b"}, voter, idempotency_key=key),
        )
        assert [c.status_code for c in copies] == [200, 200, 200], [c.text for c in copies]
        assert len({c.json()["position"] for c in copies}) == 1
        assert {c.json()["version"] for c in copies} == {2}
        replays = [c.headers.get("idempotent-replayed") for c in copies]
        assert replays.count("true") >= 2, replays

        # The same key for another ballot at once: one is recorded, the other refused 422.
        key = f"other-{round_}"
        both = await asyncio.gather(
            voting.cast(election_id, {"choice": "a"}, voter, idempotency_key=key),
            second.cast(election_id, {"choice": "c"}, voter, idempotency_key=key),
        )
        assert sorted(c.status_code for c in both) == [200, 422], [c.text for c in both]
        # Two different revisions at once: each recorded or refused 409, never a replay.
        both = await asyncio.gather(
            voting.cast(election_id, {"choice": "a"}, voter, idempotency_key=f"x-{round_}"),
            second.cast(election_id, {"choice": "c"}, voter, idempotency_key=f"y-{round_}"),
        )
        for response in both:
            assert response.status_code in (200, 409), response.text
            assert "idempotent-replayed" not in response.headers
        assert 200 in [c.status_code for c in both]


async def test_a_keyed_withdrawal_sent_at_once_is_replayed(
    voting: VotingClient, second: VotingClient
) -> None:
    election_id = await voting.open_election()
    for round_ in range(ROUNDS // 2):
        voter = voting.voter()
        assert (await voting.cast(election_id, {"choice": "a"}, voter)).status_code == 201
        headers = {**bearer(CLIENT), "Idempotency-Key": f"leave-{round_}"}
        path = f"/api/elections/{election_id}/withdrawals"
        copies = await asyncio.gather(
            *(
                client.http.post(path, json={"voter_id": voter}, headers=headers)
                for client in (voting, second, voting)
            )
        )
        assert [c.status_code for c in copies] == [200, 200, 200], [c.text for c in copies]
        assert len({c.json()["position"] for c in copies}) == 1


async def test_a_keyed_batch_sent_twice_at_once_records_each_ballot_once(
    voting: VotingClient, second: VotingClient
) -> None:
    """In bulk, a voter's keyed revision was 409 in one copy while recorded in the other,
    and the 409 held back the voter's later ballots (503)."""
    election_id = await voting.open_election()
    path = f"/api/elections/{election_id}/ballots/batch"
    for _ in range(5):
        voters = [voting.voter() for _ in range(300)]
        batch = {
            "ballots": [
                {"voter_id": voter, "choice": choice, "idempotency_key": f"{voter}-{choice}"}
                for voter in voters
                for choice in ("a", "b")
            ]
        }
        copies = await asyncio.gather(
            voting.http.post(path, json=batch, headers=bearer(CLIENT)),
            second.http.post(path, json=batch, headers=bearer(CLIENT)),
        )
        results = []
        for copy in copies:
            assert copy.status_code == 200, copy.text
            results.append(copy.json()["results"])
        refused = [r for copy in results for r in copy if "ballot_id" not in r]
        assert not refused, (len(refused), refused[:3])
        for first, other in zip(*results, strict=True):
            assert first["position"] == other["position"]


async def test_a_token_issued_through_one_process_reads_its_election_through_another(
    voting: VotingClient, second: VotingClient
) -> None:
    """GET the election and its results: the same 403 as a ballot met (api/auth.py)."""
    late = await voting.create_election(eligibility="tokens", late_tokens=True)
    await voting.open(late["id"])
    await second.http.get(f"/api/elections/{late['id']}", headers=bearer(CLIENT))  # cached
    for n in range(ROUNDS):
        (token,) = await voting.issue_tokens(late["id"], 1)
        path = f"/api/elections/{late['id']}" + ("/results" if n % 2 else "")
        read = await second.http.get(path, headers=bearer(token))
        assert read.status_code == 200, read.text


async def test_a_close_answered_by_one_process_is_seen_by_another_with_min_position(
    voting: VotingClient, second: VotingClient
) -> None:
    """After a close was answered 200, another process served the election as open until
    its feed caught up (about 130 ms), and ``?min_position`` was refused 422 ("this
    operation takes none"): a client could not wait for its own write (lifecycle review).
    The close's position, sent back, is now waited for, by a role and by a voter token."""
    for _ in range(ROUNDS // 4):
        election_id, (token,) = await voting.token_election(tokens=1)
        for reader in (CLIENT, token):  # cached there (as a draft, or open)
            seen = await second.http.get(f"/api/elections/{election_id}", headers=bearer(reader))
            assert seen.json()["status"] != "closed", seen.text
        position = (await voting.close(election_id))["position"]
        for reader in (CLIENT, token):
            seen = await second.http.get(
                f"/api/elections/{election_id}",
                params={"min_position": position},
                headers=bearer(reader),
            )
            assert seen.status_code == 200, seen.text
            assert "warning" not in seen.headers
            assert seen.json()["status"] == "closed"
    # A position the log has not reached: the view as it is, after the wait, saying so.
    ahead = await second.http.get(
        f"/api/elections/{election_id}",
        params={"min_position": 10**12},
        headers=bearer(CLIENT),
    )
    assert ahead.status_code == 200, ahead.text
    assert ahead.headers["warning"] == f'199 - "position {10**12} not reached yet"'
