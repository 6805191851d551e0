"""How hard property tests try: their full number of examples in `make test`, a fifth of it
in the fast loop (`make check` sets CARDINAL_EXAMPLES=0.2)."""

from __future__ import annotations

import os

SCALE = float(os.environ.get("CARDINAL_EXAMPLES", "1"))


def examples(full: int) -> int:
    """The number of examples a property test runs: ``full`` scaled, at least 10."""
    return max(10, round(full * SCALE))
