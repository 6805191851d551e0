"""Request bodies, validated by pydantic before anything reaches the domain.

The models check shapes and types (strictly: "2" is not a score); the domain checks what
the election's rules say. Adapters are built once, at import.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from domain.election import MAX_TOKENS_PER_ISSUE
from domain.errors import InvalidRequest
from domain.rules import MAX_LIVE_RESULTS_STEP, MAX_OPTIONS, plain_text


def _printable(value: str) -> str:
    """Control characters and lone surrogates are refused in every text field (pydantic
    names the field; the domain's own check words the message)."""
    try:
        return plain_text(value, "text")
    except InvalidRequest as refused:
        raise ValueError(refused.detail.removeprefix("text ")) from None


Printable = AfterValidator(_printable)
Text = Annotated[str, StringConstraints(max_length=1000), Printable]
OptionId = Annotated[str, StringConstraints(min_length=1, max_length=64), Printable]
VoterId = Annotated[str, StringConstraints(min_length=1, max_length=256), Printable]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=255), Printable]
MAX_BATCH = 1000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OptionIn(Strict):
    id: OptionId
    label: Text


class ElectionIn(Strict):
    title: Text
    options: Annotated[list[OptionIn], Field(max_length=MAX_OPTIONS + 1)]
    method: Text
    min_score: int | None = None
    max_score: int | None = None
    eligibility: Text = "client"
    allow_revote: bool = True
    results_visibility: Text = "live"
    tie_break: Text = "report"
    live_results_step: Annotated[int, Field(ge=1, le=MAX_LIVE_RESULTS_STEP)] = 10
    late_tokens: bool = False


class TokensIn(Strict):
    count: Annotated[int, Field(ge=1, le=MAX_TOKENS_PER_ISSUE)]


class BallotIn(Strict):
    voter_id: VoterId | None = None
    choice: OptionId | None = None
    approve: Annotated[list[OptionId], Field(max_length=MAX_OPTIONS)] | None = None
    scores: Annotated[dict[OptionId, int], Field(max_length=MAX_OPTIONS)] | None = None
    ranking: Annotated[list[OptionId], Field(max_length=MAX_OPTIONS)] | None = None

    def content(self) -> dict[str, object]:
        return self.model_dump(exclude={"voter_id"}, exclude_none=True)


class BatchBallotIn(BallotIn):
    """One ballot of a batch: a ballot as POST .../ballots takes it, with its own key."""

    idempotency_key: IdempotencyKey | None = None

    def content(self) -> dict[str, object]:
        return self.model_dump(exclude={"voter_id", "idempotency_key"}, exclude_none=True)


class BatchIn(Strict):
    """The bulk path's body; each ballot is validated on its own (a bad one is refused
    alone), so only the envelope is checked here."""

    ballots: Annotated[list[Any], Field(min_length=1, max_length=MAX_BATCH)]


class WithdrawalIn(Strict):
    voter_id: VoterId | None = None
