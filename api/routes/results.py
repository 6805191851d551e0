"""Results: winners, per-option figures, rounds and pairwise counts, with their position."""

from __future__ import annotations

from functools import partial
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from starlette.requests import Request
from starlette.responses import Response

from api import context
from api.auth import check_reader
from api.problems import Forbidden
from api.responses import JSONResponse
from domain.election import Election, ElectionStatus
from domain.errors import NotFound
from domain.recount import Recount
from domain.rules import ElectionRules, ResultsVisibility
from domain.tabulation import Tally
from infra.audit.records import election_entries
from infra.bootstrap import Services
from projections.log import head
from projections.queries import tally_snapshot

MAX_WAIT = 2.0
CACHE_SIZE = 512


async def results(request: Request) -> Response:
    """Results from the tally read model; ``min_position`` waits (up to 2 s) for it."""
    principal = context.auth(request).identify(request)
    election_id = context.election_id(request)
    services = context.services(request)
    election = await services.app.election(election_id)
    hidden = (
        election.rules.results_visibility is ResultsVisibility.AFTER_CLOSE
        and election.status is not ElectionStatus.CLOSED
    )
    if hidden and not principal.can_act_as("admin"):
        raise Forbidden(
            "this election publishes its results when it closes; until then only admins see them"
        )
    check_reader(principal, election, partial(services.voter_keys.for_token, election_id))
    at = context.int_param(request, "at", 0, minimum=1) if "at" in request.query_params else None
    if at is not None:
        return JSONResponse(await _results_at(services, election_id, at))
    wanted = context.int_param(request, "min_position", 0, minimum=0)
    caught_up = True
    if wanted:
        caught_up = await services.positions.wait_for("tally", wanted, MAX_WAIT)
    body = await _results(services, election_id, election)
    if body["closed_at_position"] is not None:
        body = {**body, "final_chain_head": await _final_chain_head(services, body)}
    headers = (
        {} if caught_up else {"Warning": f'199 - "results reflect position {body["position"]}"'}
    )
    return JSONResponse(body, headers=headers)


async def _results(services: Services, election_id: UUID, election: Election) -> dict[str, Any]:
    async with services.reads.connection() as conn:
        snapshot = await tally_snapshot(conn, election_id)
    cache: dict[tuple[UUID, int, int], dict[str, Any]] = services.results_cache
    key = (election_id, snapshot.version, snapshot.position)
    cached = cache.get(key)
    if cached is None:
        rules = (
            election.rules if snapshot.rules is None else ElectionRules.from_json(snapshot.rules)
        )
        tally = Tally.from_counters(rules, snapshot.counters)
        closed = snapshot.closed_at is not None
        cached = {
            "election_id": str(election_id),
            "status": ElectionStatus.CLOSED.value if closed else _open_or_draft(election),
            "position": snapshot.position,
            **tally.result().to_json(),
            "late_ballots": snapshot.late_ballots,
            "closed_at_position": snapshot.closed_at,
        }
        if len(cache) >= CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = cached
    return cached


def _open_or_draft(election: Election) -> str:
    # The read model has not seen a close; report where the election stood before it.
    return (
        ElectionStatus.DRAFT.value
        if election.status is ElectionStatus.DRAFT
        else ElectionStatus.OPEN.value
    )


FINAL_CHECKPOINT = """
SELECT id, head_hash, key_id, signature FROM audit_checkpoints
WHERE position = %s ORDER BY id LIMIT 1
"""


async def _final_chain_head(services: Services, body: dict[str, Any]) -> dict[str, Any] | None:
    """The signed chain head at the election's Closed entry: publish it with the results,
    and anyone holding the log can check these results against it."""
    async with services.reads.connection() as conn:
        cursor = await conn.execute(FINAL_CHECKPOINT, (body["closed_at_position"],))
        row = await cursor.fetchone()
    if row is None:
        return None  # sealed within seconds of the close
    identifier, head, key, signature = row
    return {
        "position": body["closed_at_position"],
        "hash": bytes(head).hex(),
        "checkpoint_id": identifier,
        "key_id": key,
        "signature": bytes(signature).hex(),
    }


async def _results_at(services: Services, election_id: UUID, at: int) -> dict[str, Any]:
    """Time travel: the results as of log position ``at``, recounted from the log itself.
    A position beyond the log's head is taken as the head: results never claim a position
    the log has not reached."""
    recount = Recount()
    async with services.reads.connection() as conn:
        at = min(at, await head(conn))
        async for entry in election_entries(conn, election_id, at):
            stored = StoredEvent(entry.stream_id, entry.version, entry.topic, entry.state)
            recount.apply(entry.position, services.app.mapper.to_domain_event(stored))
    count = recount.elections.get(election_id)
    if count is None:
        raise NotFound(f"election {election_id} did not exist yet at position {at}")
    return {
        **count.results(at),
        "closed_at_position": count.closed_at,
        "recounted_from_log": True,
    }
