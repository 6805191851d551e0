"""Event payloads as plain JSON (orjson), so that auditors read them without our code."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from eventsourcing.persistence import Transcoder


class OrjsonTranscoder(Transcoder):
    """Plain-JSON event state: ids as strings, the event timestamp as RFC 3339.

    Our events hold only JSON-native values besides their ``timestamp``, so no type tags
    (the library's ``{"_type_": ...}`` envelopes) are needed, and orjson is 5-10x faster
    than the standard library on these small documents.
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        timestamp = state.get("timestamp")
        if isinstance(timestamp, str):
            state["timestamp"] = datetime.fromisoformat(timestamp)
        return state
