"""Steady ballots with every request recorded, a fault in the middle, and the verdict.

Each ballot is a first cast by a fresh voter with an Idempotency-Key of its own. A request
that gets no answer (its connection was cut) is sent again with the same key once the
fault is over, as a client would, so that every ballot ends with a definite answer. Then
the invariants: exactly the 2xx ballots are counted, none twice; no 500; every answer
during the fault came within 2 s; the service recovered by itself; `audit verify` passes.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

from infra.bench.loadgen import ConnectionClosed, LeanConnection, open_election
from infra.bench.stack import Stack

CLIENT = "chaos-client"
ADMIN = "chaos-admin"
TOKENS = {"admin": ADMIN, "client": CLIENT, "operator": "chaos-op", "auditor": "chaos-au"}
ANSWER_TIMEOUT = 30.0  # a request unanswered this long is a hang, and fails the scenario
RESULTS = Path(".cardinal/chaos/results.jsonl")


@dataclass
class Sent:
    voter: str
    key: str
    election: str
    sent: float
    answered: float | None = None
    status: int | None = None  # None: no answer (the connection was cut)
    ballot_id: str | None = None


@dataclass
class Verdict:
    scenario: str
    accepted: int = 0  # 2xx, retries included
    counted: int = 0
    lost: int = 0  # 2xx not counted
    double: int = 0  # counted more than once
    server_errors: int = 0
    unanswered: int = 0  # no definite answer even after retrying
    slowest_during_fault: float = 0.0
    # Appends whose COMMIT lost the store: they wait for its return to learn their outcome
    # (the writer logs it), so their answers may come after the fault, by design.
    resolved_on_return: int = 0
    recovery: float | None = None  # seconds from the fault's end to the next 2xx
    audit_ok: bool = False
    statuses: dict[str, int] = field(default_factory=dict)

    def failures(self) -> list[str]:
        problems = []
        if self.lost or self.double or self.counted != self.accepted:
            problems.append(
                f"counted {self.counted} of {self.accepted} 2xx ({self.lost} lost, "
                f"{self.double} twice)"
            )
        if self.server_errors:
            problems.append(f"{self.server_errors} answers 5xx other than 503")
        if self.unanswered:
            problems.append(f"{self.unanswered} ballots never got a definite answer")
        if self.slowest_during_fault > 2.0:
            problems.append(f"an answer during the fault took {self.slowest_during_fault:.2f}s")
        if self.recovery is None or self.recovery > 5.0:
            problems.append(f"recovery took {self.recovery}s (at most 5 s)")
        if not self.audit_ok:
            problems.append("audit verify failed")
        return problems


class SteadyLoad:
    """Clients casting at about ``rate`` ballots/s, each request kept."""

    def __init__(self, port: int, elections: list[str], rate: float = 120, clients: int = 12):
        self.port = port
        self.elections = elections
        self.interval = clients / rate
        self.clients = clients
        self.sent: list[Sent] = []
        self._stop = asyncio.Event()
        self._run = uuid.uuid4().hex[:6]

    async def run(self) -> None:
        await asyncio.gather(*(self._client(n) for n in range(self.clients)))

    def stop(self) -> None:
        self._stop.set()

    async def _client(self, index: int) -> None:
        connection = LeanConnection("127.0.0.1", self.port, CLIENT)
        n = 0
        try:
            while not self._stop.is_set():
                n += 1
                voter = f"{self._run}-{index}-{n}"
                record = Sent(voter, uuid.uuid4().hex, self.elections[n % len(self.elections)], 0)
                self.sent.append(record)
                await self._send(connection, record)
                await asyncio.sleep(self.interval)
        finally:
            await connection.close()

    async def _send(self, connection: LeanConnection, record: Sent) -> None:
        record.sent = time.monotonic()
        try:
            reply = await asyncio.wait_for(
                connection.request(
                    "POST",
                    f"/api/elections/{record.election}/ballots",
                    {"voter_id": record.voter, "choice": "a"},
                    {"Idempotency-Key": record.key},
                ),
                ANSWER_TIMEOUT,
            )
        except (ConnectionClosed, OSError, TimeoutError):
            await connection.close()
            record.status, record.answered = None, None
            await asyncio.sleep(0.05)
            return
        record.answered, record.status = time.monotonic(), reply.status
        if reply.status in (200, 201):
            record.ballot_id = reply.json()["ballot_id"]

    async def settle(self, deadline: float = 60) -> None:
        """Send every unanswered ballot again (same key) until each has an answer."""
        connection = LeanConnection("127.0.0.1", self.port, CLIENT)
        until = time.monotonic() + deadline
        try:
            for record in self.sent:
                while record.status is None:  # a 503 is a certain refusal: nothing to resolve
                    if time.monotonic() > until:
                        return
                    retry = Sent(record.voter, record.key, record.election, 0)
                    await self._send(connection, retry)
                    if retry.status is not None:
                        record.status, record.ballot_id = retry.status, retry.ballot_id
        finally:
            await connection.close()


async def open_elections(port: int, count: int = 2) -> list[str]:
    admin = LeanConnection("127.0.0.1", port, ADMIN)
    options = [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}]
    try:
        return [
            await open_election(
                admin, {"title": f"Chaos {n}", "method": "plurality", "options": options}
            )
            for n in range(count)
        ]
    finally:
        await admin.close()


def judge(
    scenario: str,
    load: SteadyLoad,
    stack: Stack,
    fault: tuple[float, float],
) -> Verdict:
    """The invariants, from the records and the database (after the projections caught up)."""
    started, ended = fault
    verdict = Verdict(scenario)
    accepted = {r.ballot_id for r in load.sent if r.status in (200, 201) and r.ballot_id}
    verdict.accepted = len(accepted)
    for record in load.sent:
        key = str(record.status)
        verdict.statuses[key] = verdict.statuses.get(key, 0) + 1
    verdict.server_errors = sum(
        1 for r in load.sent if r.status is not None and r.status >= 500 and r.status != 503
    )
    verdict.unanswered = sum(1 for r in load.sent if r.status is None)
    during = [r for r in load.sent if r.answered is not None and started <= r.sent <= ended]
    logs = "".join(path.read_text(errors="replace") for path in stack.logs.glob("*.log"))
    unknown_outcomes = "outcome is unknown" in logs
    waited = [
        r
        for r in during
        if unknown_outcomes
        and r.answered is not None
        and r.answered - r.sent > 2.0
        and r.answered >= ended
        and r.status in (200, 201)
    ]
    verdict.resolved_on_return = len(waited)
    verdict.slowest_during_fault = round(
        max((r.answered - r.sent for r in during if r not in waited and r.answered), default=0.0),
        3,
    )
    after = [
        r.answered
        for r in load.sent
        if r.answered is not None and r.status in (200, 201) and r.sent >= ended
    ]
    verdict.recovery = round(min(after) - ended, 2) if after else None
    counted = _counted(stack.database_url, load.elections, len(accepted))
    verdict.counted = sum(1 for ballot in counted if ballot in accepted)
    verdict.lost = len(accepted - set(counted))
    verdict.double = sum(1 for n in counted.values() if n > 1) + len(set(counted) - accepted)
    audited = stack.cardinal("audit", "verify", timeout=180)
    verdict.audit_ok = audited.returncode == 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(asdict(verdict)) + "\n")
    return verdict


def _counted(url: str, elections: list[str], expected: int, patience: float = 60) -> dict[str, int]:
    """Ballot id -> times counted in the tally, once the projection has caught up."""
    deadline = time.monotonic() + patience
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT ballot_id::text, count(*) FROM read_models.tally_ballots "
                "WHERE election_id = ANY(%s::uuid[]) GROUP BY ballot_id",
                (elections,),
            ).fetchall()
            counted = {str(b): int(n) for b, n in rows}
            head = conn.execute("SELECT coalesce(max(notification_id), 0) FROM cardinal_events")
            head_row = head.fetchone()
            position = conn.execute(
                "SELECT coalesce(min(position), 0) FROM projection_positions"
            ).fetchone()
            caught_up = head_row is not None and position is not None and position[0] >= head_row[0]
            if (len(counted) >= expected and caught_up) or time.monotonic() > deadline:
                return counted
            time.sleep(0.2)
