"""Request bodies, validated by pydantic before anything reaches the domain.

The models check shapes and types (strictly: "2" is not a score); the domain checks what
the election's rules say. Adapters are built once, at import.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticKnownError

from domain.election import MAX_TOKENS_PER_ISSUE
from domain.errors import InvalidRequest
from domain.rules import (
    MAX_LABEL,
    MAX_LIVE_RESULTS_STEP,
    MAX_OPTIONS,
    MAX_SCORE_MAGNITUDE,
    MAX_TITLE,
    OPTION_ID,
    Eligibility,
    Method,
    ResultsVisibility,
    TieBreak,
    plain_text,
)


def _printable(value: str) -> str:
    """Control characters and lone surrogates are refused in every text field (pydantic
    names the field; the domain's own check words the message)."""
    try:
        return plain_text(value, "text")
    except InvalidRequest as refused:
        raise ValueError(refused.detail.removeprefix("text ")) from None


Printable = AfterValidator(_printable)
Text = Annotated[str, StringConstraints(max_length=1000), Printable]
OptionId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64),
    Printable,
    Field(json_schema_extra={"pattern": OPTION_ID.pattern}),
]
# What the contract promises beyond the runtime checks here: the domain checks these too,
# with messages that say more than "should match pattern". Control characters and lone
# surrogates are refused everywhere; a title or label needs a visible character.
PLAIN = "^[^\\u0000-\\u001f\\u007f]*$"
VISIBLE = "^[^\\u0000-\\u001f\\u007f]*[^\\s\\u0000-\\u001f\\u007f][^\\u0000-\\u001f\\u007f]*$"
VoterId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256),
    Printable,
    Field(json_schema_extra={"pattern": PLAIN}),
]
# An idempotency key, as the Idempotency-Key header or as a ballot's idempotency_key in a
# body: one rule, in the same words. It is the rule a ballot's key always had (no control
# character, U+0000-U+001F or U+007F-U+009F, and no lone surrogate), not the header's
# narrower str.isprintable of before: keys recorded in bulk or queued before the two were
# made one (a no-break space, an emoji with a joiner) are still answered as replays, and
# every header key taken before is taken still.
MAX_IDEMPOTENCY_KEY = 255
KEY_RULE = (
    f"must be 1-{MAX_IDEMPOTENCY_KEY} characters, with no control character "
    "(U+0000-U+001F, U+007F-U+009F) and no lone surrogate"
)
KEY_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"


def valid_key(key: str) -> bool:
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        return False
    try:
        plain_text(key, "key")
    except InvalidRequest:
        return False
    return True


def _key(value: str) -> str:
    if not valid_key(value):
        raise ValueError(KEY_RULE)
    return value


IdempotencyKey = Annotated[
    str,
    AfterValidator(_key),
    Field(
        json_schema_extra={
            "minLength": 1,
            "maxLength": MAX_IDEMPOTENCY_KEY,
            "pattern": KEY_PATTERN,
            "description": f"as the Idempotency-Key header: 1-{MAX_IDEMPOTENCY_KEY} "
            "characters, no control character and no lone surrogate; a retry with the same "
            "key gets the first answer (replayed: true)",
        }
    ),
]
MAX_BATCH = 1000
# The largest body of many ballots (the bulk path's, and a multi-ballot message's).
BATCH_BODY_BYTES = 4 * 1024 * 1024


def _choice(kind: type[StrEnum]) -> Any:
    return Field(json_schema_extra={"enum": [member.value for member in kind]})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# A title's and a label's length is bounded here by its real limit, so that a text far too
# long costs nothing past it and is refused with the limit the domain and the contract say
# (bounded at Text's 1000, a 5,000-character label was told "at most 1000 characters" and,
# cut to 1000, "at most 200").
Label = Annotated[
    str,
    StringConstraints(max_length=MAX_LABEL),
    Printable,
    Field(json_schema_extra={"pattern": VISIBLE}),
]
Title = Annotated[
    str,
    StringConstraints(max_length=MAX_TITLE),
    Printable,
    Field(json_schema_extra={"pattern": VISIBLE}),
]
Score = Annotated[
    int, Field(json_schema_extra={"minimum": -MAX_SCORE_MAGNITUDE, "maximum": MAX_SCORE_MAGNITUDE})
]


class OptionIn(Strict):
    id: OptionId
    label: Label


