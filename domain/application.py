"""The service layer: Cardinal Vote's use cases as an eventsourcing Application."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate, DomainEventProtocol
from eventsourcing.persistence import IntegrityError, PersistenceError

from domain.ballot import Ballot, ballot_id
from domain.election import NOT_ISSUED, Election, ElectionStatus
from domain.errors import (
    AlreadyVoted,
    BallotNotFound,
    CardinalError,
    ConcurrentRevision,
    ElectionNotFound,
    ElectionNotOpen,
    InvalidBallot,
    NotEligible,
)
from domain.ports import (
    EventWriter,
    HeldBack,
    Recorded,
    RecordedBallot,
    StoreUnavailable,
    VersionConflict,
)
from domain.rules import ElectionRules, Eligibility, validate_title
from domain.voter import Voter
from domain.votes import parse_vote

log = logging.getLogger(__name__)

LIFECYCLE_ATTEMPTS = 3
MAX_BALLOTS_PER_VOTER = 16  # in one batch
# A voter token this process's election does not know, or a ballot to an election it sees
# as a draft, makes it catch up with the log (the election feed reads what is new), at most
# once per this many seconds per id (those meanwhile share the next catch-up): made-up
# tokens, and ballots to a draft, cost a wait and a small read. An id that names no
# election has a floor of its own too, as an election has: when those ids shared one, a
# made-up token told an election (answered at once) from an unknown id (which waited out
# the floor another unknown id had started) by the time of its 403 (merge review of
# 549855f).
TOKEN_RELOAD_FLOOR = 0.1
# How many ids may have a floor of their own running at once (a catch-up started within
# the last TOKEN_RELOAD_FLOOR, or waiting to start); a miss on any other id meanwhile,
# whatever it names, shares one floored catch-up (``CROWDED``). So random ids neither
# start more than this many catch-ups (and one) per floor nor leave bookkeeping each (a
# floor that has passed is forgotten), and an id waits alike whatever it names.
TOKEN_RELOADS_PER_FLOOR = 10
CROWDED = UUID(int=0)
# The shared catch-up's own floor, shorter: every id past the ten waits on it, a real
# voter's first check in any election included (at TOKEN_RELOAD_FLOOR, a spray of made-up
# ids held those 55-92 ms each: merge review mr5). The feed runs one scan at a time.
CROWDED_FLOOR = 0.01
# Closed elections a process keeps in memory, the least recently used dropped past it
# (CLOSED_ELECTIONS_CACHED sets it for the service): each holds its electorate, about
# 2 KiB an election and 140 bytes a voter token, and a process held every election it ever
# saw (the soak review). Open and draft elections are always kept.
CLOSED_ELECTIONS_CACHED = 1000
_SHUFFLE = random.SystemRandom().shuffle
A = TypeVar("A", bound=Aggregate)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof that a change was recorded: which aggregate, which version, where in the log,
    and (where the writer computes it) the entry's hash in the audit chain."""

    id: UUID
    version: int
    position: int
    replayed: bool = False
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class DroppedElection:
    """A closed election this process holds no more (``CLOSED_ELECTIONS_CACHED``): what
    the overview needs of it, kept so that going through every election reads none of
    those again. (Its status is closed for good; its rules, and so ``public_results``,
    were pinned at its creation.)"""

    id: UUID
    public_results: bool


def creation_order(election: Election) -> tuple[datetime, UUID]:
    """Oldest first, and a total order: two elections created in the same microsecond (or
    by processes whose clocks disagree) still have one order, the one a listing's pages
    follow."""
    return election.created_on, election.id


