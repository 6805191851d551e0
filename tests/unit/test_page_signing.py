"""Relay pages carry the relay's signature of their name and exact body; a page without
it, signed with another key, renamed or altered, is not verified."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infra.broker.signing import HEADER, page_key, sign, verified
from infra.runtime.bootstrap import _page_key
from infra.runtime.credentials import complete
from infra.runtime.settings import Settings, SettingsError

KEY = page_key("s" * 40, "cardinal")
BODY = b'{"after":4,"last":5,"events":[]}'


@dataclass
class Message:
    message_id: str | None
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)


def _signed(key: bytes = KEY, name: str = "4-5", body: bytes = BODY) -> Message:
    return Message(name, body, {HEADER: sign(key, name, body)})


def test_the_relays_page_is_verified() -> None:
    message = _signed()
    assert verified(KEY, message) == message.headers[HEADER]  # type: ignore[arg-type]
    as_bytes = Message("4-5", BODY, {HEADER: message.headers[HEADER].encode()})
    assert verified(KEY, as_bytes) is not None  # type: ignore[arg-type]


def test_pages_not_the_relays_are_not_verified() -> None:
    genuine = _signed()
    forged = [
        Message("4-5", BODY),  # unsigned
        _signed(key=page_key("t" * 40, "cardinal")),  # another secret
        _signed(key=page_key("s" * 40, "other")),  # another stack's, same secret
        Message("4-5", BODY + b" ", genuine.headers),  # the body altered
        Message("3-5", BODY, genuine.headers),  # renamed
        Message(None, BODY, genuine.headers),
        Message("4-5", BODY, {HEADER: "é" * 64}),  # not even hex
        Message("4-5", BODY, {HEADER: 42}),
    ]
    for message in forged:
        assert verified(KEY, message) is None, message  # type: ignore[arg-type]


def test_the_page_key_is_for_pages_only() -> None:
    """Derived for its purpose: it is neither the secret nor what keys voters."""
    assert ("s" * 40).encode() != KEY
    assert len(KEY) == 32


def test_every_process_of_a_development_stack_derives_the_same_key(tmp_path: Path) -> None:
    """Without CARDINAL_SECRET (development), the relay and the workers take the secret
    `cardinal serve` and `cardinal api` keep in the data folder: the same key for all."""
    settings = Settings(env="development", data_dir=tmp_path, namespace="dev")
    kept = complete(settings).settings.secret  # what serve/api use
    assert kept is not None
    assert _page_key(settings) == _page_key(settings) == page_key(kept, "dev")
    assert _page_key(settings.with_overrides(secret="z" * 40)) == page_key("z" * 40, "dev")
    with pytest.raises(SettingsError, match="CARDINAL_SECRET"):
        _page_key(Settings(env="production", data_dir=tmp_path))