class ElectionIn(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "title": "Lunch",
                    "method": "irv",
                    "options": [
                        {"id": "pizza", "label": "Pizza"},
                        {"id": "sushi", "label": "Sushi"},
                    ],
                }
            ]
        }
    )

    title: Title
    options: Annotated[
        list[OptionIn], Field(max_length=MAX_OPTIONS, json_schema_extra={"minItems": 2})
    ]
    method: Annotated[Text, _choice(Method)]
    min_score: Score | None = None
    max_score: Score | None = None
    eligibility: Annotated[Text, _choice(Eligibility)] = "client"
    allow_revote: bool = True
    results_visibility: Annotated[Text, _choice(ResultsVisibility)] = "live"
    tie_break: Annotated[Text, _choice(TieBreak)] = "report"
    live_results_step: Annotated[int, Field(ge=1, le=MAX_LIVE_RESULTS_STEP)] = 10
    late_tokens: bool = False
    public_results: bool = False

    @field_validator("options", mode="before")
    @classmethod
    def _at_most_max_options(cls, options: Any) -> Any:
        # Before the options are validated (max_length is checked after, whatever they
        # cost), and in the domain's words with its limit: the count past MAX_OPTIONS was
        # once let through by one, to reach the domain's message, so 500 options were told
        # "at most 101 items".
        if isinstance(options, list) and len(options) > MAX_OPTIONS:
            raise ValueError(
                f"an election needs between 2 and {MAX_OPTIONS} options; got {len(options)}"
            )
        return options

    seats: Annotated[
        int | None,
        Field(
            description="stv only: how many options are elected (1 by default, fewer than "
            "the options)",
            json_schema_extra={"minimum": 1, "maximum": MAX_OPTIONS - 1},
        ),
    ] = None


# Fields sent by a client that takes an election to run on a schedule: refused as unknown
# like any other (an election has no times), with what to do instead added to the 422.
SCHEDULE_FIELDS = frozenset(
    {"opens_at", "closes_at", "starts_at", "ends_at", "start", "end", "deadline"}
    | {"open_at", "close_at", "start_at", "end_at", "start_time", "end_time", "opens"}
    | {"closes", "starts", "ends", "schedule", "open_until", "voting_ends", "voting_starts"}
)
NO_SCHEDULE = (
    "an election has no schedule: it is opened and closed at once, by POST "
    "/api/elections/{id}/open and POST /api/elections/{id}/close; call each at the moment "
    "wanted"
)


def unknown_field_hint(model: str, name: str) -> str | None:
    """What to add to the refusal of ``name``, a field ``model`` (a body's class name) does
    not take: what the sender was after, where the API does it (None: nothing to add)."""
    if model == ElectionIn.__name__ and name.lower() in SCHEDULE_FIELDS:
        return NO_SCHEDULE
    return None


class TokensIn(Strict):
    count: Annotated[int, Field(ge=1, le=MAX_TOKENS_PER_ISSUE)]


class BallotIn(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"voter_id": "ada", "ranking": ["sushi", "pizza"]}, {"choice": "pizza"}]
        }
    )

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


# What a batch's item should be, published loosely: each item is validated on its own, so
# anything at all is taken in the envelope and an item that is no ballot is refused in its
# own result (a 422 there, the request's 200 standing). An items schema of ballot objects
# alone was stricter than the server: a client or fuzzer held to it was told that
# {"ballots": [[null]]} is refused, and the server answered it 200 (schemathesis ST201).
_BALLOT_SCHEMA = {
    key: value for key, value in BatchBallotIn.model_json_schema().items() if key != "examples"
}
BATCH_ITEM = {
    "description": "a ballot as castBallot takes it, with its voter_id and an optional "
    "idempotency_key (the first schema here). Each item is validated on its own: one that "
    "is not such a ballot (not an object, a field of the wrong type, an unknown field) is "
    "refused in its own place in the results (status 422, field ballots[i]...), and the "
    "others are recorded or refused as they are",
    "anyOf": [_BALLOT_SCHEMA, {}],
}


class BatchIn(Strict):
    """The bulk path's body; each ballot is validated on its own (a bad one is refused
    alone), so only the envelope is checked here."""

    ballots: Annotated[
        list[Any],
        Field(min_length=1, max_length=MAX_BATCH, json_schema_extra={"items": BATCH_ITEM}),
    ]

    @field_validator("ballots", mode="before")
    @classmethod
    def _at_most_max_batch(cls, ballots: Any) -> Any:
        # max_length is checked once every item is validated: a list too long is refused
        # first, whatever its items cost (the hostile review).
        if isinstance(ballots, list) and len(ballots) > MAX_BATCH:
            raise PydanticKnownError(
                "too_long",
                {"field_type": "List", "max_length": MAX_BATCH, "actual_length": len(ballots)},
            )
        return ballots


class WithdrawalIn(Strict):
    voter_id: VoterId | None = None


class LoginIn(Strict):
    email: Annotated[str, StringConstraints(min_length=1, max_length=320)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class RefreshIn(Strict):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=256)]
