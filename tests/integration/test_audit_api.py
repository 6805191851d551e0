"""Auditors over HTTP: the hash chain re-derived from the served log, checkpoints, receipts,
one election's entries, and results as of any position."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx

from infra.audit.chain import GENESIS, chain_hash, entry_hash, signature_valid
from tests.integration.client import VotingClient, assert_problem, bearer
from tests.servers import AUDITOR, CLIENT


async def _receipt_lookup(http: httpx.AsyncClient, digest: str) -> dict[str, Any]:
    """The receipts endpoint's answer once the sealer has linked the entry (ms, usually)."""
    for _ in range(200):
        response = await http.get(f"/api/audit/receipts/{digest}")
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        assert response.status_code == 404, response.text
        await asyncio.sleep(0.05)
    raise AssertionError(f"receipt {digest} was never sealed")


def _payload(event: dict[str, Any]) -> bytes:
    if event["data"] is None:  # an entry that is not JSON: served as its bytes
        return bytes.fromhex(event["state_hex"])
    state = {**event["data"], "timestamp": event["timestamp"]}
    return json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


async def test_the_served_log_re_derives_its_own_hash_chain(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("irv")
    last = None
    for n in range(5):
        last = (await voting.cast(election_id, {"ranking": ["a", "b"]}, f"chain-{n}")).json()
    assert last is not None
    await _receipt_lookup(http, last["hash"])  # sealed up to here
    events = await voting.audit_events()
    sealed = [e for e in events if e["hash"] is not None]
    assert sealed
    assert sealed[-1]["position"] >= last["position"]
    previous = GENESIS
    for event in sealed:
        entry = entry_hash(
            event["position"],
            UUID(event["stream_id"]),
            event["version"],
            event["type"],
            _payload(event),
        )
        assert event["prev_hash"] == (previous.hex() if previous != GENESIS else None)
        previous = chain_hash(previous, entry)
        assert event["hash"] == previous.hex(), event["position"]


async def test_a_receipt_is_found_after_sealing_and_a_made_up_one_is_not(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election()
    cast = (await voting.cast(election_id, {"choice": "b"}, voting.voter())).json()
    assert len(cast["hash"]) == 64
    closed = await voting.close(election_id)
    found = await _receipt_lookup(http, cast["hash"])
    assert found["position"] == cast["position"]
    assert "choice" not in json.dumps(found)  # nothing of the ballot's content
    for _ in range(200):  # the close is followed by a checkpoint that covers the ballot
        found = await _receipt_lookup(http, cast["hash"])
        if found["checkpoint"] is not None:
            break
        await asyncio.sleep(0.05)
    checkpoint = found["checkpoint"]
    assert checkpoint is not None
    assert cast["position"] <= checkpoint["position"] <= closed["position"]
    key = (await http.get("/api/audit/public-key")).json()
    assert key["algorithm"] == "Ed25519"
    assert checkpoint["key_id"] == key["key_id"]
    assert signature_valid(
        bytes.fromhex(key["public_key"]),
        checkpoint["position"],
        bytes.fromhex(checkpoint["head_hash"]),
        bytes.fromhex(checkpoint["signature"]),
    )
    assert_problem(await http.get(f"/api/audit/receipts/{'ab' * 32}"), 404, "no entry")
    assert_problem(await http.get("/api/audit/receipts/xyz"), 404, "64 hexadecimal digits")


async def test_checkpoints_and_the_final_chain_head_come_with_closed_results(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("star")
    await voting.cast(election_id, {"scores": {"a": 5, "b": 2}}, voting.voter())
    closed = await voting.close(election_id)
    head = None
    for _ in range(200):
        body = (await voting.results(election_id, min_position=closed["position"])).json()
        head = body.get("final_chain_head")
        if head:
            break
        await asyncio.sleep(0.05)
    assert head is not None
    assert head["position"] == closed["position"]
    listed = await http.get("/api/audit/checkpoints", headers=bearer(AUDITOR))
    assert listed.status_code == 200
    ids = {c["id"]: c for c in listed.json()["checkpoints"]}
    assert ids[head["checkpoint_id"]]["head_hash"] == head["hash"]
    assert ids[head["checkpoint_id"]]["reason"] == "election closed"
    assert_problem(await http.get("/api/audit/checkpoints", headers=bearer(CLIENT)), 403, "")


async def test_one_elections_entries_and_only_those(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    mine = await voting.open_election()
    other = await voting.open_election()
    for n in range(3):
        await voting.cast(mine, {"choice": "a"}, f"mine-{n}")
        await voting.cast(other, {"choice": "b"}, f"other-{n}")
    await voting.cast(mine, {"choice": "b"}, "mine-0")  # a revision: its own entry
    withdrawn = await http.post(
        f"/api/elections/{mine}/withdrawals", json={"voter_id": "mine-1"}, headers=bearer(CLIENT)
    )
    assert withdrawn.status_code == 200, withdrawn.text
    expected = [
        "ElectionCreated",
        "ElectionOpened",
        "BallotCast",
        "BallotCast",
        "BallotCast",
        "BallotRevised",
        "BallotWithdrawn",
    ]
    # Read once the sealer has linked them all: the page then comes from the chain's
    # per-election index (before, from the log's unsealed tail).
    for _ in range(200):
        response = await http.get(f"/api/elections/{mine}/events", headers=bearer(AUDITOR))
        assert response.status_code == 200
        events = response.json()["events"]
        if all(e["hash"] for e in events) and len(events) == len(expected):
            break
        await asyncio.sleep(0.05)
    assert [e["type"] for e in events] == expected
    assert all(e["hash"] for e in events), "the entries were never sealed"
    assert all(e["stream_id"] == mine or e["data"]["election_id"] == mine for e in events)
    missing = "00000000-0000-0000-0000-000000000001"
    assert_problem(
        await http.get(f"/api/elections/{missing}/events", headers=bearer(AUDITOR)), 404, ""
    )


async def test_results_at_a_position_are_recounted_from_the_log(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    election_id = await voting.open_election("approval")
    first = (await voting.cast(election_id, {"approve": ["a"]}, "t1")).json()
    await voting.cast(election_id, {"approve": ["b", "c"]}, "t2")
    revision = (await voting.cast(election_id, {"approve": ["c"]}, "t1")).json()
    then = await http.get(
        f"/api/elections/{election_id}/results",
        params={"at": first["position"]},
        headers=bearer(AUDITOR),
    )
    assert then.status_code == 200, then.text
    body = then.json()
    assert body["position"] == first["position"]
    assert body["ballots"] == 1
    assert {o["id"]: o["approvals"] for o in body["options"]} == {"a": 1, "b": 0, "c": 0}
    current = await http.get(
        f"/api/elections/{election_id}/results",
        params={"at": revision["position"]},
        headers=bearer(AUDITOR),
    )
    assert {o["id"]: o["approvals"] for o in current.json()["options"]} == {
        "a": 0,
        "b": 1,
        "c": 2,
    }
    beyond = await http.get(
        f"/api/elections/{election_id}/results", params={"at": 10**15}, headers=bearer(AUDITOR)
    )
    assert revision["position"] <= beyond.json()["position"] < 10**15  # the head, not 10**15
    assert beyond.json()["ballots"] == 2


async def test_a_receipt_is_64_hexadecimal_digits_and_nothing_else(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """bytes.fromhex skips whitespace, so "cf 9c b8 ..." was found and echoed back as the
    receipt (review: hostile client); the contract says ^[0-9a-fA-F]{64}$."""
    election_id = await voting.open_election()
    cast = (await voting.cast(election_id, {"choice": "a"}, voting.voter())).json()
    digest = cast["hash"]
    await _receipt_lookup(http, digest)
    upper = await http.get(f"/api/audit/receipts/{digest.upper()}")
    assert upper.status_code == 200, upper.text
    assert upper.json()["receipt"] == digest  # normalised to lower case
    pairs = " ".join(digest[i : i + 2] for i in range(0, 64, 2))
    for spaced in (
        pairs,
        f"{digest} ",
        f" {digest}",
        f"{digest}\n",
        f"{digest[:32]}\t{digest[32:]}",
    ):
        response = await http.get(f"/api/audit/receipts/{quote(spaced)}")
        assert_problem(response, 404, "64 hexadecimal digits")


async def test_a_position_before_the_election_is_one_404_whichever_way_it_is_read(
    voting: VotingClient, http: httpx.AsyncClient
) -> None:
    """?at= before the election existed said "election <id> did not exist yet..." from a
    replay and "the election did not exist yet..." from a stepped reader's step index
    (review: hostile client): one wording for both."""
    await voting.create_election()  # so that the election is not the log's first entry
    created = await voting.create_election(live_results_step=3)
    election_id, before = created["id"], created["position"] - 1
    await voting.open(election_id)
    cast = (await voting.cast(election_id, {"choice": "a"}, "early")).json()
    url = f"/api/elections/{election_id}/results"
    expected = f"election {election_id} did not exist yet at position {before}"
    replayed = await http.get(url, params={"at": before}, headers=bearer(CLIENT))
    assert assert_problem(replayed, 404, "")["detail"] == expected
    seen = await http.get(url, params={"at": cast["position"]}, headers=bearer(CLIENT))
    assert seen.status_code == 200, seen.text
    assert seen.json()["stepped"]  # the step index is now kept, and answers for `before`
    indexed = await http.get(url, params={"at": before}, headers=bearer(CLIENT))
    assert assert_problem(indexed, 404, "")["detail"] == expected
