"""The verifier: checks a log, entry by entry in position order, against its chain, its
signed checkpoints and the results served. Pure: it reads nothing itself (its entries come
from ``infra.audit.sources``, out of the database or an export file).

- each entry's hash is recomputed and linked to the one before; an entry whose content,
  stream, version or type changed, an entry removed, or two entries swapped break the
  chain at an exact position;
- each checkpoint's signature is checked with the public key, and the head it signs must
  be the chain's hash at its position;
- every election is replayed with the domain's own recount (the law: a ballot counts iff
  it precedes its election's Closed entry) and, at the position the served results reflect,
  compared with them.

The first discrepancy stops the run and is reported with its position.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson

from domain.recount import Recount
from infra.audit.chain import (
    GENESIS,
    chain_hash,
    entry_hash,
    filed_election,
    key_id,
    signature_valid,
)
from projections.results import COMPARED


class Discrepancy(Exception):
    """The first thing that does not check out, and where."""

    def __init__(self, position: int | None, what: str) -> None:
        super().__init__(f"position {position}: {what}" if position is not None else what)
        self.position = position
        self.what = what

    def __reduce__(self) -> tuple[type[Discrepancy], tuple[int | None, str]]:
        return (type(self), (self.position, self.what))  # it crosses process boundaries


# What an auditor brings to pin a run (infra.audit.pinned), as the summary counts them.
PREVIOUS_CHECKPOINT = "--previous: their checkpoints on the chain"
PREVIOUS_HEAD = "--previous: their signed heads on the chain"
FINAL_HEAD = "--served: final chain heads on the chain"


class UnknownElection(Discrepancy):
    """--election names an election the log does not hold: nothing of it was verified."""


class FileChanged(Discrepancy):
    """An export's own signed head does not verify: something in the file changed, but
    not where (a finding that says where, at the same position, says more)."""


@dataclass(frozen=True, slots=True)
class Entry:
    position: int
    stream: bytes  # the stream id's 16 bytes; empty: a chain link whose entry is missing
    version: int
    kind: str
    state: bytes
    stored_hash: bytes | None
    # The chain row's other columns, where read from the database: the entry digest a
    # receipt is looked up by, and the election (its 16 bytes) the per-election audit read
    # files it under.
    filed: tuple[bytes, bytes | None] | None = None

    @property
    def stream_id(self) -> UUID | None:
        return UUID(bytes=self.stream) if self.stream else None


@dataclass(frozen=True)
class Checkpoint:
    id: int
    position: int
    head: bytes
    key_id: str
    signature: bytes
    # where it comes from, when not the log's own checkpoints: an earlier export, or the
    # final chain head published with saved results (such a head must still be on the chain)
    origin: str = ""
    # an export's own signed head (format 2): the SHA-256 of the file before it, which its
    # signature covers too (chain.py)
    file_hash: bytes | None = None
    # what an auditor brought it as (PINS), for the summary's count; "": the source's own
    pin: str = ""

    @classmethod
    def of_export(
        cls,
        line: dict[str, Any],
        origin: str = "",
        file_hash: bytes | None = None,
        pin: str = "",
    ) -> Checkpoint:
        """A checkpoint as an export writes it (an export's own head has no id: 0, whatever
        its line says, for nothing signs an id there and an id makes it the sealer's)."""
        return cls(
            0 if line.get("kind") == "export_head" else int(line.get("id", 0)),
            int(line["position"]),
            bytes.fromhex(line["head_hash"]),
            str(line["key_id"]),
            bytes.fromhex(line["signature"]),
            origin,
            file_hash,
            pin,
        )

    @property
    def by_sealer(self) -> bool:
        """Whether the sealer signed it (a row of audit_checkpoints: it has an id), which
        signs only what it has linked. An export's own signed head (id 0) does not say so:
        a format-1 head (no file hash) was signed at the last entry exported, linked or not
        (merge review: taken for the sealer's, such an export's unsealed tail was told its
        links were deleted)."""
        return self.id != 0

    @property
    def name(self) -> str:
        if self.id == 0 and self.origin:
            return self.origin
        return f"checkpoint {self.id}" + (f" (from {self.origin})" if self.origin else "")


@dataclass
class Report:
    entries: int = 0
    sealed: int = 0
    unsealed: int = 0
    checkpoints: int = 0
    results: int = 0
    elections: int = 0
    head: int = 0
    set_aside: int = 0  # entries the replay could not count (reported in the notes)
    keys: dict[str, int] = field(default_factory=dict)  # signatures checked, by key id
    compared: dict[UUID, int] = field(default_factory=dict)  # results compared, by election
    notes: list[str] = field(default_factory=list)
    # pins checked on the chain, by what they are (PREVIOUS_CHECKPOINT ...)
    pins: dict[str, int] = field(default_factory=dict)
    served_pinned: int = 0  # saved results documents (--served) compared
    # an export's: when it was written (its header says), and its signed head
    exported_at: str | None = None
    export_head: tuple[int, bytes] | None = None


class Verifier:
    """Consumes entries in position order; raises Discrepancy at the first problem.

    It checks the chain (``chain``) or replays the elections (``replay``) or both; the
    two halves are independent, so a run can do them in two processes, on two cores.
    """

    def __init__(
        self,
        public_keys: dict[str, bytes],
        checkpoints: list[Checkpoint],
        served: dict[int, list[dict[str, Any]]],
        *,
        election: UUID | None = None,
        validate: bool = False,
        chain: bool = True,
        replay: bool = True,
        listed_keys: dict[str, bytes | None] | None = None,
        listed_in: str = "",
    ) -> None:
        self.chain = chain
        self.replay = replay
        if not chain:
            checkpoints = []
        if not replay:
            served = {}
        self.public_keys = public_keys
        # public keys the source lists for key ids (an export's header, the store's
        # audit_keys): named in a finding as a hint, never trusted
        self.listed_keys = listed_keys or {}
        self.listed_in = listed_in
        # The positions the source's own checkpoints sign (the store's, or the export's
        # lines): a close must have one of them. An earlier export's or saved results'
        # heads are pins that must still be on the chain; they never stand in for a
        # checkpoint the source lost (more evidence never turns a failing run into a pass).
        self._own_signed = {c.position for c in checkpoints if not c.origin}
        # the same checkpoint named twice (in the log, and in an earlier export) once
        unique = {(c.id, c.position, c.head, c.signature): c for c in reversed(checkpoints)}
        # what was brought as a pin, checked with the one it names twice
        self._pins: dict[tuple[int, int, bytes, bytes], list[str]] = {}
        for c in checkpoints:
            if c.pin:
                self._pins.setdefault((c.id, c.position, c.head, c.signature), []).append(c.pin)
        self.checkpoints = sorted(unique.values(), key=lambda c: (c.position, c.id))
        self.served = dict(sorted(served.items()))
        self.election = election
        self.recount = Recount(validate=validate)
        self.report = Report()
        self._chain = GENESIS
        self._unsealed_from: int | None = None
        self._sealed_closes: list[int] = []
        self._unsealed_closes: list[tuple[int, UUID | None]] = []
        self._signed = (0, 0)  # the last signed checkpoint checked: its position, entries
        # the last checkpoint the sealer signed (its own, or one pinned), not an export's
        # head: past an unsealed entry, it shows the entry's link was there, and deleted
        self._sealer_signed: Checkpoint | None = None
        self._compared: set[UUID] = set()
        self._starts: dict[bytes, bytes] = {}  # an election's bytes: how its ballots begin
        self._served_upto = max(served, default=0)
        # elections results were served for before the log created them: where first
        self._uncreated: dict[UUID, int] = {}
        self._next_checkpoint = 0
        self._due = self._next_due()
        for checkpoint in self.checkpoints:
            self._check_signature(checkpoint)

    def feed(self, entry: Entry) -> None:
        """Check one entry (both halves, or whichever this verifier does)."""
        self._in_order(entry.position)
        if self.chain:
            self._linked(entry)
        if self.replay:
            # A ballot's stream only needs to be told apart from the others: its bytes do,
            # and building a UUID for each of a million ballots costs a fifth of the run.
            stream = entry.stream if entry.kind[0] == "B" else UUID(bytes=entry.stream)
            self._counted(entry.position, stream, entry.kind, entry.state)

    def link(self, entry: Entry) -> None:
        """The chain half: recompute this entry's link."""
        self._in_order(entry.position)
        self._linked(entry)

    def _linked(self, entry: Entry) -> None:
        self._advance(entry.position)
        if not entry.stream:
            raise Discrepancy(
                entry.position,
                "the chain seals an entry here, but the log no longer holds it (deleted)",
            )
        self._link(entry)
        self.report.entries += 1
        self.report.head = entry.position

    def count(
        self, position: int, stream: Hashable, kind: str, state: bytes | dict[str, Any]
    ) -> None:
        """The replay half: count this entry by the law (an election's stream: its UUID)."""
        self._in_order(position)
        self._counted(position, stream, kind, state)

    def _counted(
        self, position: int, stream: Hashable, kind: str, state: bytes | dict[str, Any]
    ) -> None:
        self._advance(position)
        try:
            data = orjson.loads(state) if isinstance(state, bytes) else state
            if not isinstance(data, dict):
                raise ValueError("its state is not a JSON object")
        except ValueError as error:
            self.recount.position = position
            self.recount.put_aside(position, None, f"unreadable: {error}")
        else:
            self.recount.record(position, stream, kind, data)
        if self._uncreated and kind == "ElectionCreated" and stream in self._uncreated:
            served_at = self._uncreated[stream]  # type: ignore[index]
            raise Discrepancy(
                served_at,
                f"election {stream}: results are served as of position {served_at:,}, before "
                f"the election was created (at position {position:,})",
            )
        self.report.entries += 1
        self.report.head = position

    def _in_order(self, position: int) -> None:
        """Entries come in position order (the log's; an export's lines were moved or
        copied)."""
        if position == self.report.head and position:
            raise Discrepancy(
                position,
                f"entry {position:,} appears twice, one right after the other (an export's "
                "line was copied)",
            )
        if position < self.report.head:
            raise Discrepancy(
                position,
                f"entry {position:,} comes after {self.report.head:,}: entries are out of "
                "order (an export's lines were moved, or one was copied)",
            )

    def _advance(self, position: int) -> None:
        if position > self._due:
            self._settle_before(position)
            self._due = self._next_due()

    def _link(self, entry: Entry) -> None:
        digest = entry_hash(entry.position, entry.stream, entry.version, entry.kind, entry.state)
        linked = chain_hash(self._chain, digest)
        if entry.stored_hash is None:
            self._unsealed_from = self._unsealed_from or entry.position
            self.report.unsealed += 1
            if entry.kind == "ElectionClosed":
                self._unsealed_closes.append((entry.position, entry.stream_id))
        else:
            if self._unsealed_from is not None:
                raise Discrepancy(
                    entry.position,
                    f"sealed after the entry at position {self._unsealed_from}, which has "
                    "no link in the chain: that link was deleted",
                )
            if entry.stored_hash != linked:
                raise Discrepancy(
                    entry.position,
                    "the entry is not what the chain sealed here: its content, stream, "
                    "version or type was changed, or entries were reordered, inserted or "
                    "deleted before it",
                )
            if entry.filed is not None:
                self._check_filing(entry, digest, entry.filed)
            self.report.sealed += 1
            if entry.kind == "ElectionClosed":
                self._sealed_closes.append(entry.position)
        self._chain = linked

    def _check_filing(self, entry: Entry, digest: bytes, filed: tuple[bytes, bytes | None]) -> None:
        """The chain row's receipt digest and election must be the entry's: otherwise a
        voter's receipt is not found, or the election's audit read leaves the entry out."""
        receipt, election = filed
        if receipt != digest:
            raise Discrepancy(
                entry.position,
                "the chain's receipt digest for this entry is not the entry's own: a voter "
                "holding its receipt would be told it is not in the log (altered)",
            )
        if entry.kind.startswith("Election"):
            if election == entry.stream:
                return
        elif entry.kind.startswith("Ballot"):
            if election is not None and self._names(entry.state, election):
                return  # (the common case, without parsing the entry)
        elif election is None:
            return
        named = filed_election(entry.kind, entry.stream, entry.state)
        stored = None if election is None else UUID(bytes=election)
        if stored != named:
            raise Discrepancy(
                entry.position,
                f"the chain files this entry under election {stored}, but it belongs to "
                f"{named}: the election's audit read would leave it out (altered)",
            )

    def _names(self, state: bytes, election: bytes) -> bool:
        """Whether a ballot's state names this election as the log writes it: canonical
        JSON, whose first key is election_id (anything else takes the slow path)."""
        start = self._starts.get(election)
        if start is None:
            text = str(UUID(bytes=election)).encode()
            start = self._starts[election] = b'{"election_id":"%s"' % text
        return state.startswith(start)

    def finish(self) -> Report:
        self._settle_before(None)
        for aside in self.recount.set_aside:
            where = f"election {aside.election_id}" if aside.election_id else "no legible election"
            if self.recount.validate:  # --strict: an entry the law cannot count is a finding
                raise Discrepancy(
                    aside.position, f"{where}: the entry cannot be replayed: {aside.reason}"
                )
            self.report.notes.append(
                f"the replay set aside position {aside.position} ({where}): {aside.reason}"
            )
        self.report.set_aside = len(self.recount.set_aside)
        # The sealer signs the head at every Closed entry as it seals it (one transaction):
        # a sealed close with no checkpoint there lost it.
        for position in self._sealed_closes:
            if position not in self._own_signed:
                raise Discrepancy(
                    position,
                    "an election closed here, but the signed checkpoint of the chain head "
                    "at its close is missing (deleted?)",
                )
        # The sealer links entries in order and signs only what it linked: a checkpoint it
        # signed at or past an entry with no link shows that link was there, and deleted
        # (not "not sealed yet": it would never come).
        signed = self._sealer_signed
        if (
            self._unsealed_from is not None
            and signed is not None
            and signed.position >= self._unsealed_from
        ):
            raise Discrepancy(
                self._unsealed_from,
                f"the chain has no link here (nor for the {self.report.unsealed:,} entries "
                f"from here on), but {signed.name} signs the chain at position "
                f"{signed.position:,}, past it: the sealer had linked these entries, and "
                "their links were deleted",
            )
        # A close not sealed yet has no signed head: its final results are not attested,
        # and in an export, nothing would stop its tail from being rewritten.
        for position, election in self._unsealed_closes:
            raise Discrepancy(
                position,
                f"election {election} closed here, but the close is not sealed and signed "
                "yet, so its final results are not attested (the sealer signs a close "
                "within seconds): verify again, or export again, once it is. If it stays "
                f"so, the entries from position {self._unsealed_from:,} on never get their "
                "links: the sealer is stopped, or it halted because links were deleted "
                "(its log says which)",
            )
        if self.chain and self.report.entries > self._signed[1]:
            signed_at, signed_entries = self._signed
            self.report.notes.append(
                f"{self.report.entries - signed_entries:,} newest entries come after the last "
                f"signed checkpoint (position {signed_at:,})"
                + (
                    f", {self.report.unsealed:,} of them not sealed yet"
                    if self.report.unsealed
                    else ""
                )
                + ": they agree with the results, but no signature attests them yet"
            )
        if self.replay:
            if self._uncreated:
                election_id, served_at = min(self._uncreated.items(), key=lambda u: u[1])
                raise Discrepancy(
                    served_at, f"results are served for an unknown election {election_id}"
                )
            if self.election is not None and self.election not in self.recount.elections:
                raise UnknownElection(None, f"the log holds no election {self.election}")
            self.report.elections = 1 if self.election is not None else len(self.recount.elections)
            self._every_election_served()
        return self.report

    def _every_election_served(self) -> None:
        """Every election the tally had reached must have results served: a read model
        that lost an election's rows would otherwise check nothing for it."""
        if not self._served_upto:
            self.report.notes.append("no served results to compare (the tally holds none)")
            return
        for election_id, count in self.recount.elections.items():
            if self.election is not None and election_id != self.election:
                continue
            if count.steps.created_at <= self._served_upto and election_id not in self._compared:
                raise Discrepancy(
                    count.steps.created_at,
                    f"election {election_id} was created here, but no results are served "
                    "for it (its rows are missing from the tally)",
                )

    def _next_due(self) -> int:
        """The position past which a checkpoint or served result waits to be checked."""
        due = (
            [self.checkpoints[self._next_checkpoint].position]
            if self._next_checkpoint < len(self.checkpoints)
            else []
        )
        due.extend(self.served)
        return min(due, default=2**62)

    def _settle_before(self, position: int | None) -> None:
        """Check the checkpoints and served results that lie before ``position``."""
        while self._next_checkpoint < len(self.checkpoints):
            checkpoint = self.checkpoints[self._next_checkpoint]
            if position is not None and checkpoint.position >= position:
                break
            self._check_head(checkpoint)
            self._next_checkpoint += 1
        for served_at in list(self.served):
            if position is not None and served_at >= position:
                break
            for result in self.served.pop(served_at):
                # Before an entry at ``position``, the log reaches past the document (one
                # dated in a gap of the positions included); at the end, it may not.
                self._compare(served_at, result, reached=position is not None)

    def _check_signature(self, checkpoint: Checkpoint) -> None:
        key = self.public_keys.get(checkpoint.key_id)
        if key is None:
            listed = self.listed_keys.get(checkpoint.key_id)
            raise Discrepancy(
                checkpoint.position,
                f"{checkpoint.name} is signed by key {checkpoint.key_id}, which this run "
                f"does not know (it trusts {_ids(self.public_keys)}): it may be signed by an "
                "earlier key of the deployment, from before the audit key was rotated (give "
                "that key too, with another --public-key), or be forged"
                + (
                    f". {self.listed_in} lists key {checkpoint.key_id} as {listed.hex()}: "
                    "give it only once the deployment confirms it is its own"
                    if listed is not None and key_id(listed) == checkpoint.key_id
                    else ""
                ),
            )
        if not signature_valid(
            key, checkpoint.position, checkpoint.head, checkpoint.signature, checkpoint.file_hash
        ):
            if checkpoint.file_hash is not None:
                raise FileChanged(
                    checkpoint.position,
                    f"{checkpoint.name} does not verify: the file was changed after it was "
                    "exported (a line edited, dropped, added or moved), or the signature is "
                    "forged",
                )
            raise Discrepancy(
                checkpoint.position,
                f"{checkpoint.name}: the signature does not verify (forged or altered)",
            )

    def _check_head(self, checkpoint: Checkpoint) -> None:
        if checkpoint.position > self.report.head:
            raise Discrepancy(
                checkpoint.position,
                f"{checkpoint.name} signs a position beyond the log's last entry "
                f"({self.report.head:,}): the log is cut short",
            )
        if self.report.head != checkpoint.position or checkpoint.head != self._chain:
            raise Discrepancy(
                checkpoint.position,
                f"{checkpoint.name} signs head {checkpoint.head.hex()[:16]}..., but the "
                "chain there is different (the checkpoint is forged, or the log changed)",
            )
        self.report.checkpoints += 1
        self.report.keys[checkpoint.key_id] = self.report.keys.get(checkpoint.key_id, 0) + 1
        key = (checkpoint.id, checkpoint.position, checkpoint.head, checkpoint.signature)
        for pin in self._pins.pop(key, ()):
            self.report.pins[pin] = self.report.pins.get(pin, 0) + 1
        if checkpoint.position >= self._signed[0]:
            self._signed = (checkpoint.position, self.report.entries)
        if checkpoint.by_sealer and (
            self._sealer_signed is None or checkpoint.position > self._sealer_signed.position
        ):
            self._sealer_signed = checkpoint

    @property
    def signed_upto(self) -> int:
        """The last position a signature checked so far covers."""
        return self._signed[0]

    def attest(self, checkpoint: Checkpoint) -> None:
        """Check a signed head given after the entries (an export's own, at its end)."""
        self._check_signature(checkpoint)
        self._check_head(checkpoint)

    def _compare(self, position: int, served: dict[str, Any], *, reached: bool) -> None:
        """One served document against the replay as of its position (``reached``: an
        entry after that position has arrived, so the log goes on past it)."""
        election_id = UUID(served["election_id"])
        if self.election is not None and election_id != self.election:
            return
        count = self.recount.elections.get(election_id)
        if count is None:
            # Created later (said when its creation comes), or never (said at the end).
            self._uncreated.setdefault(election_id, position)
            return
        if not reached and position > self.report.head:
            raise Discrepancy(
                position,
                f"election {election_id}: results are served as of position {position:,}, "
                f"beyond the last entry here ({self.report.head:,}): the log is cut short, or "
                "the results are newer than it (check them against a newer export), or they "
                "are served by a read model that ran ahead of the log after the store was "
                "restored from a backup (`cardinal projections` shows it `ahead`: rebuild the "
                "projections, `cardinal rebuild`)",
            )
        self._compared.add(election_id)
        stepped = bool(served.get("stepped"))
        steps = count.steps
        if (
            stepped
            and position != steps.position
            and (steps.published_at or position != steps.created_at)
        ):
            # (Served stepped, a document is the publication readers saw: its position is
            # that publication's; before any, the Opened entry's, where the status it shows
            # changed, or the creation's before that (and the creation's too after it, as
            # releases before 2026-12-07 dated it); ``?at=`` between two publications
            # included. An exact count dated elsewhere is not.)
            raise Discrepancy(
                position,
                f"election {election_id}: results served stepped (as published) are dated "
                f"at the publication they show, but position {position:,} is not one: the "
                f"last publication at or before it is at position {steps.position:,}"
                + (
                    ""
                    if steps.published_at
                    else (
                        f" (the election's Opened entry: none yet; or its creation, at "
                        f"{steps.created_at:,})"
                        if steps.opened_at
                        else " (the election's creation: none yet)"
                    )
                ),
            )
        try:
            counted = count.results(position)
        except (ValueError, TypeError) as refused:  # a vote its election's tally cannot hold
            # Never a traceback: the chain half names an altered entry at its own (earlier)
            # position, and the earlier finding is the one reported.
            raise Discrepancy(
                position,
                f"election {election_id}: the replay cannot count its ballots as of position "
                f"{position:,}: {refused}. An entry before it was altered, or written around "
                "the application: `cardinal audit verify --strict` names it",
            ) from None
        replayed = orjson.loads(orjson.dumps(counted))
        # when it closed, and how many ballot entries it counted: all of them (the exact
        # count), or as many as its publication did (stepped: rounded down to whole steps)
        replayed["closed_at_position"] = count.closed_at
        replayed["ballot_entries"] = (
            count.steps.published_entries if stepped else count.steps.entries
        )
        compared = ("closed_at_position", *COMPARED, "ballot_entries")
        for key in compared:
            if replayed.get(key) != served.get(key):
                aside = served.get("set_aside")
                raise Discrepancy(
                    position,
                    f"election {election_id}: the served results differ from the replay in "
                    f"{key!r}: served {_short(served.get(key))}, "
                    f"replayed {_short(replayed.get(key))}"
                    + (
                        f" (the tally set aside {aside} of its entries; if a version before "
                        "this one could not count them, `cardinal rebuild tally` counts them "
                        "in the database, and an export written before the rebuild keeps "
                        "what was served: keep it as the record, and verify a new export)"
                        if aside
                        else ""
                    ),
                )
        self.report.results += 1
        self.report.compared[election_id] = self.report.compared.get(election_id, 0) + 1


def _ids(keys: dict[str, bytes]) -> str:
    if not keys:
        return "no key"
    return ("key " if len(keys) == 1 else "keys ") + ", ".join(sorted(keys))


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def set_aside_notes(records: list[dict[str, Any]]) -> list[str]:
    return [
        f"projection {r['projection']} set aside position {r['position']} ({r['type']}, "
        f"election {r['election_id'] or 'unknown'}): {r['reason']}; the results it serves "
        "for that election leave the entry out, and say so"
        for r in records
    ]
