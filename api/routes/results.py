"""Results: winners, per-option figures, rounds and pairwise counts, with their position."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from functools import partial
from typing import Any
from uuid import UUID

import orjson
from psycopg import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from api import context, documents, recounts, tabulations
from api.auth import Principal, readable_election
from api.contract import Operation, Param, operation
from api.params import ELECTION_ID, POSITION
from api.problems import Forbidden
from domain.ballot import ballot_id
from domain.election import Election, ElectionStatus
from domain.errors import NotFound
from domain.rules import ElectionRules, ResultsVisibility
from infra.runtime.bootstrap import Services
from infra.runtime.caches import counters_size, json_size
from infra.store import EVENTS_TABLE
from infra.store.log import head
from projections.queries import Read, TallySnapshot, read_snapshot, tally_head
from projections.results import counts_published, results_document, snapshot_rules

MAX_WAIT = 2.0


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
                description="wait up to 2 s for the results to reach this position (a "
                "voter token: at most its own ballot's last entry; no token: no wait)",
            ),
            Param(
                "at",
                "query",
                {**POSITION, "minimum": 1},
                required=False,
                description="recount from the log as of this position (the head if "
                "beyond it; a closed election's close if after it: the final count)",
            ),
            Param(
                "If-None-Match",
                "header",
                {"type": "string"},
                required=False,
                description="ETags of this document (or *, any): 304 while it is unchanged",
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
        body = await _results_at(
            services,
            election_id,
            election,
            at,
            exact=exact,
            unpublished=unpublished,
            # Auditors' and admins' turn to recount; every other reader (a client token is
            # pasted into dashboards) takes the resting one (``recounts.run_shared``), and
            # sees at ``at`` what was last published there (``_last_shown``), as its role
            # allows anyway: a client or operator token once took the auditors' turn.
            role=unpublished,
        )
        return _conditional(request, body)
    caught_up = True
    if wanted and principal.voter_token is not None:
        # A voter waits for its own ballot (or its election's own entries), never further:
        # the tally's position moves with every election's ballots, and a wait for any
        # position of the log (answered, or "Warning: not reached yet") timed the ballots
        # of every other election, private ones included (secrecy review of ff1b34a, A).
        wanted = await own_position(services, election_id, principal.voter_token, wanted)
    if wanted and (principal.role is not None or principal.voter_token is not None):
        # (Anonymous readers of a public election are not waited for at all: how long the
        # answer took told anyone when the tally passed each position of the log, every
        # election's ballots included: review helper-38.)
        caught_up = await services.positions.wait_for("tally", wanted, MAX_WAIT)
    body = await current_results(services, election_id, election, exact=exact)
    headers = (
        {} if caught_up else {"Warning": f'199 - "results reflect position {body["position"]}"'}
    )
    return _conditional(request, body, headers)


OWN_ENTRIES = f"""
SELECT max(notification_id) FROM {EVENTS_TABLE}
WHERE originator_id = ANY(%s) AND notification_id <= %s
"""


async def own_position(services: Services, election_id: UUID, token: str, wanted: int) -> int:
    """How far a voter's ``min_position`` waits: the last entry, up to ``wanted``, of its
    own ballot or of its election's own stream (created, opened, tokens, closed); 0 if
    none. A receipt of its ballot is waited for exactly; beyond it, nothing the voter did
    not write or could not see (the election's state) is."""
    voter = services.voter_keys.for_token(election_id, token)
    streams = [election_id, ballot_id(election_id, voter.ballot_key)]
    async with services.reads.connection() as conn:
        cursor = await conn.execute(OWN_ENTRIES, (streams, wanted))
        row = await cursor.fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _conditional(
    request: Request, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """The document with its ETag, or 304 if the client holds it already."""
    rendered = orjson.dumps(body)
    tag = etag(rendered)
    headers = {**(headers or {}), "ETag": tag, "Cache-Control": "no-cache"}
    held = _tags(request.headers.get("if-none-match", ""))
    # "*" matches any current representation (RFC 9110 13.1.2): this one exists.
    if tag in held or "*" in held:
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
        try:
            election = await services.app.election(election_id)
        except NotFound:
            # 401, as to an election without public results: a 404 told anyone which ids
            # name a private election (security review F3); with a token, it is a 404
            authenticator.identify(request)
            raise
        if not election.rules.public_results:
            authenticator.identify(request)  # 401, saying how to authenticate
        principal = Principal()
    else:
        principal = authenticator.identify(request)
        # Whether this caller may read this election at all comes first: a made-up voter
        # token learnt from "not published yet" what kind of election it was, and whether
        # it had closed (review helper-38).
        election = await readable_election(
            principal,
            services.app,
            election_id,
            partial(services.voter_keys.credential, election_id),
        )
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
    async with services.reads.connection() as conn:
        head = await tally_head(conn, election_id)
    cache = services.results_cache
    if head.closed_at is not None:
        # A closed election's document with its signed chain head, kept once the head is
        # sealed (it never changes then): the most read document of all, after a close,
        # looked up first (a plain document let go is not counted again for it).
        sealed: dict[str, Any] | None = cache.get(
            _sealed(_key(election_id, election, head, exact=exact))
        )
        if sealed is not None:
            return sealed
    key, body = await _results(services, election_id, election, head, exact=exact)
    if body["closed_at_position"] is None:
        return body
    sealed = cache.get(_sealed(key))  # (the key read with the counters: sealed meanwhile)
    if sealed is None:
        sealed = {**body, "final_chain_head": await _final_chain_head(services, body)}
        if sealed["final_chain_head"] is None:
            return sealed  # (sealed within seconds of the close: kept plain till then)
        cache.put(_sealed(key), sealed, json_size(sealed))
    # Kept once: the plain document is let go (it shares all but its top level with the
    # sealed one, and was charged its full size again; memory review of 9411836).
    cache.discard(key)
    return sealed


def _sealed(key: tuple[object, ...]) -> tuple[object, ...]:
    return ("sealed", *key)


def _key(
    election_id: UUID, election: Election, snapshot: TallySnapshot, *, exact: bool
) -> tuple[object, ...]:
    """A live document's cache key, from its snapshot's head.

    An auditor's document moves with the tally's position; everyone else's only where
    what it shows changed (``visible_position``): at a publication (with steps of one,
    each counted entry of the election), the close, a late ballot. Keyed by that, two
    processes serve the same document (and ETag) for the same state of the election,
    wherever each one's tally stands in the rest of the log."""
    seen = (
        (snapshot.position,)
        if exact
        else (snapshot.published_position, snapshot.closed_at, snapshot.last_late)
    )
    return (
        election_id,
        snapshot.version,
        exact,
        *seen,
        snapshot.set_aside,
        snapshot.set_aside_unattributed,
        election.status,
    )


async def _results(
    services: Services,
    election_id: UUID,
    election: Election,
    head: TallySnapshot,
    *,
    exact: bool,
) -> tuple[tuple[object, ...], dict[str, Any]]:
    """The live document and its key, keyed by the snapshot's head (a few small rows): on a
    hit that is all that is read. The counters (6.3 MB for a public STV election of 60
    options and 53,000 distinct rankings) are read on a miss only, those of this view
    alone, and decoded off the event loop unless they are few; every read fetched and
    decoded them all before, 304s and stream rounds included (denial-of-service review)."""
    cache = services.results_cache
    key = _key(election_id, election, head, exact=exact)
    cached: dict[str, Any] | None = cache.get(key)
    if cached is not None:
        return key, cached
    read: Read | None = None
    if tabulations.may_be_tiny(snapshot_rules(head, election.rules), head.entries):
        # Counters read now: if they are few, the document is counted inline (a thread hop
        # would cost more than the count); else in a turn, from what was read. (Only where
        # the head bounds them within the inline limit: a ranked tally's, one per distinct
        # ranking, could be many, and concurrent misses would each read them here.)
        read = await _read(services, election_id, election, head, exact=exact)
        key = _key(election_id, election, read.head, exact=exact)
        cached = cache.get(key)
        if cached is not None:
            return key, cached
        if read.size <= tabulations.INLINE_TEXT:
            snapshot = read.decode()
            if tabulations.tiny(snapshot_rules(snapshot, election.rules), snapshot):
                document = _count(election_id, election, snapshot, exact)
                cache.put(key, document, json_size(document))
                return key, document
    # A large count takes a good part of a second: off the event loop, in turns (one per
    # process), shared by every request for the same document, and so are the read of its
    # counters and their decoding.
    work = partial(
        _counted, services, election_id, election, exact=exact, key=key, head=head, read=read
    )
    return await tabulations.tabulate(services, key, work)


async def _read(
    services: Services, election_id: UUID, election: Election, head: TallySnapshot, *, exact: bool
) -> Read:
    """The snapshot with the counters this view counts (``counts_published``), in one
    statement: the document is keyed by the head read with them."""
    published = counts_published(head, snapshot_rules(head, election.rules), exact=exact)
    async with services.reads.connection() as conn:
        read = await read_snapshot(conn, election_id, counters=not published, published=published)
        if counts_published(read.head, snapshot_rules(read.head, election.rules), exact=exact) != (
            published
        ):  # closed since the head was read: both, and the view has what it counts
            read = await read_snapshot(conn, election_id, counters=True, published=True)
    return read


def _count(
    election_id: UUID, election: Election, snapshot: TallySnapshot, exact: bool
) -> dict[str, Any]:
    return results_document(
        election_id, snapshot, election.rules, status=election.status, exact=exact
    )


def _decode_and_count(
    election_id: UUID, election: Election, read: Read, exact: bool
) -> dict[str, Any]:
    """In a worker thread: the counters decoded (tens of ms for a large election), then
    counted."""
    return _count(election_id, election, read.decode(), exact)


async def _counted(
    services: Services,
    election_id: UUID,
    election: Election,
    *,
    exact: bool,
    key: tuple[object, ...],
    head: TallySnapshot,
    read: Read | None,
) -> tuple[tuple[object, ...], dict[str, Any]]:
    """A live document counted in a worker thread (unless counted while this waited its
    turn), and kept; its counters read now unless ``read`` holds them, and the document
    kept under the key of what it counts (the head may have moved since ``key``)."""
    cache = services.results_cache
    document: dict[str, Any] | None = cache.get(key)
    if document is not None:
        return key, document
    if read is None:
        read = await _read(services, election_id, election, head, exact=exact)
        key = _key(election_id, election, read.head, exact=exact)
        document = cache.get(key)
        if document is not None:
            return key, document
    document = await asyncio.to_thread(_decode_and_count, election_id, election, read, exact)
    cache.put(key, document, json_size(document))
    return key, document


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
    services: Services,
    election_id: UUID,
    election: Election,
    at: int,
    *,
    exact: bool,
    unpublished: bool,
    role: bool,
) -> dict[str, Any]:
    """Time travel: the results as of log position ``at``, recounted from the log itself
    (for a reader other than an auditor: as they saw them at ``at``, the last publication,
    with its position). A position beyond the log's head is taken as the head: results
    never claim a position the log has not reached; one after a closed election's close is
    taken as the close (the final count: nothing after it counts). Before the close of an
    election that publishes its results at its close, nothing was published: 403 unless
    ``unpublished`` (the reader saw them then), said before any recount. Before the
    election's creation: 404, also said before any recount.

    Recounts run off the event loop, one at a time per process and turn (``api.recounts``;
    ``role``: the caller is an auditor or an admin, whose turn never rests). Every result
    is kept, within the time travel cache's bytes: the log up to a position never changes.
    A reader other than an auditor sees at a position what was last published there (with
    steps of one, the election's last counted entry): once a replay has indexed the
    election, every position maps to it, and all the positions between two of them share
    one document."""
    cache = services.travel_cache
    indexed = not exact
    index: recounts.StepIndex | None = cache.get(("steps", election_id)) if indexed else None
    async with services.reads.connection() as conn:
        created = await recounts.created_at(conn, election_id)
        if created is None or at < created:
            raise recounts.not_yet(election_id, at)
        reach = await head(conn)  # how far an indexing replay goes: the whole log
        at = min(at, reach)
        close = None
        if election.status is ElectionStatus.CLOSED:
            close = await recounts.closed_at(conn, election_id)
            if close is not None:
                at = min(at, close)
                reach = close
        if close is not None and at < close:
            _check_published(election, ElectionStatus.OPEN, at, unpublished)
        if indexed and not role and close is None:
            at = await _last_shown(services, conn, election_id, election, at)
        if (
            role
            and index is not None
            and at > index.reach
            and index.closed_at is None
            and (close is None or at < close)
            and await recounts.untouched(conn, election_id, index.reach, at)
        ):
            # Only other elections' entries since the index's replay (``?at=`` the head,
            # read again after each ballot anywhere): it answers for ``at`` as it is. (Not
            # for readers without a role: whether this took one read or a replay told them
            # when each entry of the election came between two publications; their ``at``
            # is a publication or one of the election's own entries, above.)
            index = replace(index, reach=at)
            cache.put(("steps", election_id), index, index.size())
    if index is not None and index.covers(at):
        # What this reader saw at ``at`` is known without a replay: the publication then.
        published, status, set_aside = index.view(at)
        key = _stepped_key(election_id, published, status, set_aside)
        work = partial(
            _stepped_at,
            services,
            election_id,
            published=published,
            status=status,
            set_aside=set_aside,
            key=key,
        )
    else:
        key = ("at", election_id, at, exact)
        work = partial(
            _recount_at,
            services,
            election_id,
            at=at,
            reach=reach if indexed else at,
            exact=exact,
            key=key,
        )
    document: dict[str, Any] | None = cache.get(key)
    if document is None:
        document = await recounts.run_shared(services, key, work, role=role)
    _check_published(election, ElectionStatus(document["status"]), at, unpublished)
    return document


async def _last_shown(
    services: Services, conn: AsyncConnection[Any], election_id: UUID, election: Election, at: int
) -> int:
    """Where an open election last changed what a reader without a role sees, up to
    ``at``: its last publication (as the log has it, however far behind the tally is:
    ``recounts.last_publication``), or a later entry of its own stream (opened, tokens);
    ``at`` itself if the election has published after it (a position in the past, which
    the step index answers). Time travel for these readers replays only when that moves,
    at a publication: never right after an unpublished ballot, whose replay (a tenth of a
    second, against one read) timed each entry between two publications (secrecy review
    of ff1b34a, C)."""
    published = await recounts.last_publication(services, conn, election_id, election.rules, at)
    if published is None:
        return at
    cursor = await conn.execute(OWN_ENTRIES, ([election_id], at))
    row = await cursor.fetchone()
    own = 0 if row is None or row[0] is None else int(row[0])
    return max(published, own) or at


def _stepped_key(
    election_id: UUID, published: int, status: ElectionStatus, set_aside: int
) -> tuple[object, ...]:
    """A stepped document's key: what it shows (positions of one step share it)."""
    return ("at", election_id, "stepped", published, status, set_aside)


def _check_published(
    election: Election, status: ElectionStatus, at: int, unpublished: bool
) -> None:
    """An election that publishes at its close published nothing before it (``status``:
    the election's then)."""
    if (
        election.rules.results_visibility is ResultsVisibility.AFTER_CLOSE
        and status is not ElectionStatus.CLOSED
        and not unpublished
    ):
        raise Forbidden(
            f"this election published no results before its close, and it was not closed "
            f"yet at position {at}: ask for a position at or after its close (only admins "
            f"and auditors see results from before it)"
        )


async def _recount_at(
    services: Services,
    election_id: UUID,
    *,
    at: int,
    reach: int,
    exact: bool,
    key: tuple[object, ...],
) -> dict[str, Any]:
    """The document at ``at``, from a recount as of ``at`` (kept, with what the replay
    learnt: for a reader other than an auditor it goes on to ``reach``, the head or the
    close, so that the election's other positions map to their publications without
    another replay)."""
    cache = services.travel_cache
    document: dict[str, Any] | None = cache.get(key)  # counted while this waited its turn
    if document is not None:
        return document
    kept: recounts.Recounted | None = cache.get(("recount", election_id, at))
    if kept is None or kept.index.reach < reach:
        kept = await recounts.replay(services, election_id, at, reach)
        known = cache.get(("steps", election_id))
        if known is not None and known.reach >= kept.index.reach:
            kept = replace(kept, index=known)  # one index per election, not one per recount
        else:
            cache.put(("steps", election_id), kept.index, kept.index.size())
        snapshot = kept.snapshot
        size = counters_size(snapshot.counters) + counters_size(snapshot.published_counters)
        cache.put(("recount", election_id, at), kept, 1_000 + size + kept.index.size())
        if snapshot.closed_at is None:
            published = _published(kept.rules, snapshot)
            cache.put(
                ("published", election_id, snapshot.published_position),
                published,
                1_000 + counters_size(published[2]),
            )
    status = ElectionStatus.OPEN if kept.status is ElectionStatus.CLOSED else kept.status
    snapshot = kept.snapshot
    if not exact and kept.index.covers(at):
        # Dated where what this reader sees last changed: the Opened entry, when it came
        # after the last publication (the index's view, as the stepped path dates it).
        snapshot = replace(snapshot, published_position=kept.index.view(at)[0])
    document = await asyncio.to_thread(_document, election_id, snapshot, kept.rules, status, exact)
    cache.put(key, document, json_size(document))
    if not exact and kept.index.covers(at):  # the same for every position of its step
        cache.put(_stepped_key(election_id, *kept.index.view(at)), document, json_size(document))
    return document


async def _stepped_at(
    services: Services,
    election_id: UUID,
    *,
    published: int,
    status: ElectionStatus,
    set_aside: int,
    key: tuple[object, ...],
) -> dict[str, Any]:
    """The document of a reader other than an auditor: the publication at ``published``
    (with steps of one, the election's last counted entry; recounted as of that position
    if no replay kept it), with the status and the entries set aside at the position asked
    for (which the step index gives)."""
    cache = services.travel_cache
    document: dict[str, Any] | None = cache.get(key)
    if document is not None:
        return document
    kept = cache.get(("published", election_id, published))
    if kept is None:
        recounted = await recounts.replay(services, election_id, published, published)
        kept = _published(recounted.rules, recounted.snapshot)
        cache.put(("published", election_id, published), kept, 1_000 + counters_size(kept[2]))
    rules, entries, counters = kept
    snapshot = TallySnapshot(
        position=published,
        rules=None,
        closed_at=None,
        late_ballots=0,
        counters=counters,
        entries=entries,
        published_position=published,
        published_counters=counters,
        set_aside=set_aside,
    )
    document = await asyncio.to_thread(_document, election_id, snapshot, rules, status, False)
    cache.put(key, document, json_size(document))
    return document


def _published(
    rules: ElectionRules, snapshot: TallySnapshot
) -> tuple[ElectionRules, int, dict[str, int]]:
    """An open election's publication in a snapshot: its rules, entries (whole steps) and
    counters (with steps of one, every counted entry publishes: the counters as they are)."""
    step = rules.live_results_step
    if step == 1:
        return rules, snapshot.entries, snapshot.counters
    return rules, snapshot.entries // step * step, snapshot.published_counters or {}


def _document(
    election_id: UUID,
    snapshot: TallySnapshot,
    rules: ElectionRules,
    status: ElectionStatus,
    exact: bool,
) -> dict[str, Any]:
    """The time-travel document (in a worker thread: a ranked count can take seconds)."""
    return {
        **results_document(election_id, snapshot, rules, status=status, exact=exact),
        "recounted_from_log": True,
    }
