"""`cardinal bench WHAT`: each benchmark is a module of infra/bench with its own options."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

BENCHMARKS = {
    "http": "infra.bench.http",
    "tabulation": "infra.bench.tabulation",
    "projection": "infra.bench.projection",
    "rebuild": "infra.bench.rebuild",
    "verify": "infra.bench.verify",
    "ingest": "infra.bench.ingest",
    "viewers": "infra.bench.viewers",
    "app": "infra.bench.app",
    "machine": "infra.bench.machine",
}


def add_commands(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure: " + ", ".join(sorted(BENCHMARKS)),
        description="Benchmarks that report figures (as a table and a JSON line) and exit "
        "non-zero when a target is missed. `cardinal bench WHAT --help` for each one's options.",
    )
    bench.add_argument("what", choices=sorted(BENCHMARKS), help="what to measure")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options of that benchmark")
    bench.set_defaults(command=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.what])
    result: int = module.main(list(args.options))
    return result
