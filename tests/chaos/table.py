"""The Reliability table from a chaos run's results (`make chaos` prints it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = [
        "| scenario | 2xx | 503 | counted | lost | double | 500 "
        "| slowest answer during the fault | recovery | audit verify |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        recovery = "never" if row["recovery"] is None else f"{row['recovery']:.2f} s"
        lines.append(
            f"| {row['scenario']} | {row['accepted']:,} | {row['statuses'].get('503', 0):,} "
            f"| {row['counted']:,} | {row['lost']} | {row['double']} | {row['server_errors']} "
            f"| {row['slowest_during_fault']:.2f} s{_waited(row)} | {recovery} "
            f"| {'passed' if row['audit_ok'] else 'FAILED'} |"
        )
    return "\n".join(lines)


def _waited(row: dict[str, int]) -> str:
    n = row.get("resolved_on_return", 0)
    return f" ({n} answered on the store's return: COMMIT outcome unknown)" if n else ""


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else ".cardinal/chaos/results.jsonl")
    print(table(source) if source.exists() else f"no results in {source}")
