"""The raw log for auditors, page by page in position order."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from api import context
from api.responses import JSONResponse
from infra.store import EVENTS_TABLE
from projections.log import event_type

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
PAGE = f"""
SELECT notification_id, originator_id, originator_version, topic, state
FROM {EVENTS_TABLE} WHERE notification_id > %s ORDER BY notification_id LIMIT %s
"""


def audit_event(row: tuple[Any, ...]) -> dict[str, Any]:
    position, stream_id, version, topic, state = row
    data = orjson.loads(bytes(state))
    timestamp = data.pop("timestamp", None)
    data.pop("originator_topic", None)
    return {
        "position": position,
        "stream_id": str(stream_id),
        "version": version,
        "type": event_type(topic),
        "timestamp": timestamp,
        "data": data,
    }


async def events(request: Request) -> Response:
    context.auth(request).require(request, "auditor")
    after = context.int_param(request, "after", 0, minimum=0)
    limit = context.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    async with context.services(request).reads.connection() as conn:
        cursor = await conn.execute(PAGE, (after, limit))
        rows = await cursor.fetchall()
    page = [audit_event(row) for row in rows]
    return JSONResponse({"events": page, "next_after": page[-1]["position"] if page else after})
