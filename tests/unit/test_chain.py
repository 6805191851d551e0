"""The audit chain's format, as specified in infra/audit/chain.py."""

from __future__ import annotations

import hashlib
import json
import struct
from uuid import UUID

from infra.audit.chain import (
    GENESIS,
    Signer,
    chain_hash,
    checkpoint_message,
    entry_hash,
    key_id,
    signature_valid,
)
from infra.store.transcoder import OrjsonTranscoder

STREAM = UUID("6b1a6f7e-5b0a-4b5e-9a3e-3f2d7a1c9e10")


def test_the_entry_hash_is_what_the_specification_says() -> None:
    payload = b'{"a":1}'
    expected = hashlib.blake2b(
        b"cardinal-vote/entry/v1\x00"
        + struct.pack(">Q", 42)
        + STREAM.bytes
        + struct.pack(">Q", 3)
        + struct.pack(">H", len(b"BallotCast"))
        + b"BallotCast"
        + payload,
        digest_size=32,
    ).digest()
    assert entry_hash(42, STREAM, 3, "BallotCast", payload) == expected
    assert entry_hash(42, STREAM.bytes, 3, "BallotCast", payload) == expected
    assert (
        chain_hash(GENESIS, expected)
        == hashlib.blake2b(bytes(32) + expected, digest_size=32).digest()
    )


def test_every_field_changes_the_entry_hash() -> None:
    base = entry_hash(1, STREAM, 1, "BallotCast", b"{}")
    assert base != entry_hash(2, STREAM, 1, "BallotCast", b"{}")
    assert base != entry_hash(1, UUID(int=1), 1, "BallotCast", b"{}")
    assert base != entry_hash(1, STREAM, 2, "BallotCast", b"{}")
    assert base != entry_hash(1, STREAM, 1, "BallotRevised", b"{}")
    assert base != entry_hash(1, STREAM, 1, "BallotCast", b"{ }")


def test_stored_state_is_the_canonical_json_anyone_can_reproduce() -> None:
    state = {"vote": {"ranking": ["b", "a"]}, "election_id": "é", "request_key": None, "n": 2}
    stored = OrjsonTranscoder().encode(state)
    canonical = json.dumps(state, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert stored == canonical.encode()


def test_checkpoints_verify_with_the_public_key_only() -> None:
    signer = Signer("11" * 32)
    head = bytes(range(32))
    signature = signer.sign(7, head)
    assert signature_valid(signer.public_key, 7, head, signature)
    assert not signature_valid(signer.public_key, 8, head, signature)
    assert not signature_valid(signer.public_key, 7, bytes(32), signature)
    assert not signature_valid(Signer("22" * 32).public_key, 7, head, signature)
    assert checkpoint_message(7, head).startswith(b"cardinal-vote/checkpoint/v1\n7\n")
    assert signer.key_id == key_id(signer.public_key)
    assert len(signer.key_id) == 16
