"""Ballots at volume, and the ground truth to hold the results against: a recount of the log."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from domain.application import VotingApplication
from infra.bench.loadgen import ConnectionClosed, LeanConnection
from infra.store.log import recount_store
from tests.servers import ADMIN, AUDITOR, CLIENT

METHODS = ("plurality", "approval", "score", "star", "irv", "schulze", "borda")
OPTION_IDS = ("a", "b", "c", "d")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def random_ballot(method: str, rng: random.Random) -> dict[str, Any]:
    ids = list(OPTION_IDS)
    if method == "plurality":
        return {"choice": rng.choice(ids)}
    if method == "approval":
        return {"approve": rng.sample(ids, rng.randint(1, len(ids)))}
    if method in ("score", "star"):
        low, high = (-2, 2) if method == "score" else (0, 5)
        return {"scores": {i: rng.randint(low, high) for i in rng.sample(ids, rng.randint(1, 4))}}
    return {"ranking": rng.sample(ids, rng.randint(1, len(ids)))}


async def create_open_elections(
    http: httpx.AsyncClient, methods: tuple[str, ...] = METHODS
) -> dict[str, str]:
    """One open election per method; returns {election_id: method}."""
    elections: dict[str, str] = {}
    for method in methods:
        created = await http.post(
            "/api/elections",
            json={
                "title": f"Load {method}",
                "method": method,
                "options": [{"id": i, "label": i.upper()} for i in OPTION_IDS],
                "allow_revote": True,
            },
            headers=auth(ADMIN),
        )
        assert created.status_code == 201, created.text
        election_id = created.json()["id"]
        opened = await http.post(f"/api/elections/{election_id}/open", headers=auth(ADMIN))
        assert opened.status_code == 200, opened.text
        elections[election_id] = method
    return elections


@dataclass
class Load:
    """Casts ballots (with some revisions and withdrawals) and keeps count of what happened."""

    base_url: str
    elections: dict[str, str]
    seed: int = 7
    changes: bool = True  # revisions and withdrawals besides first casts
    accepted: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    positions: list[int] = field(default_factory=list)
    receipts: list[tuple[str, int, int]] = field(default_factory=list)  # ballot, version, position

    async def run(
        self,
        ballots: int,
        concurrency: int = 16,
        on_progress: Callable[[int], Awaitable[None]] | None = None,
        pause: float = 0.0,
    ) -> None:
        """Send ``ballots`` requests from ``concurrency`` clients (each waiting ``pause``
        seconds between its requests)."""
        plan = self._plan(ballots)
        done = 0
        host, port = urlsplit(self.base_url).hostname, urlsplit(self.base_url).port
        assert host is not None
        assert port is not None

        async def worker(worker_rng: random.Random) -> None:
            nonlocal done
            connection = LeanConnection(host, port, CLIENT)
            try:
                while plan:
                    election_id, voter, action = plan.pop()
                    await self._one(connection, election_id, voter, action, worker_rng)
                    if pause:
                        await asyncio.sleep(pause)
                    done += 1
                    if on_progress is not None:
                        await on_progress(done)
            finally:
                await connection.close()

        await asyncio.gather(*(worker(random.Random(self.seed + i)) for i in range(concurrency)))

    def _plan(self, ballots: int) -> list[tuple[str, str, str]]:
        """What to send, in order (popped from the end): casts, then changes of cast ballots."""
        rng = random.Random(self.seed)
        plan: list[tuple[str, str, str]] = []
        voters: list[tuple[str, str]] = []
        for n in range(ballots):
            roll = rng.random()
            if self.changes and voters and roll < 0.13:
                election_id, voter = rng.choice(voters)
                plan.append((election_id, voter, "revise" if roll < 0.1 else "withdraw"))
            else:
                election_id = rng.choice(list(self.elections))
                voter = f"voter-{self.seed}-{n}"
                voters.append((election_id, voter))
                plan.append((election_id, voter, "cast"))
        plan.reverse()
        return plan

    async def _one(
        self,
        connection: LeanConnection,
        election_id: str,
        voter: str,
        action: str,
        rng: random.Random,
    ) -> None:
        if action == "withdraw":
            path, body = f"/api/elections/{election_id}/withdrawals", {"voter_id": voter}
        else:
            ballot = random_ballot(self.elections[election_id], rng)
            path, body = f"/api/elections/{election_id}/ballots", {**ballot, "voter_id": voter}
        key = {"Idempotency-Key": f"{voter}-{action}-{rng.random()}"}
        for attempt in range(50):
            try:
                reply = await connection.request("POST", path, body, key)
            except (ConnectionClosed, OSError):
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if reply.status == 503:
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if reply.status < 300:
                receipt = reply.json()
                self.accepted += 1
                self.positions.append(receipt["position"])
                self.receipts.append(
                    (receipt["ballot_id"], receipt["version"], receipt["position"])
                )
            else:
                self.refused[reply.status] = self.refused.get(reply.status, 0) + 1
            return
        self.failures += 1


async def recount(database_url: str) -> dict[str, dict[str, Any]]:
    """Every election's results, recounted from the event store in position order."""
    app = VotingApplication(env={"TRANSCODER_TOPIC": "infra.store.transcoder:OrjsonTranscoder"})
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        counted = await recount_store(conn, app.mapper)
    return {
        str(election_id): count.results(counted.position)
        for election_id, count in counted.elections.items()
    }


COMPARED = ("method", "ballots", "winners", "options", "rounds", "pairwise", "tie", "late_ballots")


async def assert_results_match_recount(
    http: httpx.AsyncClient, database_url: str, elections: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Each election's served results equal a recount of the log, field by field."""
    truth = await recount(database_url)
    head = max(int(r["position"]) for r in truth.values())
    served: dict[str, dict[str, Any]] = {}
    for election_id, method in elections.items():
        body = await _results_at(http, election_id, head)
        expected = {key: truth[election_id][key] for key in COMPARED}
        actual = {key: body[key] for key in COMPARED}
        assert actual == expected, f"election {election_id} ({method})"
        served[election_id] = body
    return served


async def _results_at(
    http: httpx.AsyncClient, election_id: str, position: int, patience: float = 90
) -> dict[str, Any]:
    """Results once they reflect ``position`` (each request waits up to 2 s server-side)."""
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        response = await http.get(
            f"/api/elections/{election_id}/results",
            params={"min_position": position},
            headers=auth(AUDITOR),
        )
        if response.status_code == 503:  # the database is coming back: retry, as told
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["position"] >= position:
            return body
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"results stuck at {body['position']}, log head {position}"
