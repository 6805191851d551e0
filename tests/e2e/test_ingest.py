"""`cardinal ingest` processes through a SIGKILL and a broker restart: nothing lost, nothing
counted twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from infra.bench.ingest import (
    Phase,
    ballot_messages,
    count_ballots,
    delete_queues,
    ingest_stack,
    open_election,
    run_phase,
    until_consuming,
)
from infra.bench.stack import SERVE
from infra.bench.stack import Stack as Processes
from infra.ingest.publisher import publish
from infra.runtime.settings import Settings
from tests.databases import SERVER_URL
from tests.e2e.stack import AMQP_URL
from tests.rabbit_node import RabbitNode
from tests.servers import ADMIN, CLIENT


def test_a_sigkilled_consumer_loses_no_ballot_and_counts_none_twice(tmp_path: Path) -> None:
    phases = [Phase("multi-ballot messages", 300, 100), Phase("one ballot each", 3000, 1)]
    with ingest_stack(SERVER_URL, tmp_path, AMQP_URL, {"INGEST_BATCH": "2000"}) as stack:
        queue = Settings(namespace=stack.namespace).ingest_queue_name
        try:
            for phase in phases:
                asyncio.run(run_phase(stack, phase, queue, AMQP_URL, kill_at=0.4))
        finally:
            asyncio.run(delete_queues(AMQP_URL, queue))
    for phase in phases:
        assert 0 < phase.killed_at < phase.ballots, phase  # killed part-way, mid-batch
        assert (phase.counted, phase.distinct) == (phase.ballots, phase.ballots), phase
        assert phase.refused == 0


def test_the_consumer_reconnects_after_a_broker_restart_and_counts_each_ballot_once(
    tmp_path: Path,
) -> None:
    first, everything = Phase("first", 100, 100), Phase("all", 150, 100)
    with (
        RabbitNode(tmp_path / "rabbit") as rabbit,
        ingest_stack(SERVER_URL, tmp_path, rabbit.url) as stack,
        psycopg.connect(stack.database_url, autocommit=True) as conn,
    ):
        queue = Settings(namespace=stack.namespace).ingest_queue_name
        election_id = asyncio.run(open_election(stack.database_url, "restart"))
        stack.start("ingest", ["ingest"])
        asyncio.run(until_consuming(rabbit.url, queue))
        asyncio.run(publish(rabbit.url, queue, ballot_messages(election_id, first)))
        rabbit.restart()  # what was not acked yet waits in the quorum queue, on disk
        # The first ballots again (same message ids), and more, once the broker is back.
        asyncio.run(publish(rabbit.url, queue, ballot_messages(election_id, everything)))
        deadline = time.monotonic() + 120
        while count_ballots(conn, election_id)[1] < everything.ballots:
            assert time.monotonic() < deadline, count_ballots(conn, election_id)
            time.sleep(0.2)
        time.sleep(1)  # a ballot counted twice would show by now
        assert count_ballots(conn, election_id) == (everything.ballots, everything.ballots)
        assert stack.processes["ingest"].poll() is None  # it reconnected by itself


@pytest.mark.parametrize("processes", ["1", "2"])
def test_serve_with_amqp_url_ingests_and_the_checklist_smoke_test_passes(
    tmp_path: Path, processes: str
) -> None:
    with Processes(
        SERVER_URL,
        tmp_path,
        tokens={"admin": ADMIN, "client": CLIENT},
        commands=SERVE,
        amqp_url=AMQP_URL,
        prefix="test-serve-ingest",
        env={"WEB_CONCURRENCY": processes},
    ) as running:
        smoke = running.cardinal(
            "publish-test-votes", "--via", "amqp", "-n", "10", "--url", running.url
        )
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "all 10 test ballots counted exactly once" in smoke.stdout + smoke.stderr
        children = psutil.Process(running.processes["serve"].pid).children(recursive=True)
        ingesting = any("ingest --child" in " ".join(child.cmdline()) for child in children)
        assert ingesting == (processes != "1")  # with 1, the API process consumes too
        # The ingest child's metrics are on the API's /metrics (they were nowhere).
        scraped = httpx.get(f"{running.url}/metrics", timeout=10).text
        committed = [
            float(line.split()[-1])
            for line in scraped.splitlines()
            if line.startswith("cardinal_ingest_ballots_committed_total")
        ]
        assert sum(committed) >= 10, scraped[:2000]
