"""`cardinal bench http` end to end: its own stack, its verification, its report and chart.

A small run, for behaviour (every ballot answered, counted once, the 503 back-pressure
leaves no trace), not for figures: those come from the benchmark command itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.databases import SERVER_URL

ROOT = Path(__file__).resolve().parents[2]


def _bench(tmp_path: Path, *options: str, target: bool = True) -> dict[str, Any]:
    """Run the benchmark; with ``target`` False, a missed figure target (exit 1) is fine:
    a small run on a shared machine measures behaviour, not figures."""
    report, chart = tmp_path / "report.json", tmp_path / "chart.svg"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "bench",
            "http",
            "--server-url",
            SERVER_URL,
            "--output",
            str(report),
            "--chart",
            str(chart),
            *options,
        ],
        cwd=ROOT,
        env={**os.environ, "CARDINAL_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode in ((0,) if target else (0, 1)), (
        done.stdout[-3000:] + done.stderr[-3000:]
    )
    assert "counted exactly once" in done.stdout
    root = ET.fromstring(chart.read_text())
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) >= 2
    loaded: dict[str, Any] = json.loads(report.read_text())
    return loaded


def test_a_fixed_number_of_ballots_all_counted_once_batched_and_not(tmp_path: Path) -> None:
    report = _bench(tmp_path, "--ballots", "1500", "--concurrency", "16", "--compare-unbatched")
    batched, unbatched = report["runs"]
    for run in (batched, unbatched):
        assert run["accepted"] == 1500, run
        assert run["errors"] == 0
        assert run["refused"] == {}
        assert run["counted_once"] is True
        assert run["matches_recount"] is True
        assert run["not_visible"] == 0
        assert run["latency_ms"]["p99"] > 0
        # Ballots are read by key: a handful of rows per ballot at most (catalog tables),
        # never the log (a scanning plan read hundreds of rows per ballot here).
        assert 0 <= run["rows_scanned_per_ballot"] < 20
        # Every role's CPU, the database server's own and the broker node's included.
        # The database's backends by what they serve (application_name), and the
        # benchmark's own apart from the stack's total.
        roles = (
            "serve: api",
            "PostgreSQL backends: writer",
            "PostgreSQL backends: projections",
            "RabbitMQ node",
        )
        for role in roles:
            assert run["cpu_us_per_ballot"][role] > 0, (role, run["cpu_us_per_ballot"])
        cpu = run["cpu_us_per_ballot"]
        stack = sum(v for k, v in cpu.items() if not k.startswith(("load generator", "total")))
        assert abs(cpu["total (without the load generator)"] - stack) < 0.5, cpu
        # Wake-ups by the same roles: the API's threads and the writer's backend wait on
        # each other at least once per commit, and there is a commit per ballot unbatched.
        switches = run["context_switches_per_ballot"]
        assert switches["serve: api"] > 0, switches
        assert switches["PostgreSQL backends: writer"] > 0, switches
        assert set(switches) <= set(cpu), (switches, cpu)
    assert unbatched["context_switches_per_ballot"]["PostgreSQL backends: writer"] >= 1
    assert batched["label"] == "WRITER_MAX_BATCH=500"
    assert unbatched["label"] == "WRITER_MAX_BATCH=1"
    # The report's rates are rounded to 0.1/s, its ratio comes from the exact ones.
    ratio = batched["accepted_per_second"] / unbatched["accepted_per_second"]
    assert abs(report["ratio"] - ratio) < 0.01


def test_a_burst_past_a_small_queue_is_refused_with_503_and_leaves_no_trace(
    tmp_path: Path,
) -> None:
    report = _bench(tmp_path, "--ballots", "4000", "--concurrency", "128", "--max-queue", "8")
    (run,) = report["runs"]
    refused = run["refused"].get("503", 0)
    assert refused > 0, run
    assert run["accepted"] + refused == 4000
    assert run["counted_once"] is True  # the results count exactly the 2xx answers
    assert run["matches_recount"] is True


def test_the_rate_limit_run_reports_its_cost_and_refuses_no_ballot(tmp_path: Path) -> None:
    report = _bench(
        tmp_path,
        *("--ballots", "800", "--concurrency", "16", "--rate-limit", "--no-broker"),
        target=False,
    )
    off, on = report["runs"]
    assert (off["label"], on["label"]) == ("rate limit off", "rate limit on")
    for run in (off, on):
        assert run["accepted"] == 800, run
        assert run["refused"] == {}  # a limit no client reaches: the checks, not refusals
        assert run["counted_once"] is True
    expected = 1 - on["accepted_per_second"] / off["accepted_per_second"]
    assert abs(report["rate_limit_cost"] - expected) < 0.002


def test_the_bulk_path_and_the_bare_reference_are_measured_in_the_same_run(
    tmp_path: Path,
) -> None:
    report = _bench(
        tmp_path,
        *("--ballots", "3000", "--concurrency", "16", "--bulk", "100", "--reference"),
        target=False,
    )
    single, bulk, bare = report["runs"]
    assert (single["label"], bulk["label"], bare["label"]) == (
        "WRITER_MAX_BATCH=500",
        "bulk, 100 per request",
        "bare endpoint",
    )
    for run in (single, bulk):
        assert run["accepted"] == 3000, run
        assert run["refused"] == {}
        assert run["counted_once"] is True
        assert run["matches_recount"] is True
    assert bulk["requests"] == 30  # a hundred ballots each, every receipt counted
    assert bare["accepted"] == 3000
    assert bare["counted_once"] is None  # it records nothing
    ratio = bulk["accepted_per_second"] / single["accepted_per_second"]
    assert abs(report["bulk_ratio"] - ratio) < 0.01
    share = single["accepted_per_second"] / bare["accepted_per_second"]
    assert abs(report["reference_share"] - share) < 0.01


@pytest.mark.parametrize("name", ["projection", "rebuild", "verify"])
def test_the_store_benchmarks_run_and_check_what_they_measure(name: str) -> None:
    """A small log: the benchmarks write it, measure, and check their read models against a
    recount (figures at this size mean nothing; the targets are not asserted)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "bench",
            name,
            "--events",
            "3000",
            "--server-url",
            SERVER_URL,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["bench"] == name
    if name == "verify":
        assert set(report["entries_per_second"]) >= {"seal", "verify (database)", "verify (file)"}
    else:
        assert report["equals_recount"] is True
        assert all(p["events"] > 2900 for p in report["projections"].values())


