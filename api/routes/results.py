"""Results: winners, per-option figures, rounds and pairwise counts, with their position."""

from __future__ import annotations

import asyncio
import hashlib
from functools import partial
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from api import context, documents
from api.auth import Principal, check_reader
from api.contract import Operation, Param, operation
from api.params import ELECTION_ID, POSITION
from api.problems import Forbidden
from domain.election import Election, ElectionStatus
from domain.errors import NotFound
from domain.recount import Recount
from domain.rules import ElectionRules, ResultsVisibility
from infra.audit.records import election_entries
from infra.runtime.bootstrap import Services
from infra.store.log import head
from projections.queries import tally_snapshot
from projections.results import recounted_snapshot, results_document

MAX_WAIT = 2.0
CACHE_SIZE = 512
RECOUNT_WAIT = 5.0  # seconds a time travel waits for its turn to recount (one at a time)


@operation(
    Operation(
        "getResults",
        "Results with their log position (any role, the election's voter token, or no "
        "token where the election has public_results)",
        "results",
        ok=documents.Results,
        errors=(403, 404),
        conditional=True,
        token_optional=True,
        params=(
            ELECTION_ID,
            Param(
                "min_position",
                "query",
                POSITION,
                required=False,
                description="wait up to 2 s for the results to reach this position",
            ),
            Param(
                "at",
                "query",
                {**POSITION, "minimum": 1},
                required=False,
                description="recount from the log as of this position",
            ),
            Param(
                "If-None-Match",
                "header",
                {"type": "string"},
                required=False,
                description="an ETag of this document: 304 while it is unchanged",
            ),
        ),
    )
)
async def results(request: Request) -> Response:
    """Results from the tally read model; ``min_position`` waits (up to 2 s) for it.

    Auditors see exact live results and may recount at any position (``at``); every other
    reader sees, while the election is open, the results as last published (in steps of
    ``live_results_step`` ballot entries), and ``at`` answers what was published then.
    An election created with ``public_results`` is readable without a token.
    """
    election_id, election, principal = await _reader(request)
    exact = principal.can_act_as("auditor")
    services = context.services(request)
    # Every parameter is checked, whichever one decides the answer: a request the contract
    # calls invalid is refused, not half-read.
    wanted = context.int_param(request, "min_position", 0, minimum=0)
    if "at" in request.query_params:
        at = context.int_param(request, "at", 0, minimum=1)
        # An election that publishes its results at its close published nothing before:
        # only those who saw them then (auditors, admins) may look back before the close.
        unpublished = exact or principal.can_act_as("admin")
        body = await _results_at(services, election_id, at, exact=exact, unpublished=unpublished)
        return _conditional(request, body)
    caught_up = True
    if wanted and (principal.role is not None or principal.voter_token is not None):
        # (Anonymous readers of a public election are not waited for: how long the answer
        # took told anyone when the tally passed each position of the log, every
        # election's ballots included: review helper-38.)
        caught_up = await services.positions.wait_for("tally", wanted, MAX_WAIT)
    body = await current_results(services, election_id, election, exact=exact)
    headers = (
        {} if caught_up else {"Warning": f'199 - "results reflect position {body["position"]}"'}
    )
    return _conditional(request, body, headers)


