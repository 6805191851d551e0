"""Hot-path series: what reaches Prometheus after a flush is what direct updates give."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Histogram

from infra import batched_metrics
from infra.batched_metrics import BatchedCounter, BatchedHistogram

BUCKETS = (0.001, 0.01, 0.1)
VALUES = (0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 7.0)  # bounds, between, beyond


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_a_flushed_histogram_equals_one_observed_directly() -> None:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("h", "h", ["route"], buckets=BUCKETS, registry=direct)
    kept = BatchedHistogram(
        Histogram("h", "h", ["route"], buckets=BUCKETS, registry=batched).labels("r")
    )
    for value in VALUES:
        plain.labels("r").observe(value)
        kept.observe(value)
    assert _samples(batched)[("h_count", "")] == 0  # nothing reaches the series unflushed
    batched_metrics.flush()
    assert _samples(batched) == _samples(direct)
    kept.observe(0.001)
    plain.labels("r").observe(0.001)
    batched_metrics.flush()
    assert _samples(batched) == _samples(direct)


def test_a_flushed_counter_holds_every_increment() -> None:
    registry = CollectorRegistry()
    counter = BatchedCounter(Counter("c", "c", ["kind"], registry=registry).labels("cast"))
    counter.inc()
    counter.inc(41)
    batched_metrics.flush()
    batched_metrics.flush()  # nothing pending: nothing added twice
    assert _samples(registry)[("c_total", "")] == 42


async def test_flushing_flushes_on_its_interval() -> None:
    registry = CollectorRegistry()
    counter = BatchedCounter(Counter("f", "f", registry=registry))
    task = asyncio.create_task(batched_metrics.flushing(interval=0.01))
    counter.inc()
    for _ in range(500):
        if _samples(registry)[("f_total", "")] == 1:
            break
        await asyncio.sleep(0.01)
    assert _samples(registry)[("f_total", "")] == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
