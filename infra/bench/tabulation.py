"""Benchmark of the tabulation: results from sufficient statistics, and one ballot's add.

The performance point of issue 3: an election with 20 options and 1,000,000 ballots cast
as 10,000 distinct rankings must give every result in under 50 ms from its statistics,
and adding one ballot must cost O(options²). The cardinal methods are timed on statistics
of the same size (1,000,000 ballots, 10,000 distinct ballots). The tallies are built with
weighted ``add`` calls (one per distinct ballot), not a million single adds.

Run: ``python -m infra.bench.tabulation`` (``cardinal bench tabulation``). Exit status 0
only if every figure meets its target.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from rich.console import Console
from rich.table import Table

from domain.rules import ElectionRules, Method
from domain.tabulation import Tally
from domain.votes import Approval, Choice, Ranking, Scores, Vote

RESULT_TARGET_MS = 50.0
ADD_TARGET_US = 250.0


@dataclass(frozen=True)
class Figure:
    """One measured figure and its target."""

    name: str
    value: float
    unit: str
    target: float | None  # None: shown for information, no target

    @property
    def ok(self) -> bool:
        return self.target is None or self.value <= self.target


STV_SEATS = 5  # a multi-seat count (fewer where there are fewer options), as a board fills


def main(argv: list[str] | None = None) -> int:
    """Build the tallies, time them, print a table and a JSON line; 0 if all targets met."""
    parser = argparse.ArgumentParser(
        prog="cardinal bench tabulation",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # (only the domain here)
    )
    parser.add_argument("--options", type=int, default=20)
    parser.add_argument("--ballots", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=10_000, help="distinct ballots")
    parser.add_argument("--repeat", type=int, default=7, help="timings per figure (median)")
    parser.add_argument("--adds", type=int, default=2_000, help="single adds to average")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    console = Console()
    figures: list[Figure] = []
    built_at = time.perf_counter()
    for method in Method:
        rules = _rules(method, args.options)
        votes = _distinct_votes(rng, rules, args.distinct)
        tally = Tally(rules)
        for vote, weight in zip(votes, _weights(rng, len(votes), args.ballots), strict=True):
            tally.add(vote, weight)
        assert tally.ballots == args.ballots
        result_ms = _median_ms(tally.result, args.repeat)
        figures.append(Figure(f"{method.value}: result()", result_ms, "ms", RESULT_TARGET_MS))
        if method is Method.IRV:
            # The read path from stored rows: counters to Tally to result (information).
            rows = tally.counters()
            reading = partial(_read_result, rules, rows)
            load_ms = _median_ms(reading, args.repeat)
            name = f"irv: from_counters() + result() ({len(rows):,} rows)"
            figures.append(Figure(name, load_ms, "ms", None))
        spare = Tally(rules)
        singles = [votes[rng.randrange(len(votes))] for _ in range(args.adds)]
        add_us = _mean_add_us(spare, singles)
        figures.append(Figure(f"{method.value}: add() one ballot", add_us, "µs", ADD_TARGET_US))
    built_s = time.perf_counter() - built_at
    _print(console, figures, args, built_s)
    return 0 if all(figure.ok for figure in figures) else 1


def _rules(method: Method, options: int) -> ElectionRules:
    return ElectionRules.create(
        options=[{"id": f"o{i}", "label": f"Option {i}"} for i in range(options)],
        method=method.value,
        seats=min(STV_SEATS, options - 1) if method is Method.STV else None,
    )


def _distinct_votes(rng: random.Random, rules: ElectionRules, count: int) -> list[Vote]:
    """Up to ``count`` distinct ballots; a quarter of the rankings are partial."""
    ids = list(rules.option_ids)
    method = rules.method
    if method is Method.PLURALITY:
        return [Choice(option) for option in ids]
    seen: set[Vote] = set()
    for _ in range(50 * count):  # small elections have fewer distinct ballots than asked
        if len(seen) == count:
            break
        vote: Vote
        if method is Method.APPROVAL:
            vote = Approval(tuple(o for o in ids if rng.random() < 0.3) or (ids[0],))
        elif method.is_scored:
            low, high = rules.min_score or 0, rules.max_score or 0
            vote = Scores(tuple((o, rng.randint(low, high)) for o in ids))
        else:
            order = rng.sample(ids, len(ids))
            if rng.random() < 0.25:
                order = order[: rng.randint(1, max(1, len(ids) - 2))]
            vote = Ranking(tuple(order))
        seen.add(vote)
    return sorted(seen, key=repr)


def _weights(rng: random.Random, count: int, total: int) -> list[int]:
    """``count`` positive integers summing exactly to ``total``, unevenly spread."""
    raw = [rng.paretovariate(1.5) for _ in range(count)]
    scale = (total - count) / sum(raw)
    weights = [1 + int(r * scale) for r in raw]
    weights[0] += total - sum(weights)
    return weights


def _read_result(rules: ElectionRules, rows: dict[str, int]) -> object:
    return Tally.from_counters(rules, rows).result()


def _median_ms(action: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def _mean_add_us(tally: Tally, votes: Sequence[Vote]) -> float:
    started = time.perf_counter()
    for vote in votes:
        tally.add(vote)
    return (time.perf_counter() - started) * 1_000_000 / len(votes)


def _print(
    console: Console, figures: list[Figure], args: argparse.Namespace, built_s: float
) -> None:
    table = Table(
        title=(
            f"Tabulation: {args.options} options, {args.ballots:,} ballots, "
            f"{args.distinct:,} distinct ballots (plurality: one per option)"
        )
    )
    for column in ("figure", "measured", "target", "ok"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for figure in figures:
        table.add_row(
            figure.name,
            f"{figure.value:.2f} {figure.unit}",
            "—" if figure.target is None else f"< {figure.target:g} {figure.unit}",
            "" if figure.target is None else "[green]yes[/green]" if figure.ok else "[red]NO[/red]",
        )
    console.print(table)
    console.print(f"(tallies built in {built_s:.1f} s; medians of {args.repeat} runs)")
    line = {
        "benchmark": "tabulation",
        "options": args.options,
        "ballots": args.ballots,
        "distinct": args.distinct,
        "figures": {
            figure.name: {
                "value": round(figure.value, 3),
                "unit": figure.unit,
                "target": figure.target,
                "ok": figure.ok,
            }
            for figure in figures
        },
        "ok": all(figure.ok for figure in figures),
    }
    print(json.dumps(line, ensure_ascii=False))


if __name__ == "__main__":
    raise SystemExit(main())