def _conditional(
    request: Request, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """The document with its ETag, or 304 if the client holds it already."""
    rendered = orjson.dumps(body)
    tag = etag(rendered)
    headers = {**(headers or {}), "ETag": tag, "Cache-Control": "no-cache"}
    if tag in _tags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(rendered, media_type="application/json", headers=headers)


async def reader(request: Request) -> tuple[UUID, Election, bool]:
    """The election whose results this caller may read, and whether they see them exact:
    403 while results are hidden from them, 401 without a token unless they are public."""
    election_id, election, principal = await _reader(request)
    return election_id, election, principal.can_act_as("auditor")


async def _reader(request: Request) -> tuple[UUID, Election, Principal]:
    authenticator = context.auth(request)
    election_id = context.election_id(request)
    services = context.services(request)
    if "authorization" not in request.headers:
        election = await services.app.election(election_id)
        if not election.rules.public_results:
            authenticator.identify(request)  # 401, saying how to authenticate
        principal = Principal()
    else:
        principal = authenticator.identify(request)
        election = await services.app.election(election_id)
    # Whether this caller may read this election at all comes first: a made-up voter token
    # learnt from "not published yet" what kind of election it was, and whether it had
    # closed (review helper-38).
    check_reader(principal, election, partial(services.voter_keys.credential, election_id))
    exact = principal.can_act_as("auditor")
    hidden = (
        election.rules.results_visibility is ResultsVisibility.AFTER_CLOSE
        and election.status is not ElectionStatus.CLOSED
    )
    if hidden and not (exact or principal.can_act_as("admin")):
        raise Forbidden(
            "this election publishes its results when it closes; until then only admins "
            "and auditors see them",
            title=NOT_PUBLISHED,
        )
    return election_id, election, principal


NOT_PUBLISHED = "Not published yet"  # (the dashboards keep the reader's token on it)


def etag(rendered: bytes) -> str:
    return '"' + hashlib.blake2b(rendered, digest_size=12).hexdigest() + '"'


def _tags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


async def current_results(
    services: Services, election_id: UUID, election: Election, *, exact: bool
) -> dict[str, Any]:
    """The results document as GET .../results serves it (and the streams send it)."""
    body = await _results(services, election_id, election, exact=exact)
    if body["closed_at_position"] is not None:
        body = {**body, "final_chain_head": await _final_chain_head(services, body)}
    return body


async def _results(
    services: Services, election_id: UUID, election: Election, *, exact: bool
) -> dict[str, Any]:
    async with services.reads.connection() as conn:
        snapshot = await tally_snapshot(conn, election_id)
    cache: dict[tuple[object, ...], dict[str, Any]] = services.results_cache
    # A stepped view moves only at publications: key it by theirs, not the read model's.
    stepped = not exact and snapshot.closed_at is None
    key = (
        election_id,
        snapshot.version,
        stepped,
        snapshot.published_position if stepped else snapshot.position,
        snapshot.set_aside,
        snapshot.set_aside_unattributed,
        election.status,
    )
    cached = cache.get(key)
    if cached is None:
        cached = results_document(
            election_id, snapshot, election.rules, status=election.status, exact=exact
        )
        if len(cache) >= CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = cached
    return cached


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


async def _results_at(
    services: Services, election_id: UUID, at: int, *, exact: bool, unpublished: bool
) -> dict[str, Any]:
    """Time travel: the results as of log position ``at``, recounted from the log itself
    (for a reader who sees stepped results: as last published at ``at``). A position
    beyond the log's head is taken as the head: results never claim a position the log
    has not reached. Before the close of an election that publishes its results at its
    close, nothing was published: 403 unless ``unpublished`` (the reader saw them then)."""
    async with services.reads.connection() as conn:
        at = min(at, await head(conn))
    rules, closed, snapshot = await _recounted(services, election_id, at)
    if (
        rules.results_visibility is ResultsVisibility.AFTER_CLOSE
        and closed is not ElectionStatus.CLOSED
        and not unpublished
    ):
        raise Forbidden(
            f"this election published no results before its close, and it was not closed "
            f"yet at position {at}: ask for a position at or after its close (only admins "
            f"and auditors see results from before it)"
        )
    status = ElectionStatus.OPEN if closed is ElectionStatus.CLOSED else closed
    # Kept, as the recount is: the log up to ``at`` never changes, and a ranked method's
    # count can take a good part of a second (it ran again for every read).
    key = ("at", election_id, at, exact, status)
    cache: dict[tuple[object, ...], dict[str, Any]] = services.results_cache
    document = cache.get(key)
    if document is None:
        document = {
            **results_document(election_id, snapshot, rules, status=status, exact=exact),
            "recounted_from_log": True,
        }
        if len(cache) >= CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[key] = document
    return document


async def _recounted(
    services: Services, election_id: UUID, at: int
) -> tuple[ElectionRules, ElectionStatus, Any]:
    """The election recounted from the log up to ``at`` (at most the head): its rules, its
    status then, and its snapshot (counters, not ballots). The log up to a position never
    changes, so the snapshot is kept in the results cache. Recounts are CPU work, as long as
    the election is large: one runs at a time per process, so that a flood of them cannot
    crowd out the ballots; one that waits RECOUNT_WAIT seconds for its turn is a 503."""
    key = ("recount", election_id, at)
    kept = services.results_cache.get(key)
    if kept is not None:
        return kept["rules"], kept["status"], kept["snapshot"]
    try:
        await asyncio.wait_for(services.recounting.acquire(), RECOUNT_WAIT)
    except TimeoutError:
        raise HTTPException(
            503,
            "other recounts are running in this process; retry in a few seconds",
            headers={"Retry-After": "2"},
        ) from None
    try:
        kept = services.results_cache.get(key)  # the same recount, done while this waited
        if kept is not None:
            return kept["rules"], kept["status"], kept["snapshot"]
        recount = Recount()
        async with services.reads.connection() as conn:
            async for entry in election_entries(conn, election_id, at):
                try:
                    event = services.app.mapper.to_domain_event(
                        StoredEvent(entry.stream_id, entry.version, entry.topic, entry.state)
                    )
                except Exception as error:  # an unreadable entry: left out, and said so
                    recount.position = entry.position
                    recount.put_aside(entry.position, election_id, f"{type(error).__name__}")
                    continue
                recount.apply(entry.position, event)
    finally:
        services.recounting.release()
    count = recount.elections.get(election_id)
    if count is None:
        raise NotFound(f"election {election_id} did not exist yet at position {at}")
    set_aside = sum(1 for s in recount.set_aside if s.election_id in (election_id, None))
    snapshot = recounted_snapshot(count, at, set_aside)
    if len(services.results_cache) >= CACHE_SIZE:
        services.results_cache.pop(next(iter(services.results_cache)))
    services.results_cache[key] = {
        "rules": count.rules,
        "status": count.status,
        "snapshot": snapshot,
    }
    return count.rules, count.status, snapshot
