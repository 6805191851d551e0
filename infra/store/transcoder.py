"""Event payloads as plain JSON (orjson), so that auditors read them without our code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Transcoder


class OrjsonTranscoder(Transcoder):
    """Plain, canonical JSON event state: keys sorted, no whitespace, UTF-8; ids as strings,
    the event timestamp as RFC 3339.

    Canonical, so that the audit chain can hash the stored bytes as they are and anyone can
    reproduce them from the data. Our events hold only JSON-native values besides their
    ``timestamp``, so no type tags (the library's ``{"_type_": ...}`` envelopes) are needed;
    orjson is 5-10x faster than the standard library on these small documents.
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        timestamp = state.get("timestamp")
        if isinstance(timestamp, str):
            state["timestamp"] = datetime.fromisoformat(timestamp)
        return state
