"""The HTTP benchmark's load: clients in flight, what each run measured, and its progress.

One driver serves every kind of run: single ballots (``POST .../ballots``), the bulk path
(``POST .../ballots/batch`` with ``per_request`` ballots each) and the bare reference
endpoint, so the figures compared in one report were taken the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from infra.bench.freshness import FreshnessWatcher
from infra.bench.http_report import percentiles
from infra.bench.loadgen import ConnectionClosed, LeanConnection

console = Console()
# Roles whose processes run before and after a stack (infra/bench/stack.py).
OUTLIVE_THE_STACK = frozenset({"PostgreSQL background", "RabbitMQ node"})


@dataclass
class RunFigures:
    """What one run measured. Rates count ballots; latencies are per request."""

    label: str
    seconds: float = 0.0
    accepted: int = 0
    requests: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # in the order answered
    # Second by second: where each second starts in ``latencies``, and its accepted count.
    second_starts: list[int] = field(default_factory=list)
    accepted_by_second: list[int] = field(default_factory=list)
    freshness: list[float] = field(default_factory=list)
    unseen: int = 0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_us_per_ballot: dict[str, float] = field(default_factory=dict)
    context_switches_per_ballot: dict[str, float] = field(default_factory=dict)
    scanned_per_ballot: float | None = None  # rows PostgreSQL read by whole-table scans
    counted_once: bool | None = None
    matches_recount: bool | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    def answered(self, second: int, latency: float, accepted: int) -> None:
        while len(self.second_starts) <= second:
            self.second_starts.append(len(self.latencies))
            self.accepted_by_second.append(0)
        self.requests += 1
        self.latencies.append(latency)
        self.accepted += accepted
        self.accepted_by_second[second] += accepted

    def cpu_per_ballot(self, before: dict[str, float], after: dict[str, float]) -> None:
        """Each role's CPU time between two readings, in µs per accepted ballot."""
        self.cpu_us_per_ballot = self._per_ballot(before, after, 1e6)

    def switches_per_ballot(self, before: dict[str, int], after: dict[str, int]) -> None:
        """Each role's context switches between two readings, per accepted ballot."""
        self.context_switches_per_ballot = self._per_ballot(before, after, 1, digits=2)

    def _per_ballot(
        self, before: Mapping[str, float], after: Mapping[str, float], scale: float, digits: int = 1
    ) -> dict[str, float]:
        if not self.accepted:
            return {}
        shares: dict[str, float] = {}
        for role, spent in after.items():
            if role not in before and role in OUTLIVE_THE_STACK:
                continue  # not seen at the start: its whole life is not this run's
            shares[role] = round((spent - before.get(role, 0)) / self.accepted * scale, digits)
        stack = [v for k, v in shares.items() if not k.startswith("load generator")]
        shares["total (without the load generator)"] = round(sum(stack), digits)
        return shares

    def refuse(self, status: int, detail: str) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1
        if self.refused[status] == 1:  # one example of each refusal
            self.notes.append(f"first {status}: {detail}")

    def p99_by_second(self) -> list[float]:
        """Each second's p99 latency in ms (0 for a second with no answers)."""
        ends = [*self.second_starts[1:], len(self.latencies)]
        return [
            percentiles(self.latencies[start:end])["p99"] or 0.0
            for start, end in zip(self.second_starts, ends, strict=True)
        ]

    def whole_seconds(self) -> int:
        """Seconds that ran to their end (the last one is cut short)."""
        return max(1, len(self.accepted_by_second) - 1)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "seconds": round(self.seconds, 2),
            "accepted": self.accepted,
            "requests": self.requests,
            "accepted_per_second": round(self.rate, 1),
            "latency_ms": percentiles(self.latencies),
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
            "errors": self.errors,
            "freshness_ms": percentiles(self.freshness),
            "not_visible": self.unseen,
            "peak_rss_mb": self.peak_rss_mb,
            "cpu_us_per_ballot": self.cpu_us_per_ballot,
            "context_switches_per_ballot": self.context_switches_per_ballot,
            "rows_scanned_per_ballot": self.scanned_per_ballot,
            "counted_once": self.counted_once,
            "matches_recount": self.matches_recount,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class Load:
    """What the clients send, and for how long."""

    port: int
    token: str
    elections: list[str]
    ballot: Callable[[int], dict[str, Any]]  # the n-th ballot's content
    concurrency: int
    duration: float
    ballots: int | None = None  # a fixed number instead of a duration
    rate: float | None = None  # open loop, ballots per second
    per_request: int = 1  # more than one: the bulk path
    forwarded: bool = False  # each client an address of its own behind a trusted proxy

    def request(self, n: int, run_id: str) -> tuple[str, dict[str, Any]]:
        """The path and body of the request that carries ballots n, n+1, ...."""
        election_id = self.elections[(n // self.per_request) % len(self.elections)]
        if self.per_request == 1:
            body = {"voter_id": f"{run_id}-{n}", **self.ballot(n)}
            return f"/api/elections/{election_id}/ballots", body
        ballots = [
            {"voter_id": f"{run_id}-{m}", **self.ballot(m)} for m in range(n, n + self.per_request)
        ]
        return f"/api/elections/{election_id}/ballots/batch", {"ballots": ballots}


async def drive(
    load: Load, figures: RunFigures, watcher: FreshnessWatcher | None
) -> list[tuple[str, int]]:
    """Run the clients; the (ballot_id, position) of every accepted ballot."""
    receipts: list[tuple[str, int]] = []
    sink = _Sink(receipts, figures, watcher)
    started = time.perf_counter()
    deadline = started + load.duration
    remaining = [load.ballots] if load.ballots else None
    interval = load.concurrency * load.per_request / load.rate if load.rate else 0.0
    run_id = uuid.uuid4().hex[:8]
    counter = iter(range(0, 10**12, load.per_request))

    def more() -> bool:
        if remaining is not None:
            if remaining[0] is None or remaining[0] <= 0:
                return False
            remaining[0] -= load.per_request
            return True
        return time.perf_counter() < deadline

    async def client(index: int) -> None:
        connection = LeanConnection("127.0.0.1", load.port, load.token)
        # Each client its own address behind the proxy (198.18.0.0/15: benchmarking).
        forwarded = (
            {"X-Forwarded-For": f"198.18.{index // 250}.{index % 250 + 1}"}
            if load.forwarded
            else None
        )
        next_send = time.perf_counter() + (interval * index / load.concurrency)
        try:
            while more():
                if interval:
                    delay = next_send - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_send += interval
                path, body = load.request(next(counter), run_id)
                sent = time.perf_counter()
                try:
                    reply = await connection.request("POST", path, body, forwarded)
                except (ConnectionClosed, OSError):
                    figures.errors += 1
                    continue
                answered = time.perf_counter()
                accepted = _accepted(reply.status, reply.json(), answered, sink)
                figures.answered(int(answered - started), answered - sent, accepted)
        finally:
            await connection.close()

    with live_progress(figures, load, started):
        await asyncio.gather(*(client(i) for i in range(load.concurrency)))
    figures.seconds = time.perf_counter() - started
    return receipts


@dataclass(frozen=True)
class _Sink:
    receipts: list[tuple[str, int]]
    figures: RunFigures
    watcher: FreshnessWatcher | None


def _accepted(status: int, document: Any, answered: float, sink: _Sink) -> int:
    """How many ballots an answer accepted; their receipts and refusals noted."""
    if status == 201:  # one ballot
        sink.receipts.append((document["ballot_id"], document["position"]))
        if sink.watcher is not None:
            sink.watcher.expect(document["position"], answered)
        return 1
    if status != 200:
        sink.figures.refuse(status, document.get("detail", ""))
        return 0
    count, last = 0, 0
    for item in document["results"]:  # the bulk path: one receipt or problem per ballot
        if "ballot_id" in item:
            sink.receipts.append((item["ballot_id"], item["position"]))
            count, last = count + 1, max(last, item["position"])
        else:
            sink.figures.refuse(int(item["status"]), item.get("detail", ""))
    if count and sink.watcher is not None:
        sink.watcher.expect(last, answered)  # the batch is visible when its last ballot is
    return count


@contextlib.contextmanager
def live_progress(figures: RunFigures, load: Load, started: float) -> Iterator[None]:
    """A progress bar (time, or ballots sent) with the current rate, twice a second."""
    total = float(load.ballots) if load.ballots else load.duration
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(figures.label, total=total, rate="")

        async def tick() -> None:
            seen, then = 0, started
            while True:
                await asyncio.sleep(0.5)
                now, accepted = time.perf_counter(), figures.accepted
                rate = f"{(accepted - seen) / (now - then):,.0f} ballots/s"
                seen, then = accepted, now
                done = accepted if load.ballots else min(now - started, total)
                bar.update(task, completed=done, rate=rate)

        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
