"""Reading the log back in position order, as domain events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, StoredEvent
from psycopg import AsyncConnection

from domain.recount import Recount
from infra.store import EVENTS_TABLE

PAGE_SIZE = 5000
PAGE = f"""
SELECT notification_id, originator_id, originator_version, topic, state
FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT %s
"""


async def read_log(
    conn: AsyncConnection[Any],
    mapper: Mapper[UUID],
    after: int = 0,
    page_size: int = PAGE_SIZE,
) -> AsyncIterator[tuple[int, DomainEventProtocol[UUID] | Unreadable]]:
    """Every event after ``after``, as (position, event), in position order; an entry
    that cannot be read comes as Unreadable."""
    while True:
        cursor = await conn.execute(PAGE, (after, page_size))
        rows = await cursor.fetchall()
        for position, originator_id, version, topic, state in rows:
            stored = StoredEvent(
                originator_id=originator_id,
                originator_version=version,
                topic=topic,
                state=bytes(state),
            )
            try:
                event: DomainEventProtocol[UUID] | Unreadable = mapper.to_domain_event(stored)
            except Exception as error:
                event = Unreadable(f"unreadable: {type(error).__name__}: {error}")
            yield int(position), event
        if len(rows) < page_size:
            return
        after = int(rows[-1][0])


async def recount_store(conn: AsyncConnection[Any], mapper: Mapper[UUID]) -> Recount:
    """A full recount of every election from the log (an entry that cannot be read is set
    aside, as the projections set it aside)."""
    recount = Recount()
    async for position, event in read_log(conn, mapper):
        if isinstance(event, Unreadable):
            recount.position = position
            recount.put_aside(position, None, str(event))
        else:
            recount.apply(position, event)
    return recount


class Unreadable(Exception):
    """A log entry the mapper cannot turn into a domain event, in its place."""
