"""An STV election's served results, stages included, equal the audit's replay of the log."""

from __future__ import annotations

import random
from collections.abc import Iterator

import psycopg
import pytest

from domain.rules import ElectionRules
from domain.voter import Voter
from infra.audit.sealer import Sealer
from infra.audit.sources import verify_database
from infra.store import open_application
from infra.store.log import recount_store
from infra.store.migrations import migrate
from infra.store.writer import GroupCommitWriter
from projections.results import differences_from_recount
from tests.databases import create_database, drop_database
from tests.integration.test_audit_verify import KEYS, SIGNER, catch_up_every_projection


@pytest.fixture
def url() -> Iterator[str]:
    created = create_database("cardinal_stv_audit")
    migrate(created)
    yield created
    drop_database(created)


async def test_served_stv_results_match_the_replay(url: str) -> None:
    app = open_application(url)
    writer = GroupCommitWriter(app, url)
    app.writer = writer
    writer.start()
    rng = random.Random(7)
    try:
        rules = ElectionRules.create(
            options=[{"id": i, "label": i} for i in "abcde"], method="stv", seats=3
        )
        election_id = (await app.create_election("Board", rules)).id
        await app.open_election(election_id)
        for n in range(90):
            ranking = rng.sample("abcde", rng.randint(1, 5))
            voter = Voter(f"v{n}", f"v{n}")
            await app.cast_ballot(election_id, voter, {"ranking": ranking}, f"r{n}")
        await app.close_election(election_id)
        await writer.stop()
        await catch_up_every_projection(url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            sealer = Sealer(url, SIGNER, page_size=64)
            assert await sealer.seal_pending(conn) > 0
            await sealer.checkpoint_head(conn, "test")
            recount = await recount_store(conn, app.mapper)
            differing, counted = await differences_from_recount(conn, recount)
    finally:
        await writer.stop()
        app.close()
    assert (differing, counted) == ([], 90)
    stages = recount.elections[election_id].results(recount.position)["stages"]
    assert any(stage["action"] == "surplus" for stage in stages) or len(stages) > 1
    report = await verify_database(url, public_keys=KEYS, election=None, validate=True)
    assert report.entries > 90
