"""Parameters several operations share, as the contract declares them."""

from __future__ import annotations

from api.context import MAX_POSITION
from api.contract import Param

ELECTION_ID = Param("election_id", "path", {"type": "string", "format": "uuid"})
POSITION = {"type": "integer", "minimum": 0, "maximum": MAX_POSITION}
AFTER = Param("after", "query", POSITION, required=False, description="the last one seen")
LIMIT = Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, required=False)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    # Printable ASCII, no space at either end (HTTP trims it, and the key would change).
    {"type": "string", "pattern": "^[!-~]([ -~]{0,253}[!-~])?$"},
    required=False,
    description="a retry with the same key gets the first answer (Idempotent-Replayed)",
)
