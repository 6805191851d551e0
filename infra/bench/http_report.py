"""The HTTP benchmark's report: percentiles, the table, the sparkline and the SVG chart."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from infra.bench.chart import Panel, sparkline, svg

if TYPE_CHECKING:
    from infra.bench.http_drive import RunFigures

console = Console()


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1] * 1000, 1)}


def picture(runs: list[RunFigures], chart: Path | None) -> None:
    """Second by second, in the terminal and as an SVG chart."""
    top = max((max(r.accepted_by_second, default=0) for r in runs), default=0)
    for run in runs:
        counts = run.accepted_by_second[: run.whole_seconds()]
        console.print(
            f"{run.label}, accepted ballots each second "
            f"({min(counts, default=0):,}-{max(counts, default=0):,}):\n"
            f"  [cyan]{sparkline(counts, top)}[/cyan]"
        )
    path = chart or Path(
        os.environ.get("CARDINAL_DATA_DIR", ".cardinal"),
        "bench",
        time.strftime("http-%Y%m%d-%H%M%S.svg"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        svg(
            [
                Panel(
                    "Accepted ballots per second",
                    "ballots/s",
                    {r.label: r.accepted_by_second[: r.whole_seconds()] for r in runs},
                ),
                Panel(
                    "Latency p99, second by second",
                    "ms",
                    {r.label: r.p99_by_second()[: r.whole_seconds()] for r in runs},
                ),
            ]
        )
    )
    console.print(f"chart: {path}")


def print_table(runs: list[RunFigures]) -> None:
    table = Table(title="HTTP ballots: throughput, latency, freshness, memory")
    table.add_column("figure", no_wrap=True)
    for run in runs:
        table.add_column(run.label, justify="right")
    rows: list[tuple[str, list[str]]] = [
        ("accepted ballots/s", [f"{r.rate:,.0f}" for r in runs]),
        ("accepted", [f"{r.accepted:,}" for r in runs]),
        ("seconds", [f"{r.seconds:.1f}" for r in runs]),
    ]
    for key in ("p50", "p99", "max"):
        rows.append((f"latency {key} (ms)", [str(percentiles(r.latencies)[key]) for r in runs]))
    for key in ("p50", "p99"):
        rows.append((f"freshness {key} (ms)", [str(percentiles(r.freshness)[key]) for r in runs]))
    rows.append(("refused", [json.dumps(r.refused) if r.refused else "0" for r in runs]))
    rows.append(("transport errors", [str(r.errors) for r in runs]))
    names = sorted({name for r in runs for name in r.peak_rss_mb})
    for name in names:
        rows.append((f"peak RSS {name} (MB)", [str(r.peak_rss_mb.get(name, "")) for r in runs]))
    roles = sorted({role for r in runs for role in r.cpu_us_per_ballot})
    for role in roles:
        rows.append(
            (f"CPU µs/ballot {role}", [str(r.cpu_us_per_ballot.get(role, "")) for r in runs])
        )
    roles = sorted({role for r in runs for role in r.context_switches_per_ballot})
    for role in roles:
        rows.append(
            (
                f"context switches/ballot {role}",
                [str(r.context_switches_per_ballot.get(role, "")) for r in runs],
            )
        )
    rows.append(
        (
            "rows read by table scans per ballot",
            ["" if r.scanned_per_ballot is None else f"{r.scanned_per_ballot:,.1f}" for r in runs],
        )
    )
    rows.append(("counted exactly once", [str(r.counted_once) for r in runs]))
    rows.append(("results = recount", [str(r.matches_recount) for r in runs]))
    for label, values in rows:
        table.add_row(label, *values)
    console.print(table)
    for run in runs:
        for note in run.notes:
            console.print(f"[yellow]{run.label}: {note}[/yellow]")
