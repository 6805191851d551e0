"""The catalog's last ballot time: the latest as a time, whatever the spelling of each."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from infra.store.log import LogEvent
from projections.catalog import CatalogProjection


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        # Another offset: as text "13:..." sorts after "12:...", yet it is an hour before.
        ("2026-03-01T13:00:00+01:00", "2026-03-01T12:30:00+00:00"),
        # "Z" sorts after "." and "+": a whole second in Z reads later than its fraction.
        ("2026-03-01T12:00:07Z", "2026-03-01T12:00:07.250000+00:00"),
        # str() of a datetime spells it with a space, which sorts before "T".
        ("2026-03-01T12:00:00+00:00", "2026-03-01 12:00:01+00:00"),
    ],
)
async def test_the_last_ballot_time_is_the_latest_time_not_the_greatest_text(
    database_url: str, earlier: str, later: str
) -> None:
    schema = f"catalog_times_{uuid4().hex[:8]}"
    election_id = uuid4()
    rules = {"method": "plurality", "candidates": ["a", "b"]}
    events = [
        LogEvent(
            1,
            election_id,
            1,
            "ElectionCreated",
            {"title": "t", "rules": rules, "timestamp": "2026-03-01T11:00:00+00:00"},
        ),
        *(
            LogEvent(
                position,
                uuid4(),
                1,
                "BallotCast",
                {"election_id": str(election_id), "timestamp": at},
            )
            for position, at in ((2, later), (3, earlier))
        ),
    ]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            await conn.execute("SELECT create_catalog_tables(%s)", (schema,))
            async with conn.transaction():
                await CatalogProjection().apply(conn, schema, events)
            cursor = await conn.execute(
                sql.SQL("SELECT last_ballot_at, ballots_cast FROM {}.elections").format(
                    sql.Identifier(schema)
                )
            )
            row = await cursor.fetchone()
        finally:
            await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    assert row is not None
    assert row[1] == 2
    assert row[0] == datetime.fromisoformat(later).astimezone(UTC)
