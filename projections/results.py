"""The results document: one function builds what the API serves and what audits check.

``exact`` is the reader's view. Auditors, and everyone once the election has closed or
when it counts in steps of one, see the statistics as the tally holds them now. Everyone
else, while it is open, sees them as last published (``domain.publication``): the document
then says ``stepped`` and reflects the position of that publication.

A document's ``position`` is, for auditors, the tally's: how far the log has been counted,
every election's entries included (they read the whole log anyway). For every other reader
it is where what they see last changed (``visible_position``): the log's position moves
with every ballot in every election, private ones too, and a reader of one election's
results must not be able to time another's ballots by it.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from domain.election import ElectionStatus
from domain.recount import ElectionCount, Recount
from domain.rules import ElectionRules
from domain.tabulation import Tally
from projections.queries import TallySnapshot, tally_snapshot

# What a served document must share with a recount of the log (the rest, such as its
# position and notes, says when and how it was served).
# STV's seats, quota and stages are absent from other methods' documents (read with .get).
COMPARED = (
    "ballots",
    "winners",
    "options",
    "rounds",
    "pairwise",
    "tie",
    "late_ballots",
    "seats",
    "quota",
    "stages",
)


def results_document(
    election_id: UUID,
    snapshot: TallySnapshot,
    rules: ElectionRules,
    *,
    status: ElectionStatus,
    exact: bool,
) -> dict[str, Any]:
    """The results of one election from its tally snapshot.

    ``rules`` stand in while the tally has not projected the election yet; ``status`` is
    where the election stands as the caller knows it (the tally's own close wins).
    """
    rules = snapshot_rules(snapshot, rules)
    if snapshot.closed_at is not None:
        status = ElectionStatus.CLOSED
    elif status is ElectionStatus.CLOSED:
        status = ElectionStatus.OPEN  # the tally has not reached the close yet
    stepped = counts_published(snapshot, rules, exact=exact)
    position = snapshot.position if exact else visible_position(snapshot)
    if stepped:
        tally = Tally.from_counters(rules, snapshot.published_counters or {})
        entries = snapshot.entries // rules.live_results_step * rules.live_results_step
    else:
        tally = Tally.from_counters(rules, snapshot.counters)
        entries = snapshot.entries
    result = tally.result().to_json()
    notes: list[str] = result.pop("notes")
    if stepped and status is not ElectionStatus.DRAFT:  # (a draft has no results to step)
        notes.append(
            f"Preliminary: while the election is open these results advance in steps of "
            f"{rules.live_results_step} ballot entries, so that no single ballot can be "
            f"told from the changes; they reflect position {position}."
        )
    notes.extend(_set_aside_notes(snapshot))
    return {
        "election_id": str(election_id),
        "status": status.value,
        "position": position,
        **result,
        "notes": notes,
        "late_ballots": snapshot.late_ballots,
        "closed_at_position": snapshot.closed_at,
        "live_results_step": rules.live_results_step,
        "stepped": stepped,
        "ballot_entries": entries,
        "set_aside": snapshot.set_aside,
    }


def snapshot_rules(snapshot: TallySnapshot, rules: ElectionRules) -> ElectionRules:
    """The rules the tally pinned for the election (``rules`` until it has projected it)."""
    return rules if snapshot.rules is None else ElectionRules.from_json(snapshot.rules)


def counts_published(snapshot: TallySnapshot, rules: ElectionRules, *, exact: bool) -> bool:
    """Whether a document of this view is stepped: counted from the published counters
    (``domain.publication``), not the tally's. Only while the election is open (as far as
    the tally knows), for readers other than auditors, with steps of more than one: so a
    document reads one set of counters, never both, and its head tells which."""
    return not (exact or snapshot.closed_at is not None or rules.live_results_step == 1)


def visible_position(snapshot: TallySnapshot) -> int:
    """The position of a document for readers other than auditors: where what they see of
    this election last changed, never moved by other elections' entries. Closed: its close,
    or its last late ballot after it (the document counts late ballots). Open: its last
    publication, which with steps of one is its last counted ballot entry (each publishes);
    before any, its Opened entry, and before that its creation (also while the tally has not
    reached the election: ``tally_snapshot`` dates that at the creation).

    A reader who waited (``min_position``) for a receipt of this election therefore gets a
    position at or after it, unless the document is stepped and that ballot not published
    yet."""
    if snapshot.closed_at is not None:
        return max(snapshot.closed_at, snapshot.last_late or 0)
    return snapshot.published_position


def _set_aside_notes(snapshot: TallySnapshot) -> list[str]:
    notes = []
    if snapshot.set_aside:
        notes.append(
            f"Incomplete: {snapshot.set_aside} log entr"
            f"{'y' if snapshot.set_aside == 1 else 'ies'} of this election could not be "
            "applied and were set aside, so this count leaves them out. Operators see them "
            "in GET /api/admin/projections; a rebuild applies them once the cause is fixed."
        )
    if snapshot.set_aside_unattributed:
        notes.append(
            f"Possibly incomplete: {snapshot.set_aside_unattributed} log entr"
            f"{'y' if snapshot.set_aside_unattributed == 1 else 'ies'} could not be read "
            "well enough to tell which election they belong to, and were set aside."
        )
    return notes


def recounted_snapshot(count: ElectionCount, position: int, set_aside: int = 0) -> TallySnapshot:
    """What the tally would hold for this election after a recount up to ``position``."""
    published = count.published_tally() if count.rules.live_results_step > 1 else None
    return TallySnapshot(
        position=position,
        rules=count.rules.to_json(),
        closed_at=count.closed_at,
        late_ballots=count.late,
        counters=count.tally.counters(),
        entries=count.steps.entries,
        published_position=count.steps.position,
        published_counters=None if published is None else published.counters(),
        set_aside=set_aside,
        # (where its last late ballot fell is not kept: at or before ``position``)
        last_late=position if count.late else None,
    )


async def differences_from_recount(
    conn: AsyncConnection[Any], recount: Recount
) -> tuple[list[UUID], int]:
    """The elections whose served results (exact, as auditors see them) differ from the
    recount's, and how many ballots the served results count in all."""
    differing = []
    counted = 0
    for election_id, count in recount.elections.items():
        snapshot = await tally_snapshot(conn, election_id)
        served = results_document(
            election_id, snapshot, count.rules, status=count.status, exact=True
        )
        truth = results_document(
            election_id,
            recounted_snapshot(count, recount.position),
            count.rules,
            status=count.status,
            exact=True,
        )
        counted += served["ballots"]
        if any(served.get(key) != truth.get(key) for key in COMPARED):
            differing.append(election_id)
    return differing, counted
