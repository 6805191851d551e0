"""The hash chain over the log, and the checkpoint signatures, specified exactly.

Anyone can re-derive every hash from an export with a few lines of code:

    entry_hash = BLAKE2b-256( "cardinal-vote/entry/v1" 0x00
                              position   (8 bytes, big-endian)
                              stream_id  (16 bytes, the UUID's bytes)
                              version    (8 bytes, big-endian)
                              len(type)  (2 bytes, big-endian)  type (UTF-8, e.g. "BallotCast")
                              payload )
    hash       = BLAKE2b-256( prev_hash || entry_hash )
                 (prev_hash of the first entry: 32 zero bytes)

``payload`` is the entry's JSON state as stored, which is canonical JSON: keys sorted, no
insignificant whitespace, UTF-8. From what /api/audit/events serves, it is (in Python)
json.dumps({**data, "timestamp": timestamp}, sort_keys=True, separators=(",", ":"),
ensure_ascii=False).encode(). The chain links entries in position order;
positions may skip numbers (rolled-back inserts), so a missing entry shows as a broken
link at the next one.

A checkpoint signs the chain head at a position with Ed25519; the signed message is
``"cardinal-vote/checkpoint/v1\\n{position}\\n{head hash, hex}\\n"`` in UTF-8. An export's
own signed head (its last line) signs
``"cardinal-vote/export-head/v1\\n{position}\\n{head hash, hex}\\n{file hash, hex}\\n"``,
where the file hash is the SHA-256 of every byte of the export before that line: so it
attests the whole file (header, checkpoints, results, events) and where it ends, and no
checkpoint can stand in for it.

An entry hash is also a ballot's receipt: the API returns it with the 2xx, and anyone can
later ask whether that hash is in the log and which signed checkpoint covers it. A ballot
entry's payload holds a random ``nonce`` that its caster never sees, so a receipt cannot be
rebuilt from what the caster knows (the vote, the election, the moment): it proves where
the entry is, not what it holds, except to a reader of the log.
"""

from __future__ import annotations

import hashlib
import struct
from uuid import UUID

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_blake2b = hashlib.blake2b
GENESIS = bytes(32)
ENTRY_PREFIX = b"cardinal-vote/entry/v1\x00"
ALGORITHM = "Ed25519"


_FIELDS = struct.Struct(">Q16sQH")


def entry_hash(
    position: int, stream_id: UUID | bytes, version: int, kind: str, payload: bytes
) -> bytes:
    """The hash of one log entry on its own (a receipt); ``stream_id`` as a UUID or its
    16 bytes."""
    encoded_kind = kind.encode()
    stream = stream_id if isinstance(stream_id, bytes) else stream_id.bytes
    fields = _FIELDS.pack(position, stream, version, len(encoded_kind))
    return _blake2b(ENTRY_PREFIX + fields + encoded_kind + payload, digest_size=32).digest()


def filed_election(kind: str, stream_id: bytes, payload: bytes) -> UUID | None:
    """The election the chain files an entry under (``audit_chain.election_id``, which the
    per-election audit read follows): an election's own entries by their stream, a ballot's
    by the election its payload names; None for anything else, or a ballot naming none."""
    if kind.startswith("Election"):
        return UUID(bytes=stream_id)
    if kind.startswith("Ballot"):
        try:
            named = orjson.loads(payload)["election_id"]
            if isinstance(named, str):
                return UUID(named)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            pass
    return None


def chain_hash(previous: bytes, entry: bytes) -> bytes:
    """The chain link: this entry's hash bound to everything before it."""
    return _blake2b(previous + entry, digest_size=32).digest()


def checkpoint_message(position: int, head: bytes) -> bytes:
    return f"cardinal-vote/checkpoint/v1\n{position}\n{head.hex()}\n".encode()


def export_head_message(position: int, head: bytes, file_hash: bytes) -> bytes:
    return f"cardinal-vote/export-head/v1\n{position}\n{head.hex()}\n{file_hash.hex()}\n".encode()


class Signer:
    """Signs checkpoints with the audit key (an Ed25519 seed of 32 bytes, hex)."""

    def __init__(self, seed_hex: str) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
        self.public_key = public_key_bytes(self._key.public_key())

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def sign(self, position: int, head: bytes) -> bytes:
        return self._key.sign(checkpoint_message(position, head))

    def sign_export(self, position: int, head: bytes, file_hash: bytes) -> bytes:
        return self._key.sign(export_head_message(position, head, file_hash))


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: bytes) -> str:
    """A short name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def signature_valid(
    public_key: bytes,
    position: int,
    head: bytes,
    signature: bytes,
    file_hash: bytes | None = None,
) -> bool:
    """A checkpoint's signature, or with ``file_hash`` an export's own signed head."""
    message = (
        checkpoint_message(position, head)
        if file_hash is None
        else export_head_message(position, head, file_hash)
    )
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def new_seed() -> str:
    """A fresh audit signing key, as the hex of its 32-byte seed."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()