class VotingApplication(Application[UUID]):
    """Create and run elections; cast, revise and withdraw ballots.

    Appends go through ``self.writer`` (an EventWriter): by default straight through the
    application's own recorder; the service plugs in its group-commit writer instead.
    Elections are kept in memory once seen, and kept current by ``observe``: every open
    and draft one, and the ``closed_cached`` closed ones used last (a closed election can
    no longer change; one dropped is read from the store again on its next use).
    """

    name = "cardinal"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.writer: EventWriter = DirectWriter(self)
        # The draft and open elections (the ballot path's: a hit costs one lookup, as it
        # did before closed ones were bounded), never dropped for room.
        self.elections: dict[UUID, Election] = {}
        # The closed elections kept, least recently used first, at most ``closed_cached``
        # of them: the rest are read from the store again on use (``election``).
        self.closed: dict[UUID, Election] = {}
        self.closed_cached = CLOSED_ELECTIONS_CACHED
        # Those dropped for room, each with whether its results are public (a listing by
        # status and the overview pass them over without reading them).
        self.dropped: dict[UUID, bool] = {}
        # Every election this process has seen: an election is dropped from the above
        # where it may be stale (a close seen by a ballot, a gap) or for room, and
        # reloaded on use, but it is never deleted from these, so a listing goes by them.
        self.known: set[UUID] = set()
        # The same, in creation order (``creation_order``), kept as they become known, so
        # that a listing's page reads its own elections only: it read and sorted every
        # election for each page (1.4 s at 50,000 elections, on the event loop: the soak
        # review).
        self._in_order: list[tuple[datetime, UUID]] = []
        # The next catch-up for an election or id (an unknown voter token, a ballot to a
        # draft), not started yet (all those meanwhile wait for it), and when the last one
        # started, in that order, for those whose floor has not passed (``_token_reload``).
        self._token_reloads: dict[UUID, asyncio.Task[None]] = {}
        self._token_reloaded_at: dict[UUID, float] = {}
        # Brings the cached elections up to every election event recorded before the call
        # (the API's election feed sets it: a read of what is new in the log); without it,
        # a miss reads its election from the store again.
        self.catch_up: Callable[[], Awaitable[None]] | None = None

    def stored(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        """An aggregate as the store has it now, if it exists and is of this kind."""
        try:
            aggregate: Aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None
        return aggregate if isinstance(aggregate, kind) else None

    # -- elections ---------------------------------------------------------------------

    async def create_election(self, title: str, rules: ElectionRules) -> Receipt:
        election = Election.start(validate_title(title), rules)
        receipt = await self._commit(election)
        self._keep(election)
        self._know(election)
        return receipt

    async def open_election(self, election_id: UUID) -> Receipt:
        return await self._change_election(election_id, Election.open)

    async def close_election(self, election_id: UUID) -> Receipt:
        return await self._change_election(election_id, Election.close)

    async def issue_voter_tokens(self, election_id: UUID, credentials: Sequence[str]) -> Receipt:
        return await self._change_election(
            election_id, lambda election: election.issue_voter_tokens(credentials)
        )

    async def election(self, election_id: UUID) -> Election:
        """The election as this process last saw it (loaded from the store on a miss)."""
        cached = self.elections.get(election_id)
        if cached is not None:
            return cached
        closed = self.closed.pop(election_id, None)  # (a ballot's path has returned)
        if closed is not None:
            self.closed[election_id] = closed  # now the most recently used
            return closed
        loaded = await self.writer.load_election(election_id)
        if loaded is None:
            raise ElectionNotFound(election_id)
        # A newer state may have come while this read (a close, here or through the feed):
        # that one is kept, and a dropped election is closed for good, so an older read of
        # it is answered but not held (readers would disagree on its status).
        held = self.elections.get(election_id) or self.closed.get(election_id)
        if held is not None and held.version >= loaded.version:
            return held
        if election_id not in self.dropped or loaded.status is ElectionStatus.CLOSED:
            self._keep(loaded)
        self._know(loaded)
        return loaded

    def _keep(self, election: Election) -> None:
        """Hold this state of the election: a draft or open one for good, a closed one
        as the most recently used, dropping the least recently used past the bound. A
        token election is never dropped, closed or not: a voter token's check must not read
        it from the store, whose time would tell the size of its electorate
        (docs/threat-model.md), so what bounds the closed ones held is the client
        elections'."""
        if (
            election.status is not ElectionStatus.CLOSED
            or election.rules.eligibility is Eligibility.TOKENS
        ):
            self.elections[election.id] = election
            self.closed.pop(election.id, None)
            return
        self.elections.pop(election.id, None)
        self.closed.pop(election.id, None)
        self.dropped.pop(election.id, None)
        self.closed[election.id] = election
        while len(self.closed) > self.closed_cached:
            dropped = next(iter(self.closed))
            self.dropped[dropped] = self.closed.pop(dropped).rules.public_results

    def forget(self, election_id: UUID) -> None:
        """Drop this process's state of the election (it may be stale): the next use
        reads it from the store. It stays known (listed)."""
        self.elections.pop(election_id, None)
        self.closed.pop(election_id, None)

    def held(self) -> int:
        """How many elections this process holds in memory."""
        return len(self.elections) + len(self.closed)

    async def token_holder_election(self, election_id: UUID, credential: str) -> Election:
        """The election, if the voter token of this credential was issued for it; else
        NotEligible (403), whatever the election (``Election.check_token_holder``).

        A token another process issued a moment ago may not have reached this process's
        election yet (the feed follows within a poll): on a miss the cached elections are
        brought up to the log as it is after this request came (``catch_up``: the feed
        reads what is new in the log, not the election), before the token is refused.
        Misses share that catch-up, and an election's misses start one at most once per
        TOKEN_RELOAD_FLOOR, so made-up tokens cost a short wait and at most ten small reads
        a second per election. (Every miss waits so, in an election of any kind, and the
        wait does not grow with the electorate: it tells nothing of either.)

        An id that names no election is a miss too, answered with the same NotEligible
        after the same floored catch-up (the id's own, as an election's), not
        ElectionNotFound: a 404 there told a made-up token which ids name an election,
        where no token cannot tell (the auth review). The catch-up also finds an election
        created a moment ago through another process. Where a catch-up is set (the
        election feed's: every election in the log is known once it has run), an id this
        process does not know is not looked for in the store, before it or after: those
        reads cost an unknown id a millisecond more than an election held in memory."""
        followed = self.catch_up is not None
        # (Followed, only what this process holds is looked at: a token election is never
        # dropped, so a closed one dropped from memory holds no token, and reading it from
        # the store timed it apart from an unknown id: merge review mr5.)
        held = election_id in self.elections or election_id in self.closed
        if not followed or held:
            try:
                election = await self.election(election_id)
            except ElectionNotFound:
                pass
            else:
                try:
                    election.check_token_holder(credential)
                except NotEligible:
                    pass
                else:
                    return election
        await asyncio.shield(self._token_reload(election_id))
        if followed and not (election_id in self.elections or election_id in self.closed):
            raise NotEligible(NOT_ISSUED)
        try:
            election = await self.election(election_id)
        except ElectionNotFound:
            raise NotEligible(NOT_ISSUED) from None
        election.check_token_holder(credential)
        return election

    async def _caught_up(self, election_id: UUID) -> Election:
        """The election once this process has caught up with the log as it was when asked:
        the shared, floored catch-up of ``token_holder_election``, for a voter token that
        the cached election does not hold (it may have been issued a moment ago through
        another process), and of ``_taking_ballots``, for a ballot to an election this
        process sees as a draft (it may have been opened so). Raises what the catch-up met
        (the store away: StoreUnavailable)."""
        await asyncio.shield(self._token_reload(election_id))
        return await self.election(election_id)

    def _token_reload(self, election_id: UUID) -> asyncio.Task[None]:
        """The next re-read of this election (or id), not started yet: it starts after the
        caller asked, so it sees whatever was recorded before. Past TOKEN_RELOADS_PER_FLOOR
        ids with a floor running, an id without one shares the ``CROWDED`` re-read (the
        election feed's catch-up reads what is new for every election)."""
        reload = self._token_reloads.get(election_id)
        if reload is not None:
            return reload
        self._forget_passed_floors()
        running = self._token_reloaded_at.keys() | self._token_reloads.keys()
        if (
            self.catch_up is not None
            and election_id not in running
            and len(running) >= TOKEN_RELOADS_PER_FLOOR
        ):
            election_id = CROWDED
            reload = self._token_reloads.get(election_id)
            if reload is not None:
                return reload
        key = election_id
        reload = asyncio.create_task(self._reload_for_token(key))
        reload.add_done_callback(_consumed)
        reload.add_done_callback(lambda _: self._started(key, reload))
        self._token_reloads[key] = reload
        return reload

    def _forget_passed_floors(self) -> None:
        """Drop the start times whose floor has passed (one dropped waits as one never
        seen: not at all), oldest first (they are kept in the order they started)."""
        now = time.monotonic()
        while self._token_reloaded_at:
            oldest, started = next(iter(self._token_reloaded_at.items()))
            if started + TOKEN_RELOAD_FLOOR > now:
                return
            del self._token_reloaded_at[oldest]

    def _started(self, election_id: UUID, reload: asyncio.Task[None] | None) -> None:
        """This re-read has started (or ended): a miss from now on waits for the next."""
        if reload is not None and self._token_reloads.get(election_id) is reload:
            del self._token_reloads[election_id]

    async def _reload_for_token(self, election_id: UUID) -> None:
        try:
            last = self._token_reloaded_at.get(election_id)
            floor = CROWDED_FLOOR if election_id == CROWDED else TOKEN_RELOAD_FLOOR
            if last is not None and (wait := last + floor - time.monotonic()) > 0:
                await asyncio.sleep(wait)
        finally:
            self._started(election_id, asyncio.current_task())
        self._token_reloaded_at.pop(election_id, None)  # (kept in the order they started)
        self._token_reloaded_at[election_id] = time.monotonic()
        if self.catch_up is not None:
            # What is new in the log, whatever the election's size: a whole election read
            # again cost a made-up token's sender as much as its electorate (a million
            # digests), and its time told that size (the merge review).
            await self.catch_up()
            return
        fresh = await self.writer.load_election(election_id)
        cached = self.elections.get(election_id) or self.closed.get(election_id)
        if fresh is not None and (cached is None or fresh.version > cached.version):
            self._keep(fresh)

    def _know(self, election: Election) -> None:
        if election.id not in self.known:
            self.known.add(election.id)
            bisect.insort(self._in_order, creation_order(election))

    async def every_election(self) -> list[Election]:
        """Every election this process knows of, oldest first (by ``creation_order``); one
        whose cached state was dropped is read from the store again (before, a listing left
        it out)."""
        return await self.elections_after(None, limit=None)

    async def every_election_or_dropped(self) -> list[Election | DroppedElection]:
        """Every election this process knows of, oldest first, as ``every_election``, but
        a closed one dropped for room as a ``DroppedElection``, not read again (the
        overview goes through every election, and reads only those it shows)."""
        found: list[Election | DroppedElection] = []
        # (A copy: an election made meanwhile by a process whose clock is behind goes in
        # before the walk's place, which would visit one twice and skip another.)
        for _, election_id in list(self._in_order):
            public = self.dropped.get(election_id)
            if public is not None:
                found.append(DroppedElection(election_id, public))
            elif (election := await self._listed(election_id)) is not None:
                found.append(election)
        return found

    async def elections_after(
        self,
        after: tuple[datetime, UUID] | None,
        *,
        limit: int | None,
        wanted: Callable[[Election], bool] = lambda _: True,
        status: ElectionStatus | None = None,
    ) -> list[Election]:
        """Up to ``limit`` of the elections this process knows of that come after ``after``
        in creation order, are of ``status`` (if given) and are ``wanted``, oldest first,
        reading only those it passes (a listing's page, not every election), but a closed
        one dropped for room where ``status`` is another. One that cannot be read is left
        out and said; a store that is away raises."""
        start = 0 if after is None else bisect.bisect_right(self._in_order, after)
        found: list[Election] = []
        passed_over = status is not None and status is not ElectionStatus.CLOSED
        for _, election_id in self._in_order[start:]:
            if limit is not None and len(found) == limit:
                break
            if passed_over and election_id in self.dropped:
                continue  # closed: not read again to be left out
            election = await self._listed(election_id)
            if election is None:
                continue
            if (status is None or election.status is status) and wanted(election):
                found.append(election)
        return found

    async def _listed(self, election_id: UUID) -> Election | None:
        """The election, for a listing: None (and said) if it cannot be read; a store that
        is away raises."""
        try:
            return await self.election(election_id)
        except (StoreUnavailable, PersistenceError):
            raise
        except Exception as error:  # one unreadable election does not hide the others
            log.error("election %s cannot be read, left out of the listing: %s", election_id, error)
            return None

    def observe(self, events: Iterable[DomainEventProtocol[UUID]]) -> None:
        """Bring cached elections up to date with election events read from the log."""
        for domain_event in events:
            if isinstance(domain_event, Election.Created):
                created = cast(Election, domain_event.mutate(None))
                if created.id not in self.known:
                    self.elections[created.id] = created
                    self._know(created)
                continue
            # (A closed election has no later events: one not held is read on use.)
            cached = self.elections.get(domain_event.originator_id)
            if cached is None or domain_event.originator_version <= cached.version:
                continue
            if domain_event.originator_version == cached.version + 1:
                domain_event.mutate(cached)  # type: ignore[attr-defined]
                if cached.status is ElectionStatus.CLOSED:
                    self._keep(cached)  # now among the closed ones, bounded
            else:
                # A gap: reload on next use rather than guess.
                del self.elections[domain_event.originator_id]

    async def _change_election(self, election_id: UUID, change: Any) -> Receipt:
        for attempt in range(LIFECYCLE_ATTEMPTS):
            election = await self.writer.load_election(election_id)
            if election is None:
                raise ElectionNotFound(election_id)
            change(election)
            try:
                receipt = await self._commit(election)
            except VersionConflict:
                if attempt + 1 == LIFECYCLE_ATTEMPTS:
                    raise ConcurrentRevision(
                        "the election was changed by another request at the same moment; try again"
                    ) from None
                continue
            self._keep(election)
            self._know(election)
            return receipt
        raise AssertionError("unreachable")  # pragma: no cover

    # -- ballots -----------------------------------------------------------------------

    async def cast_ballot(
        self,
        election_id: UUID,
        voter: Voter,
        content: Mapping[str, Any],
        request_key: str | None = None,
    ) -> Receipt:
        """Cast a voter's ballot, or revise it where the election allows revoting."""
        try:
            return await self._cast(election_id, voter, content, request_key)
        except ElectionNotOpen:
            # A retry of a ballot recorded before the close: it is counted, so its receipt
            # (a refusal would tell a client whose answer was lost that it was not).
            earlier = await self.replayed(election_id, voter, content, request_key)
            if earlier is None:
                raise
            return earlier

    async def _cast(
        self,
        election_id: UUID,
        voter: Voter,
        content: Mapping[str, Any],
        request_key: str | None,
    ) -> Receipt:
        election = await self._taking_ballots(election_id)
        vote = election.accept_vote(voter, content).to_json()
        first = Ballot.first_cast(election_id, voter.ballot_key, vote, request_key)
        try:
            recorded = await self._guarded(
                self.writer.append_events([first], while_open=election_id), election_id
            )
        except VersionConflict:
            pass
        else:
            return Receipt(
                first.originator_id,
                first.originator_version,
                recorded.position,
                digest=recorded.digest,
            )
        existing = await self._existing_ballot(first.originator_id)
        replayed = await self._replay(existing, request_key, vote)
        if replayed is not None:
            return replayed
        if not election.rules.allow_revote:
            raise AlreadyVoted(
                "this voter has already cast a ballot, and this election does not allow changing it"
            )
        existing.revise(vote, request_key)
        return await self._record_revision(existing, election_id, request_key, vote)

    async def replayed(
        self,
        election_id: UUID,
        voter: Voter,
        content: Mapping[str, Any],
        request_key: str | None,
    ) -> Receipt | None:
        """The receipt of this very request if it was recorded already (a retry with the
        same key and ballot), else None, whatever else is wrong with it; records nothing.
        (For a caller refused already: its answer must say nothing more than the refusal
        unless this is its own retry, not whether the voter voted or the election closed.)"""
        if request_key is None:
            return None
        existing = await self.writer.load_ballot(ballot_id(election_id, voter.ballot_key))
        if existing is None or request_key not in existing.requests:
            return None
        rules = (await self.election(election_id)).rules  # pinned: the same in every view
        try:
            return await self._replay(existing, request_key, parse_vote(rules, content).to_json())
        except CardinalError:  # the key's ballot was another, or this one is invalid
            return None

    async def cast_ballots(
        self,
        election_id: UUID,
        ballots: Sequence[tuple[Voter, Mapping[str, Any], str | None]],
    ) -> list[Receipt | Exception]:
        """Cast many ballots of one election, each recorded or refused on its own: in each
        ballot's place, its receipt or the error it met.

        The first ballot of each voter goes to the writer in one ``append_each`` (they
        share its group commits, with one wait for them all), in an order of chance. Those
        that meet an earlier ballot of their voter in the log are read back together, in
        one ``load_ballots``: a retry (same key, same ballot) is answered from that read
        with its first receipt, and so is each of the voter's next ballots in the batch
        while they are retries too (a batch sent again costs one read, not a read and a
        commit per ballot). The rest (a revision, a key used for another ballot, a refusal)
        and a voter's further ballots take the single-ballot path, in order, so the last
        one in the batch counts; the voters' lines start in an order of chance, not the
        request's. A ballot refused for a reason that says nothing about it (the store busy
        or away: the caller sends it again) holds back its voter's later ones (HeldBack),
        so that they are sent again after it, not overtaken.

        A voter token the cached election does not hold (issued a moment ago through
        another process: the ingest consumer's ballots, sent before the feed brought the
        token here) is looked for as ``token_holder_election`` looks for it, before any
        ballot of the batch is recorded: one shared, floored catch-up with the log, then
        the check again. Where that catch-up fails (the store away), those voters' ballots
        alone meet its error (sent again), not a refusal.
        """
        outcomes: list[Receipt | Exception | None] = [None] * len(ballots)
        try:
            election = await self.election(election_id)
            caught_up = election.status is ElectionStatus.DRAFT  # (as _taking_ballots)
            if caught_up:
                election = await self._caught_up(election_id)
        except Exception as error:  # the caller decides what each error means
            return [error] * len(ballots)
        unchecked: Exception | None = None  # why a missed token could not be looked for
        if not caught_up and _token_missed(election, ballots):
            try:
                election = await self._caught_up(election_id)
            except Exception as error:  # the caller decides what each error means
                unchecked = error
        placed, firsts, later = _first_casts(election, ballots, outcomes, unchecked)
        try:
            recorded = await self.writer.append_each(firsts, while_open=election_id)
        except Exception as error:
            recorded = [error] * len(firsts)
        met: list[tuple[int, dict[str, Any]]] = []  # first ballots that met their voter's
        for index, events, result in zip(placed, firsts, recorded, strict=True):
            if isinstance(result, VersionConflict):
                # An earlier ballot of this voter is in the log: replay or revise it.
                met.append((index, cast(Ballot.Cast, events[0]).vote))
            elif isinstance(result, Exception):
                if isinstance(result, ElectionNotOpen):
                    self.forget(election_id)
                outcomes[index] = result
                if _retryable(result):
                    _hold_back(later.pop(ballots[index][0].ballot_key), outcomes)
            else:
                first = events[0]
                outcomes[index] = Receipt(
                    first.originator_id,
                    first.originator_version,
                    result.position,
                    digest=result.digest,
                )

        await self._retries(election, ballots, met, later, outcomes)

        casts: set[int] = set()  # those that took the single-ballot path (it replays them)

        async def in_order(indices: list[int]) -> None:
            for at, index in enumerate(indices):
                casts.add(index)
                voter, content, request_key = ballots[index]
                try:
                    outcomes[index] = await self.cast_ballot(
                        election_id, voter, content, request_key
                    )
                except Exception as error:  # the caller decides what each error means
                    outcomes[index] = error
                    if _retryable(error):
                        _hold_back(indices[at + 1 :], outcomes)
                        return

        # The voters' lines start, and so their entries are made, stamped and appended, in
        # an order of chance, as their first casts are (_first_casts): a revision shares its
        # stream with the voter's first entry, so revisions recorded in the request's order
        # let whoever reads the log and holds the roll the request followed pair each voter
        # with their ballot, by position or by timestamp (the review of revisions in bulk).
        # Each line stays in order, and each outcome in its ballot's place.
        lines = [indices for indices in later.values() if indices]
        _SHUFFLE(lines)
        await asyncio.gather(*(in_order(indices) for indices in lines))
        closed = [
            index
            for index, outcome in enumerate(outcomes)
            if isinstance(outcome, ElectionNotOpen) and index not in casts
        ]
        await self._closed_retries(election, ballots, closed, outcomes)
        assert all(outcome is not None for outcome in outcomes)
        return cast(list[Receipt | Exception], outcomes)

    async def _closed_retries(
        self,
        election: Election,
        ballots: Sequence[tuple[Voter, Mapping[str, Any], str | None]],
        closed: Sequence[int],
        outcomes: list[Receipt | Exception | None],
    ) -> None:
        """Ballots refused as the election closed: is any the retry of one recorded
        before the close? (It is counted: its receipt.) One read for them all, as
        ``replayed`` reads one."""
        asked = [index for index in closed if ballots[index][2] is not None]
        try:
            found = await self._load_ballots(election.id, ballots, asked)
        except Exception as error:  # the caller decides what each error means
            # Cannot be told now: these ballots alone are answered with what stopped the
            # lookup (the store away: send them again), not "closed", which would be untrue
            # of a counted one; their neighbours' receipts stand.
            for index in asked:
                outcomes[index] = error
            return
        for index in asked:
            voter, content, request_key = ballots[index]
            stored = found.get(ballot_id(election.id, voter.ballot_key))
            if stored is None or request_key not in stored.ballot.requests:
                continue
            try:  # (the rules are pinned: the same in every view of the election)
                vote = parse_vote(election.rules, content).to_json()
            except CardinalError:  # invalid: not the retry of a recorded ballot
                continue
            except Exception as error:  # the caller decides what each error means
                outcomes[index] = error
                continue
            outcomes[index] = _replay_of(stored, request_key, vote) or outcomes[index]

    async def _retries(
        self,
        election: Election,
        ballots: Sequence[tuple[Voter, Mapping[str, Any], str | None]],
        met: Sequence[tuple[int, dict[str, Any]]],
        later: dict[str, list[int]],
        outcomes: list[Receipt | Exception | None],
    ) -> None:
        """Answer the retries among first ballots that met their voter's in the log (and
        the voter's next ballots in the batch while they are retries too) from one read of
        those ballots; put every other one first in its voter's line for the single-ballot
        path, which decides it exactly as it decides a ballot sent alone."""
        asked = [index for index, _ in met if ballots[index][2] is not None]
        try:
            found = await self._load_ballots(election.id, ballots, asked)
        except Exception as error:  # the caller decides what each error means
            # As the single-ballot path's own read would: these ballots alone are refused
            # (the store away or busy: sent again), and hold back their voters' later ones.
            found = {}
            for index in asked:
                outcomes[index] = error
                _hold_back(later.pop(ballots[index][0].ballot_key), outcomes)
        for index, first_vote in met:
            if outcomes[index] is not None:
                continue
            key = ballots[index][0].ballot_key
            stored = found.get(ballot_id(election.id, key))
            line = [index, *later[key]]
            answered = 0
            for at in line:
                vote = first_vote
                if at != index:  # a later ballot of the voter: its vote as _cast reads it
                    try:
                        vote = election.accept_vote(ballots[at][0], ballots[at][1]).to_json()
                    except Exception:  # the single-ballot path says what is wrong
                        break
                receipt = _replay_of(stored, ballots[at][2], vote)
                if receipt is None:
                    break
                outcomes[at] = receipt
                answered += 1
            later[key] = line[answered:]

    async def _load_ballots(
        self,
        election_id: UUID,
        ballots: Sequence[tuple[Voter, Mapping[str, Any], str | None]],
        indices: Sequence[int],
    ) -> dict[UUID, RecordedBallot]:
        """The recorded ballots of these ballots' voters, in one read (none if none)."""
        if not indices:
            return {}
        wanted = {ballot_id(election_id, ballots[index][0].ballot_key) for index in indices}
        return await self.writer.load_ballots(sorted(wanted))

    async def withdraw_ballot(
        self, election_id: UUID, voter: Voter, request_key: str | None = None
    ) -> Receipt:
        """Withdraw a voter's ballot, where the election allows changing a cast ballot."""
        election = await self._taking_ballots(election_id)
        election.check_eligible(voter.credential)  # (first: a token not on the roll learns
        existing = await self.writer.load_ballot(ballot_id(election_id, voter.ballot_key))
        try:  # nothing of the election's state)
            election.check_open()
        except ElectionNotOpen as closed:  # a retry of a withdrawal recorded before it?
            earlier = None
            if existing is not None:
                with contextlib.suppress(CardinalError):  # the key was another change's
                    earlier = await self._replay(existing, request_key, None)
            if earlier is None:
                raise closed from None
            return earlier
        if existing is None:
            raise BallotNotFound("this voter has not cast a ballot in this election")
        replayed = await self._replay(existing, request_key, None)
        if replayed is not None:
            return replayed
        if not election.rules.allow_revote:
            raise AlreadyVoted(
                "this election does not allow changing a cast ballot, so it cannot be withdrawn"
            )
        existing.withdraw(request_key)
        return await self._record_revision(existing, election_id, request_key, None)

    async def _taking_ballots(self, election_id: UUID) -> Election:
        """The election, brought up to the log if this process still sees it as a draft:
        another process may have opened it a moment ago, and a voter should not be turned
        away for this process's delay. (A close another process recorded is caught by the
        writer, which records a ballot only while its election is open in the log.)

        The look is the shared, floored catch-up of a missed voter token (``_caught_up``),
        not a read of the election: tokens are issued while it is a draft, so any voter
        could otherwise make every request read the whole electorate again (the hostile
        review: 94 ms a ballot with 100,000 tokens against 5 ms with 5, which told the
        electorate's size, and a stalled process)."""
        election = await self.election(election_id)
        if election.status is ElectionStatus.DRAFT:
            election = await self._caught_up(election_id)
        return election

    async def _existing_ballot(self, ballot_uuid: UUID) -> Ballot:
        existing = await self.writer.load_ballot(ballot_uuid)
        if existing is None:  # pragma: no cover - a conflict means it was recorded
            raise ConcurrentRevision("the ballot changed while it was being recorded; retry")
        return existing

    async def _replay(
        self, existing: Ballot, request_key: str | None, vote: dict[str, Any] | None
    ) -> Receipt | None:
        version = existing.earlier_request(request_key, vote)
        if version is None:
            return None
        recorded = await self.writer.recorded(existing.id, version)
        return Receipt(
            existing.id, version, recorded.position, replayed=True, digest=recorded.digest
        )

    async def _record_revision(
        self,
        ballot: Ballot,
        election_id: UUID,
        request_key: str | None,
        vote: dict[str, Any] | None,
    ) -> Receipt:
        try:
            recorded = await self._guarded(
                self.writer.append(ballot, while_open=election_id), election_id
            )
        except VersionConflict:
            pass
        else:
            return Receipt(ballot.id, ballot.version, recorded.position, digest=recorded.digest)
        # Another change was recorded first. If it was this very request (the same key and
        # ballot, sent twice at once), it is recorded: answer as its retry. The same key
        # with another ballot is refused (422) as a retry's would be.
        if request_key is not None:
            winner = await self.writer.load_ballot(ballot.id)
            if winner is not None:
                replayed = await self._replay(winner, request_key, vote)
                if replayed is not None:
                    return replayed
        raise ConcurrentRevision(
            "another change to this ballot was recorded at the same moment; "
            "read your receipt and try again"
        )

    async def _guarded(self, append: Awaitable[Recorded], election_id: UUID) -> Recorded:
        """A ballot's append; if the log says its election closed first, this process's
        view of the election was stale: drop it, so the next request reads it afresh."""
        try:
            return await append
        except ElectionNotOpen:
            self.forget(election_id)
            raise

    async def _commit(self, aggregate: Aggregate) -> Receipt:
        recorded = await self.writer.append(aggregate)
        return Receipt(aggregate.id, aggregate.version, recorded.position, digest=recorded.digest)


def _token_missed(
    election: Election, ballots: Sequence[tuple[Voter, Mapping[str, Any], str | None]]
) -> bool:
    """Whether a ballot's credential is not in the cached electorate (a token election's:
    in a client election every credential is)."""
    if election.rules.eligibility is not Eligibility.TOKENS:
        return False  # (the bulk path's usual case: no loop over its thousand ballots)
    for voter, _, _ in ballots:
        try:
            election.check_eligible(voter.credential)
        except NotEligible:
            return True
    return False


def _first_casts(
    election: Election,
    ballots: Sequence[tuple[Voter, Mapping[str, Any], str | None]],
    outcomes: list[Receipt | Exception | None],
    unchecked: Exception | None = None,
) -> tuple[list[int], list[list[DomainEventProtocol[UUID]]], dict[str, list[int]]]:
    """Each voter's first ballot of a batch, as its first-cast event (with its index), and
    each voter's later ballots' indices; a ballot the election refuses has its error in
    ``outcomes`` (and a passing one holds back its voter's later ballots). ``unchecked``:
    the error that kept a missed voter token from being looked for in the log, the
    outcome of a ballot whose token the election does not hold (not NotEligible)."""
    accepted: list[tuple[int, dict[str, Any]]] = []
    later: dict[str, list[int]] = {}  # a voter's ballots that wait for their first
    stalled: list[int] = []  # first ballots refused for a passing reason
    for index, (voter, content, _) in enumerate(ballots):
        if voter.ballot_key in later:
            if len(later[voter.ballot_key]) < MAX_BALLOTS_PER_VOTER - 1:
                later[voter.ballot_key].append(index)
            else:  # each later one is a commit and a read of the voter's entries
                outcomes[index] = InvalidBallot(
                    f"this batch holds more than {MAX_BALLOTS_PER_VOTER} ballots of this "
                    "voter; send the rest in a later request, once this one is answered",
                    field="voter_id",
                )
            continue
        later[voter.ballot_key] = []
        try:
            vote = election.accept_vote(voter, content).to_json()
        except Exception as error:
            if unchecked is not None and isinstance(error, NotEligible):
                error = unchecked  # not looked for: said as what stopped the look
            outcomes[index] = error
            if _retryable(error):
                stalled.append(index)
            continue
        accepted.append((index, vote))
    for index in stalled:
        _hold_back(later.pop(ballots[index][0].ballot_key), outcomes)
    # Made, and so stamped and placed in the log, in an order of chance, not the
    # request's: a client listing its voters in a known order (a roll, a file) would
    # otherwise let whoever reads the log pair the roll with the entries, by their positions
    # (review helper-39) or by their timestamps (review helper-75). A voter's later ballots
    # stay in order.
    _SHUFFLE(accepted)
    placed = [index for index, _ in accepted]
    firsts: list[list[DomainEventProtocol[UUID]]] = [
        [Ballot.first_cast(election.id, ballots[index][0].ballot_key, vote, ballots[index][2])]
        for index, vote in accepted
    ]
    return placed, firsts, later


def _replay_of(
    stored: RecordedBallot | None, request_key: str | None, vote: dict[str, Any] | None
) -> Receipt | None:
    """The first receipt of this request if ``stored`` recorded it (the same key and the
    same ballot), as ``VotingApplication._replay`` answers it; else None (not a retry, a
    key used for another ballot: the single-ballot path says which)."""
    if stored is None or request_key is None:
        return None
    try:
        version = stored.ballot.earlier_request(request_key, vote)
    except CardinalError:
        return None
    recorded = stored.recorded.get(version) if version is not None else None
    if version is None or recorded is None:
        return None
    ballot = stored.ballot
    return Receipt(ballot.id, version, recorded.position, replayed=True, digest=recorded.digest)


def _consumed(task: asyncio.Task[None]) -> None:
    """Its waiters read a shared task's error; one left without any logs nothing."""
    if not task.cancelled():
        task.exception()


def _retryable(error: Exception) -> bool:
    """An error that says nothing about the ballot (the store was busy or away, or another
    change raced it): the caller is told to send it again."""
    return not isinstance(error, CardinalError) or isinstance(error, ConcurrentRevision)


def _hold_back(indices: Sequence[int], outcomes: list[Receipt | Exception | None]) -> None:
    """Refuse a voter's later ballots of a batch (HeldBack): their earlier one is to be
    sent again, and recording a later one first would let the retried, older ballot revise
    it. Sent again in order, the last one counts, as it should."""
    for index in indices:
        outcomes[index] = HeldBack(
            "not recorded: an earlier ballot of the same voter in this batch was not "
            "recorded, and this one must follow it; send both again, in order"
        )


CLOSED_BEFORE_RECORDED = (
    "the election closed before this ballot could be recorded; it was not recorded"
)


class DirectWriter:
    """Records through the application's own recorder, in the caller's thread.

    For in-memory use (tests, tools); the service uses infra's group-commit writer.
    """

    def __init__(self, app: VotingApplication) -> None:
        self.app = app

    async def append(self, aggregate: Aggregate, *, while_open: UUID | None = None) -> Recorded:
        return await self.append_events(aggregate.collect_events(), while_open=while_open)

    async def append_events(
        self, events: Sequence[DomainEventProtocol[UUID]], *, while_open: UUID | None = None
    ) -> Recorded:
        if while_open is not None:  # one caller at a time here: read, then save
            election = self._load(while_open, Election)
            if election is not None and election.status is ElectionStatus.CLOSED:
                raise ElectionNotOpen(CLOSED_BEFORE_RECORDED)
        try:
            recordings = self.app.save(*events)
        except IntegrityError:
            raise VersionConflict(events[0].originator_id) from None
        return Recorded(recordings[-1].notification.id)

    async def append_each(
        self,
        appends: Sequence[Sequence[DomainEventProtocol[UUID]]],
        *,
        while_open: UUID | None = None,
    ) -> list[Recorded | Exception]:
        results: list[Recorded | Exception] = []
        for events in appends:
            try:
                results.append(await self.append_events(events, while_open=while_open))
            except (VersionConflict, ElectionNotOpen) as error:
                results.append(error)
        return results

    async def load_election(self, election_id: UUID) -> Election | None:
        return self._load(election_id, Election)

    async def load_ballot(self, ballot_id: UUID) -> Ballot | None:
        return self._load(ballot_id, Ballot)

    async def load_ballots(self, ballot_ids: Sequence[UUID]) -> dict[UUID, RecordedBallot]:
        ballots = {i: b for i in ballot_ids if (b := self._load(i, Ballot)) is not None}
        recorded: dict[UUID, dict[int, Recorded]] = {i: {} for i in ballots}
        start = 1
        while notifications := self.app.recorder.select_notifications(start, 1000):
            for notification in notifications:
                if (versions := recorded.get(cast(UUID, notification.originator_id))) is not None:
                    versions[notification.originator_version] = Recorded(notification.id)
            start = notifications[-1].id + 1
        return {i: RecordedBallot(ballot, recorded[i]) for i, ballot in ballots.items()}

    def _load(self, aggregate_id: UUID, kind: type[A]) -> A | None:
        return self.app.stored(aggregate_id, kind)

    async def recorded(self, aggregate_id: UUID, version: int) -> Recorded:
        start = 1
        while notifications := self.app.recorder.select_notifications(start, 1000):
            for notification in notifications:
                if (
                    notification.originator_id == aggregate_id
                    and notification.originator_version == version
                ):
                    return Recorded(notification.id)
            start = notifications[-1].id + 1
        raise LookupError(f"{aggregate_id} version {version} is not in the log")
