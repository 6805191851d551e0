"""Relay pages signed, so that the broker is trusted to carry them, not for what they say.

Anyone who may publish to ``<ns>.events`` (RabbitMQ's default guest, say) could otherwise
have the projections apply a page of made-up entries just past the log head: forged
ballots in every served result, and the projections' positions moved past the head, so
that the relay's real pages for those positions were dropped as duplicates.

The relay signs each page with an HMAC-SHA256 of its name (the message id, "after-last")
and its exact body, under a key derived from CARDINAL_SECRET and the namespace: every
process of a stack has both, a broker account has neither, and two stacks that share a
secret (they should not) still cannot take each other's pages. A worker checks the
signature before it reads a byte of the body; a page not signed so is refused unread.
"""

from __future__ import annotations

import hashlib
import hmac

from aio_pika.abc import AbstractIncomingMessage

HEADER = "x-cardinal-page-mac"
PURPOSE = b"cardinal-vote/relay-page/v1"


def page_key(secret: str, namespace: str) -> bytes:
    """The key relay pages are signed with: ``secret``'s, for this purpose and namespace
    only (what signs pages can make no voter's key, nor any other key of the secret's)."""
    return hmac.new(secret.encode(), PURPOSE + b"\x00" + namespace.encode(), "sha256").digest()


def sign(key: bytes, name: str, body: bytes) -> str:
    """The signature of a page named ``name`` (its message id) with this ``body``."""
    mac = hmac.new(key, name.encode(), hashlib.sha256)
    mac.update(b"\x00")
    mac.update(body)
    return mac.hexdigest()


def verified(key: bytes, message: AbstractIncomingMessage) -> str | None:
    """The message's signature if it is the relay's for this very name and body; None
    for a message unsigned, signed with another key, renamed or altered."""
    said = (message.headers or {}).get(HEADER)
    if isinstance(said, str):
        said = said.encode("utf-8", "replace")
    if not isinstance(said, bytes) or message.message_id is None:
        return None
    expected = sign(key, message.message_id, message.body)
    return expected if hmac.compare_digest(expected.encode(), said) else None