CARDINAL = [sys.executable, "-m", "infra.cli"]
SMALL = ["--concurrency", "8", "--server-url", SERVER_URL]


@pytest.mark.parametrize("bulk", ["0", "100"])
def test_the_app_benchmark_counts_what_it_cast(bulk: str) -> None:
    """The in-process benchmark: every ballot answered with a receipt and in the log once."""
    done = subprocess.run(
        [*CARDINAL, "bench", "app", "--ballots", "1000", "--bulk", bulk, *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["bench"] == "app"
    assert report["ballots"] == 1000
    assert report["recorded"] == report["answered"] >= 1000
    assert report["cpu_us_per_ballot"] > 0
    assert report["context_switches_per_ballot"] >= 0  # read from every thread's status


def test_the_machine_benchmark_measures_round_trips_and_wakeups() -> None:
    """Every figure is measured, the local server's backend CPU included (the figures
    themselves vary with the machine's load: they are not asserted)."""
    done = subprocess.run(
        [*CARDINAL, "bench", "machine", "--rounds", "500", "--server-url", SERVER_URL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "What this machine charges per step" in done.stdout
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["bench"] == "machine"
    tcp = report["postgresql"]["tcp"]
    for client in ("psycopg", "libpq"):
        assert tcp[f"{client} wall µs"] > 0
        assert tcp[f"{client} client CPU µs"] > 0
        server = tcp[f"{client} server CPU µs"]  # None where the server is not on this host
        assert server is None or server > 0
    for size in (16, 1000):  # the writer's own code, on a scratch database
        commits = report[f"group commit of {size}"]
        assert commits["wall µs"] > 0
        assert commits["client CPU µs"] > 0
        assert commits["server CPU µs"] is None or commits["server CPU µs"] > 0
    assert set(report["wakeup"]) >= {"one core"}
    for figures in report["wakeup"].values():
        assert figures["round trip wall µs"] > 0
        assert figures["CPU µs, one side"] > 0
