"""`cardinal serve` with four API processes: the ballot limit holds across all of them, for
a client behind a trusted proxy too, and /metrics reports every process together."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from infra.bench.stack import SERVE, Stack
from tests.databases import SERVER_URL
from tests.servers import ADMIN, AUDITOR, CLIENT, OPERATOR, TEST_AUDIT_KEY

LIMIT = 5
BALLOTS = 40


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        SERVER_URL,
        Path(tmp_path_factory.mktemp("edge")),
        tokens={"admin": ADMIN, "operator": OPERATOR, "auditor": AUDITOR, "client": CLIENT},
        commands=SERVE,
        prefix="edge",
        env={
            "CARDINAL_AUDIT_KEY": TEST_AUDIT_KEY,
            "WEB_CONCURRENCY": "4",
            "ENABLE_RATE_LIMITING": "true",
            "MAX_VOTES_PER_IP_PER_HOUR": str(LIMIT),
            "FORWARDED_ALLOW_IPS": "127.0.0.1/32",
            "JWT_SECRET_KEY": "j" * 40,
        },
    ) as running:
        yield running


def _open_election(url: str) -> str:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    created = httpx.post(
        f"{url}/api/elections",
        json={
            "title": "Edge",
            "method": "plurality",
            "options": [{"id": "a", "label": "A"}, {"id": "b", "label": "B"}],
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    election_id = str(created.json()["id"])
    assert httpx.post(f"{url}/api/elections/{election_id}/open", headers=auth).status_code == 200
    return election_id


def _ballots(url: str, election_id: str, forwarded: Sequence[str | None]) -> list[httpx.Response]:
    """One ballot per entry, each over a new connection (spread over the processes)."""
    answers = []
    for hop in forwarded:
        headers = {"Authorization": f"Bearer {CLIENT}"}
        if hop is not None:
            headers["X-Forwarded-For"] = hop
        with httpx.Client(base_url=url, timeout=30) as http:  # a new connection each time
            answers.append(
                http.post(
                    f"/api/elections/{election_id}/ballots",
                    json={"voter_id": uuid.uuid4().hex, "choice": "a"},
                    headers=headers,
                )
            )
    return answers


def _pids(stack: Stack) -> int:
    import psutil

    children = psutil.Process(stack.processes["serve"].pid).children(recursive=True)
    return sum(1 for child in children if "api --child" in " ".join(child.cmdline()))


def test_four_processes_accept_at_most_the_limit_from_one_address(stack: Stack) -> None:
    assert _pids(stack) == 4
    election_id = _open_election(stack.url)
    answers = _ballots(stack.url, election_id, [None] * BALLOTS)
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(201) == LIMIT, statuses
    assert statuses.count(429) == BALLOTS - LIMIT, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["retry-after"]) > 0
    assert refused.headers["ratelimit-policy"] == f'"ballots";q={LIMIT};w=3600'


def test_a_client_behind_the_trusted_proxy_rotating_its_forwarded_for_stays_one(
    stack: Stack,
) -> None:
    election_id = _open_election(stack.url)
    rotating = [f"10.{n}.{n}.{n}, 203.0.113.77" for n in range(BALLOTS)]
    statuses = [a.status_code for a in _ballots(stack.url, election_id, rotating)]
    assert statuses.count(201) == LIMIT, statuses
    # Another client behind the same proxy is counted on its own.
    other = _ballots(stack.url, election_id, ["203.0.113.78"])
    assert other[0].status_code == 201


def test_metrics_from_any_process_report_every_process(stack: Stack) -> None:
    election_id = _open_election(stack.url)
    cast = sum(
        a.status_code == 201
        for a in _ballots(stack.url, election_id, [f"203.0.114.{n}" for n in range(12)])
    )
    assert cast == 12
    # Every ballot accepted in this stack, whichever process took it and answered (each
    # process adds its hot-path counts to the shared series once a second).
    expected = {float(2 * LIMIT + 12 + 1)}
    deadline = time.monotonic() + 10
    while True:
        totals = set()
        for _ in range(12):  # new connections: the kernel spreads them over the processes
            with httpx.Client(base_url=stack.url) as http:
                text = http.get("/metrics").text
            found = re.search(r'^cardinal_ballots_accepted_total\{kind="cast"\} (\S+)$', text, re.M)
            assert found, text[:2000]
            totals.add(float(found.group(1)))
            assert 'pid="' not in text  # gauges merged, not one series per process
        if totals == expected or time.monotonic() > deadline:
            break
    assert totals == expected
