"""The parsed election ids kept for the ballot hot path (api/context.py): only ids of
elections this process knows, as written canonically, so ids of elections that do not
exist (404s, random ids sent on purpose) never fill it and never crowd out a real one."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from uuid import UUID

import pytest
from starlette.requests import Request

from api import context
from domain.errors import ElectionNotFound


@pytest.fixture
def known() -> set[UUID]:
    return set()


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> dict[str, UUID]:
    cache: dict[str, UUID] = {}
    monkeypatch.setattr(context, "_ELECTION_IDS", cache)
    return cache


def _request(raw: str, known: set[UUID]) -> Request:
    services = SimpleNamespace(app=SimpleNamespace(known=known))
    app = SimpleNamespace(state=SimpleNamespace(services=services))
    return Request({"type": "http", "path_params": {"election_id": raw}, "app": app})


def test_ids_of_unknown_elections_are_not_kept(
    known: set[UUID], empty_cache: dict[str, UUID]
) -> None:
    for _ in range(100):
        raw = str(uuid.uuid4())
        assert context.election_id(_request(raw, known)) == UUID(raw)
    assert empty_cache == {}
    with pytest.raises(ElectionNotFound):
        context.election_id(_request("not-an-id", known))
    assert empty_cache == {}


def test_a_known_election_is_kept_once_under_its_canonical_spelling(
    known: set[UUID], empty_cache: dict[str, UUID]
) -> None:
    real = uuid.uuid4()
    known.add(real)
    for spelling in (str(real).upper(), "{" + str(real) + "}", real.hex, f"urn:uuid:{real}"):
        assert context.election_id(_request(spelling, known)) == real
    assert empty_cache == {}
    assert context.election_id(_request(str(real), known)) == real
    assert empty_cache == {str(real): real}


def test_random_ids_cannot_crowd_out_a_real_election(
    known: set[UUID], empty_cache: dict[str, UUID]
) -> None:
    for _ in range(context.KNOWN_IDS + 10):
        context.election_id(_request(str(uuid.uuid4()), known))
    real = uuid.uuid4()
    known.add(real)
    assert context.election_id(_request(str(real), known)) == real
    assert empty_cache == {str(real): real}
