"""The documents the API answers with, as pydantic models: they exist for the contract
(/openapi.json) and the tests that hold the answers to it; endpoints build plain dicts.

Response models allow properties they do not list (a field added later does not break a
client that validates), and list as required only what every answer carries.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.problems import MAX_ISSUES, TITLE_TYPES


class Document(BaseModel):
    model_config = ConfigDict(extra="allow")


UUID_TEXT: Any = Field(json_schema_extra={"format": "uuid"})


class Option(Document):
    id: str
    label: str


class Election(Document):
    id: str = UUID_TEXT
    title: str
    status: Literal["draft", "open", "closed"]
    options: list[Option]
    method: str
    min_score: int | None
    max_score: int | None
    eligibility: Literal["client", "tokens"]
    allow_revote: bool
    results_visibility: Literal["live", "after_close"]
    tie_break: Literal["report", "declared_order"]
    live_results_step: int
    late_tokens: bool
    public_results: bool
    created_at: str
    version: int
    tokens_issued: int | None = Field(default=None, description="token elections only")
    seats: int | None = Field(default=None, description="stv elections only: seats to fill")
    counting: int = Field(
        default=1,
        description="the edition of the counting rules the election was created under, "
        "pinned so that no upgrade changes a result already served; served only when not 1 "
        "(IRV elections are created under 2: under the report tie-break, every option that "
        "wins for some choice of elimination among options no earlier round separates is a "
        "winner)",
    )
    voter_ids: Literal["exact", "nfc"] = Field(
        default="exact",
        description="how voter ids (client elections) are told apart, pinned at creation so "
        "that no upgrade makes a voter who already cast a new voter; served only when not "
        "exact. Elections created since 2026-12-06 are nfc: a voter id is normalised to "
        "Unicode NFC (José typed precomposed or with a combining accent is one voter), and "
        "one that starts or ends with whitespace or holds a bidi embedding, override or "
        "isolate control (U+202A-U+202E, U+2066-U+2069) is refused. exact: compared code "
        "point for code point, as sent",
    )


class ElectionChange(Election):
    position: int = Field(description="log position of the entry this change recorded")


class Elections(Document):
    elections: list[Election]
    next: str | None = Field(
        description="the next page's URL (a path with its query, as in the Link header), "
        "or null on the last page"
    )


class IssuedTokens(Document):
    election_id: str = UUID_TEXT
    tokens: list[str] = Field(description="shown once; only keys derived from them are kept")
    position: int


class BallotReceipt(Document):
    ballot_id: str = UUID_TEXT
    election_id: str = UUID_TEXT
    status: Literal["cast", "revised", "withdrawn"]
    version: int
    position: int
    hash: str = Field(
        pattern="^[0-9a-f]{64}$",
        description="the receipt: the entry hash of this ballot's log entry (BLAKE2b-256 of "
        "the entry alone, infra/audit/chain.py), not the chain link that /api/audit/events "
        "serves as that position's `hash`. GET /api/audit/receipts/{hash} answers with the "
        "entry's position and its chain link (`chain_hash`), which is the `hash` of the "
        "event at that position; the link is BLAKE2b-256(prev_hash || this hash)",
    )
    replayed: bool


class Round(Document):
    counts: dict[str, int]
    eliminated: list[str]
    exhausted: int


VOTES_PATTERN = r"^[0-9]+\.[0-9]{5}$"
VOTES: Any = Field(
    pattern=VOTES_PATTERN,
    description="votes as an exact decimal text with five places (units of 1/100000)",
)
# An exact decimal text with five places (votes, a surplus, a transfer value, the quota).
Decimal5 = Annotated[str, Field(pattern=VOTES_PATTERN)]


class Stage(Document):
    """One stage of an STV count."""

    action: Literal["first_preferences", "surplus", "exclusion"]
    from_: str | None = Field(
        alias="from", description="whose surplus moved, or who was excluded (null at stage 1)"
    )
    surplus: Decimal5 | None = Field(description="the surplus moved: a decimal text, 5 places")
    transfer_value: Decimal5 | None = Field(
        description="the transfer value of a paper of full value, truncated to 5 places "
        "(a paper received at value v moves at surplus x v / votes, truncated)"
    )
    counts: dict[str, Decimal5] = Field(
        description="votes of every option continuing at the stage (those it elects "
        'included), each an exact decimal text with five places such as "4.90904"'
    )
    elected: list[str]
    excluded: list[str]
    exhausted: str = VOTES


class Tie(Document):
    options: list[str]
    reason: str


class ChainHead(Document):
    position: int
    hash: str
    checkpoint_id: int
    key_id: str
    signature: str


class Results(Document):
    election_id: str = UUID_TEXT
    status: Literal["draft", "open", "closed"]
    position: int
    method: str
    ballots: int
    winners: list[str]
    options: list[dict[str, Any]]
    rounds: list[Round]
    pairwise: dict[str, dict[str, int]] | None
    tie: Tie | None
    notes: list[str]
    late_ballots: int
    closed_at_position: int | None
    live_results_step: int
    stepped: bool
    ballot_entries: int
    set_aside: int
    final_chain_head: ChainHead | None = None
    recounted_from_log: bool | None = None
    seats: int | None = Field(default=None, description="stv only: the seats filled")
    quota: Decimal5 | None = Field(
        default=None, description="stv only: the Droop quota, a decimal text with 5 places"
    )
    stages: list[Stage] | None = Field(
        default=None, description="stv only: every stage of the count, in order"
    )


class LogEntry(Document):
    position: int
    stream_id: str
    version: int
    type: str
    timestamp: str | None
    data: dict[str, Any] | None
    hash: str | None = Field(
        description="the chain link at this position: BLAKE2b-256(prev_hash || entry "
        "hash), where the entry hash is what a ballot's receipt carries as its `hash` "
        "(GET /api/audit/receipts/{receipt hash} answers with this link as `chain_hash`); "
        "null until the entry is sealed"
    )
    prev_hash: str | None = Field(
        description="the previous position's chain link (32 zero bytes before the first)"
    )
    state_hex: str | None = None


class LogPage(Document):
    events: list[LogEntry]
    next_after: int


class ElectionLogPage(LogPage):
    election_id: str = UUID_TEXT


class Checkpoint(Document):
    id: int
    position: int
    head_hash: str
    key_id: str
    signature: str
    created_at: str
    reason: str | None = None


class Checkpoints(Document):
    checkpoints: list[Checkpoint]
    next_after: int


class PublicKey(Document):
    algorithm: str
    public_key: str
    key_id: str


class ReceiptLookup(Document):
    receipt: str = Field(
        description="the receipt looked up: a ballot receipt's `hash`, an entry hash"
    )
    position: int = Field(description="the entry's position in the log")
    chain_hash: str = Field(
        description="the chain link at that position: the `hash` /api/audit/events serves "
        "for it, BLAKE2b-256(prev_hash || receipt)"
    )
    checkpoint: Checkpoint | None


class Rebuild(Document):
    version: int
    position: int
    head: int
    events_per_second: float
    eta_seconds: float | None
    started_at: str | None


class ProjectionStatus(Document):
    name: str
    version: int
    state: str
    position: int
    head: int
    lag: int
    dead_lettered: int = Field(
        description="pages from the relay this projection refused (poison), each dead-lettered "
        "whole with its reason"
    )
    unsigned: int = Field(
        description="messages this projection refused unread for their signature (not signed "
        "by this stack's relay: an old relay's, another stack's, forgeries), counted by its "
        "worker in whichever process it runs and written at most once a minute, so up to a "
        "minute late; at most 10 a minute of them are dead-lettered, as records of their "
        "headers, size and first 1 KiB"
    )
    stale: int = Field(
        description="the relay's pages of another store (the one this store was restored or "
        "failed over from) this projection refused, not applied; written at most once a "
        "minute by its worker, so up to a minute late"
    )
    set_aside: int
    updated_at: str | None
    detail: str | None
    rebuild: Rebuild | None


class Projections(Document):
    projections: list[ProjectionStatus]


class RebuildStarted(Document):
    projection: str
    state: Literal["rebuilding"]
    status: str


class Health(Document):
    """The process answers; ``degraded`` when a dependency it can do without is away."""

    status: Literal["ok", "degraded"]
    checks: dict[str, str] = Field(
        default_factory=dict,
        description="store: as the writer last found it; broker: where one is configured",
    )


class Ready(Document):
    status: Literal["ready"]
    checks: dict[str, str]


class Tokens(Document):
    """A sign-in's or a refresh's answer (RFC 6749 section 5.1)."""

    access_token: str
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds the access token is valid")
    refresh_token: str = Field(description="use once with POST /api/auth/refresh")


class Issue(BaseModel):
    """One of the things a 422 "Invalid request" found wrong."""

    model_config = ConfigDict(extra="allow")

    field: str = Field(
        description="where, as sent (`ballots[3].choice`, `scores.a`); empty for the body "
        "as a whole"
    )
    message: str = Field(description="what is wrong with it")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        default="about:blank",
        description="what kind of problem this is, stable (tell problems apart by it, not "
        "by the title): "
        + "; ".join(f"{uri} ({title})" for title, uri in TITLE_TYPES.items())
        + "; about:blank only for a plain HTTP refusal whose title is the status phrase",
    )
    title: str
    status: int = Field(ge=100, le=599)
    detail: str
    field: str | None = Field(default=None, description="the one field at fault, if any")
    errors: list[Issue] | None = Field(
        default=None,
        description=f"a 422 Invalid request's issues, in order, the first {MAX_ISSUES} at "
        "most (`field` and `detail` name the first; `detail` says how many more there are); "
        f"a bulk answer lists {MAX_ISSUES} in all over its items, each refused ballot its "
        "first at least",
    )
    more_errors: int | None = Field(
        default=None,
        ge=1,
        description="a 422 Invalid request with more issues than `errors` lists (over "
        f"{MAX_ISSUES}, or on the bulk path past the request's first {MAX_ISSUES}): how many "
        "it leaves out",
    )
    retry_after: int | None = Field(
        default=None,
        ge=1,
        description="a 503 item of a bulk answer (the ballot was not recorded: send it "
        "again): seconds to wait first, what the Retry-After of the same refusal of a "
        "single ballot says (the answer's header, a 200, cannot say it per item); a ballot "
        "held back behind its voter's earlier one waits as long as that one",
    )


class BatchResults(Document):
    results: list[BallotReceipt | Problem] = Field(
        description="in the order of the ballots sent: each one's receipt, or its problem "
        "(with its integer status; a 503, not recorded and to be sent again, with "
        "retry_after in seconds)"
    )
