"""AMQP short strings that are not UTF-8 (and other frames pamqp cannot decode: a timestamp
past year 9999, tables nested hundreds deep), read without losing the connection.

A publisher may put any bytes in a message's ``message_id``, ``correlation_id`` or
``reply_to`` (AMQP's short strings), or in the name of one of its headers (RabbitMQ passes
them on as they are). pamqp 4 decodes them with ``bytes.decode('utf-8')``: one byte 0xff
makes aiormq fail the whole content header frame (InvalidFrameError) and close the
connection, so the message is delivered again, and again, until the delivery limit
dead-letters it with the unacked batch around it. ``tolerate_invalid_utf8`` makes pamqp
decode them with ``surrogateescape`` instead: the message arrives, its ``message_id`` is not
printable, and ``parse`` refuses it like any other bad key (a header name is never read).
``sendable`` spells such a string (or one holding a lone surrogate from a JSON escape) as
text any encoder takes, where we send it on.
"""

from __future__ import annotations

import datetime
import struct

from pamqp import common, decode

_original_short_str = decode.short_str
_original_field_table = decode.field_table
_original_timestamp = decode.timestamp
NEVER = datetime.datetime.max.replace(tzinfo=datetime.UTC)  # a timestamp past year 9999


def _short_str(value: bytes) -> tuple[int, str]:
    """pamqp's ``decode.short_str`` (4.0.1), with undecodable bytes as lone surrogates."""
    try:
        length = common.Struct.byte.unpack(value[0:1])[0]
        return length + 1, value[1 : length + 1].decode("utf-8", "surrogateescape")
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack short string value") from err


def _field_table(value: bytes) -> tuple[int, common.FieldTable]:
    """pamqp's ``decode.field_table`` (4.0.1), with undecodable bytes in a name as lone
    surrogates (its values are decoded by the decoders it names: a long string that is not
    UTF-8 is already bytes there)."""
    try:
        length = common.Struct.integer.unpack(value[0:4])[0]
        offset = 4
        data: common.FieldTable = {}
        field_table_end = offset + length
        if field_table_end > len(value):
            raise ValueError("Field table length exceeds available data")
        while offset < field_table_end:
            key_length = common.Struct.byte.unpack_from(value, offset)[0]
            offset += 1
            if offset + key_length > field_table_end:
                raise ValueError("Field table key length exceeds data")
            key = value[offset : offset + key_length].decode("utf-8", "surrogateescape")
            offset += key_length
            try:
                consumed, result = decode.embedded_value(value[offset:])
            except RecursionError:  # tables nested hundreds deep: skip this table's rest
                return field_table_end, data
            offset += consumed
            data[key] = result
        return field_table_end, data
    except (struct.error, TypeError) as err:
        raise ValueError("Could not unpack data") from err


def _timestamp(value: bytes) -> tuple[int, datetime.datetime]:
    """pamqp's ``decode.timestamp`` (4.0.1), with a time past year 9999 (which Python's
    datetime cannot hold: a ValueError, and aiormq drops the connection) as NEVER."""
    try:
        return _original_timestamp(value)
    except (ValueError, OverflowError, OSError):
        if len(value) < 8:
            raise
        return 8, NEVER


def tolerate_invalid_utf8() -> None:
    """Decode AMQP short strings and field names leniently, in this process (idempotent).

    pamqp's ``by_type`` looks its decoders up in ``METHODS`` on every call, and
    ``embedded_value`` (a table within a table or an array) in ``TABLE_MAPPING``, so
    replacing their entries reaches every method frame and content header."""
    replaced = (
        (decode.METHODS, "shortstr", _original_short_str, _short_str),
        (decode.METHODS, "table", _original_field_table, _field_table),
        (decode.TABLE_MAPPING, b"F", _original_field_table, _field_table),
        (decode.METHODS, "timestamp", _original_timestamp, _timestamp),
        (decode.TABLE_MAPPING, b"T", _original_timestamp, _timestamp),
    )
    for mapping, name, original, lenient in replaced:
        current: object = mapping[name]  # type: ignore[index]
        if current is not original and current is not lenient:
            raise RuntimeError(f"pamqp's {name!r} decoder is not the one this patch replaces")
    for mapping, name, _, lenient in replaced:
        mapping[name] = lenient  # type: ignore[index]


SHORT_STR = 255  # bytes an AMQP short string holds


def sendable(text: str, limit: int | None = None) -> str:
    """``text`` with anything UTF-8 cannot carry (a byte that was not UTF-8, a lone
    surrogate) spelt as a backslash escape (``bad\\udcffid``), cut to ``limit`` bytes."""
    escaped = text.encode("utf-8", "backslashreplace")[:limit]
    return escaped.decode("utf-8", "ignore")  # "ignore": a character the cut split
