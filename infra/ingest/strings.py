"""AMQP short strings that are not UTF-8, read without losing the connection.

A publisher may put any bytes in a message's ``message_id``, ``correlation_id`` or
``reply_to`` (AMQP's short strings; RabbitMQ passes them on as they are). pamqp 4 decodes
them with ``bytes.decode('utf-8')``: one byte 0xff makes aiormq fail the whole content
header frame (InvalidFrameError) and close the connection, so the message is delivered
again, and again, until the delivery limit dead-letters it with the unacked batch around it.
``tolerate_invalid_utf8`` makes pamqp decode them with ``surrogateescape`` instead: the
message arrives, its ``message_id`` is not printable, and ``parse`` refuses it like any
other bad key. ``sendable`` spells such a string (or one holding a lone surrogate from a
JSON escape) as text any encoder takes, where we send it on.
"""

from __future__ import annotations

import struct

from pamqp import common, decode

_original_short_str = decode.short_str


def _short_str(value: bytes) -> tuple[int, str]:
    """pamqp's ``decode.short_str`` (4.0.1), with undecodable bytes as lone surrogates."""
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err


def tolerate_invalid_utf8() -> None:
    """Decode AMQP short strings leniently, in this process (idempotent).

    pamqp's ``by_type`` looks its decoders up in ``METHODS`` on every call, so replacing
    the entry reaches every method frame and content header (the properties)."""
    current = decode.METHODS["shortstr"]
    if current is _short_str:
        return
    if current is not _original_short_str:
        raise RuntimeError("pamqp's short-string decoder is not the one this patch replaces")
    decode.METHODS["shortstr"] = _short_str


SHORT_STR = 255  # bytes an AMQP short string holds


def sendable(text: str, limit: int | None = None) -> str:
    """``text`` with anything UTF-8 cannot carry (a byte that was not UTF-8, a lone
    surrogate) spelt as a backslash escape (``bad\\udcffid``), cut to ``limit`` bytes."""
    escaped = text.encode("utf-8", "backslashreplace")[:limit]
    return escaped.decode("utf-8", "ignore")  # "ignore": a character the cut split
