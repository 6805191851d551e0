"""A bulk body's commas are counted before it is parsed (``api.context.MAX_COMMAS``): the
fullest batch a client can send passes, and a body of a million empty objects is refused
without being parsed."""

from __future__ import annotations

import json

import pytest

from api.context import MAX_COMMAS, json_document
from api.problems import TooManyValues
from api.schemas import BATCH_BODY_BYTES, MAX_BATCH, BatchIn
from domain.rules import MAX_OPTIONS


def test_the_fullest_batch_is_under_the_limit() -> None:
    """1,000 score ballots of 100 options each, with a comma in each voter id and key."""
    options = [f"option-{n}" for n in range(MAX_OPTIONS)]
    ballots = [
        {
            "voter_id": f"Doe, Jane {n}",
            "idempotency_key": f"batch, {n}",
            "scores": dict.fromkeys(options, 5),
        }
        for n in range(MAX_BATCH)
    ]
    raw = json.dumps({"ballots": ballots}, separators=(",", ":")).encode()
    assert len(raw) < BATCH_BODY_BYTES
    assert raw.count(b",") < MAX_COMMAS
    assert len(json_document(raw, max_commas=MAX_COMMAS)["ballots"]) == MAX_BATCH


def test_a_body_of_a_million_values_is_refused_unparsed() -> None:
    raw = b'{"ballots":[' + b",".join([b"{}"] * 1_398_000) + b'],"x":"\\ud800"}'
    assert len(raw) <= BATCH_BODY_BYTES
    with pytest.raises(TooManyValues, match="1,398,000 commas, more than the 128,000"):
        json_document(raw, max_commas=MAX_COMMAS)
    many = b"[" + b",".join([b"1"] * (MAX_COMMAS + 2)) + b"]"  # (without a limit, as the
    assert len(json_document(many)) == MAX_COMMAS + 2  # ingest queue reads a message)


def test_a_list_too_long_is_refused_before_its_items_are_validated() -> None:
    errors = []
    try:
        BatchIn.model_validate({"ballots": [{}] * (MAX_BATCH + 1)})
    except Exception as error:
        errors = error.errors()  # type: ignore[attr-defined]
    assert [(e["type"], e["loc"]) for e in errors] == [("too_long", ("ballots",))]
    assert "at most 1000 items" in errors[0]["msg"]
