"""Results as Server-Sent Events: one election's, and the overview of the elections.

A plain ASGI response (``api.streams.EventStream``) rather than sse-starlette: the stream
needs the hub's latest-document slot, a per-send timeout that aborts the connection, and
to end on the server's shutdown through our own HTTP protocol, and sse-starlette's
shutdown hook patches uvicorn's signal handler, which ``cardinal serve`` does not use.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from starlette.requests import Request
from starlette.responses import Response

from api import context
from api.contract import Operation, Param, operation
from api.params import ELECTION_ID
from api.problems import Forbidden
from api.routes.elections import LISTING
from api.routes.results import current_results, reader
from api.streams import EventStream, StreamHub
from api.views import election_view
from domain.application import DroppedElection
from domain.election import Election, ElectionStatus
from domain.rules import ResultsVisibility
from infra.runtime.bootstrap import Services

STREAM = "text/event-stream"
OVERVIEW_LIMIT = 100  # elections in the overview; the listing pages through every one
LAST_EVENT_ID = Param(
    "Last-Event-ID",
    "header",
    {"type": "string"},
    required=False,
    description="resume: the stream starts again with the current snapshot",
)
COUNTS = """
SELECT e.election_id, coalesce(e.entries, 0), e.closed_at,
       (SELECT position FROM read_models.tally_position), coalesce(e.published_position, 0)
FROM read_models.tally_elections e
"""


def hub(request: Request) -> StreamHub:
    return request.app.state.streams  # type: ignore[no-any-return]


@operation(
    Operation(
        "streamResults",
        "The results document as Server-Sent Events, each event's id its position "
        "(as getResults: any role, the election's voter token, or none if public)",
        "results",
        errors=(403, 404),
        params=(ELECTION_ID, LAST_EVENT_ID),
        media=STREAM,
        token_optional=True,
        stream_data="the results document, as GET /api/elections/{id}/results answers it "
        "(the Results schema)",
    )
)
async def results_stream(request: Request) -> Response:
    election_id, _, exact = await reader(request)
    services = context.services(request)

    async def build() -> tuple[int, dict[str, Any]]:
        election = await services.app.election(election_id)
        document = await current_results(services, election_id, election, exact=exact)
        return int(document["position"]), document

    return EventStream(  # type: ignore[return-value]
        hub(request), ("results", election_id, exact), build, _expiry(request)
    )


@operation(
    Operation(
        "streamElections",
        f"The overview as Server-Sent Events: up to {OVERVIEW_LIMIT} elections (the open "
        "ones first, then the newest) with status and ballot entries, and how many more "
        "(any role; without a token, the elections with public results)",
        "elections",
        errors=(403,),
        params=(LAST_EVENT_ID,),
        media=STREAM,
        token_optional=True,
        stream_data='{"position": the log position, "elections": [an election as GET '
        '/api/elections/{id} answers it, with "ballot_entries" and "final"], "more": how many '
        'elections it leaves out, "listing": "/api/elections" for a role (the whole list, '
        "paged), or null without a token}",
    )
)
async def elections_stream(request: Request) -> Response:
    everyone = overview_reader(request)
    services = context.services(request)
    await services.feed.complete()  # a 503 now, not a stream that lists nothing

    async def build() -> tuple[int, dict[str, Any]]:
        document = await overview(services, everyone=everyone)
        return int(document["position"]), document

    return EventStream(  # type: ignore[return-value]
        hub(request), ("overview", everyone), build, _expiry(request)
    )


def _open(election: Election | DroppedElection) -> bool:
    return isinstance(election, Election) and election.status is ElectionStatus.OPEN


def _expiry(request: Request) -> float | None:
    """When the caller's access token expires (a role or voter token does not)."""
    if "authorization" not in request.headers:
        return None
    return context.auth(request).identify(request).expires


def overview_reader(request: Request) -> bool:
    """Whether the caller sees every election in the overview (a role), or only those with
    public results (no token); 401 for a token not recognised, 403 for a voter token."""
    if "authorization" not in request.headers:
        return False
    if context.auth(request).identify(request).voter_token is not None:
        raise Forbidden("a voter token reads only the election it was issued for")
    return True


async def overview(services: Services, *, everyone: bool) -> dict[str, Any]:
    """The elections a reader sees (every one for a role, those with public results for
    anyone), with ballot entries as the public sees them: in steps of ``live_results_step``
    while open, none while hidden. At most ``OVERVIEW_LIMIT`` of them, the open ones first,
    then the newest; ``more`` says how many are left out, and ``listing`` where a role
    finds them all."""
    await services.feed.complete()
    async with services.reads.connection() as conn:
        cursor = await conn.execute(COUNTS, prepare=True)
        rows = await cursor.fetchall()
    counts: dict[UUID, tuple[int, int | None]] = {row[0]: (int(row[1]), row[2]) for row in rows}
    published = {row[0]: int(row[4]) for row in rows}
    # A role sees the tally's position. The public, only where what it sees last changed:
    # the log's position moves with every ballot in every election, private ones too, and
    # with each ballot of an election counted in steps. (Over every election it may see,
    # shown or not: the position of what is shown could go down, and a stream never
    # moves a reader back.)
    position = max((int(row[3] or 0) for row in rows), default=0) if everyone else 0
    visible: list[tuple[Election | DroppedElection, int | None, bool]] = []
    for election in await services.app.every_election_or_dropped():
        if isinstance(election, DroppedElection):  # closed, and not read again unless shown
            if not (everyone or election.public_results):
                continue
            entries, closed_at = counts.get(election.id, (0, None))
            if not everyone:
                position = max(position, closed_at or 0)
            visible.append((election, entries, closed_at is not None))
            continue
        rules = election.rules
        if not (everyone or rules.public_results):
            continue
        entries, closed_at = counts.get(election.id, (0, None))
        if closed_at is None and election.status is not ElectionStatus.CLOSED:
            if rules.results_visibility is ResultsVisibility.AFTER_CLOSE:
                entries_seen: int | None = None
            else:
                entries_seen = entries // rules.live_results_step * rules.live_results_step
                if not everyone:
                    position = max(position, published.get(election.id, 0))
        else:
            entries_seen = entries
            if not everyone:
                position = max(position, closed_at or 0)
        visible.append((election, entries_seen, closed_at is not None))
    visible.reverse()  # the newest first, then (a stable sort) the open ones before
    visible.sort(key=lambda seen: not _open(seen[0]))
    shown = visible[:OVERVIEW_LIMIT]
    elections = [
        {
            **election_view(
                election
                if isinstance(election, Election)
                else await services.app.election(election.id)
            ),
            "ballot_entries": entries_seen,
            "final": final,
        }
        for election, entries_seen, final in shown
    ]
    return {
        "position": position,
        "elections": elections,
        "more": len(visible) - len(shown),
        "listing": LISTING if everyone else None,
    }
