"""Metrics that alerts read must not raise false alarms in processes they do not describe."""

from __future__ import annotations

import subprocess
import sys

SCRAPE = (
    "import prometheus_client, infra.metrics{setup}; "
    "print(prometheus_client.generate_latest().decode())"
)


def _scrape(setup: str = "") -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRAPE.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line.startswith("cardinal_store_up")]


def test_store_up_is_shown_only_by_processes_with_a_writer() -> None:
    """The relay and projection processes have no writer: an unlabelled gauge showed 0
    there, and `min(cardinal_store_up) == 0` paged for ever (review helper-31)."""
    assert _scrape() == []
    with_writer = _scrape("; from infra.store.health import StoreHealth; StoreHealth()")
    assert with_writer == ['cardinal_store_up{component="writer"} 1.0']


def _samples(setup: str, name: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRAPE.format(setup=setup)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line.startswith(name + "{")]


def test_dead_letters_are_counted_from_zero() -> None:
    """A series born at 1 has no increase(): the first dead letter raised no alert
    (CardinalDeadLetters; observability review)."""
    setup = (
        "; from projections.worker import ProjectionWorker"
        "; ProjectionWorker(type('Runner', (), {'name': 'tally'})(), 'postgresql://')"
    )
    assert _samples(setup, "cardinal_projection_rejected_total") == [
        'cardinal_projection_rejected_total{projection="tally"} 0.0'
    ]


def test_every_ingest_refusal_is_counted_from_zero() -> None:
    """The first refusal of each reason raised no alert (CardinalIngestRefusals): its series
    was born at 1, with no increase()."""
    from infra.ingest.messages import REFUSAL_REASONS

    setup = (
        "; from infra.ingest.consumer import Ingester"
        "; Ingester(None, None, 'amqp://localhost', 'ballots')"
    )
    assert sorted(_samples(setup, "cardinal_ingest_ballots_refused_total")) == sorted(
        f'cardinal_ingest_ballots_refused_total{{reason="{reason}"}} 0.0'
        for reason in REFUSAL_REASONS
    )


def test_the_refusal_reasons_name_every_error_a_ballot_is_refused_for() -> None:
    """Each domain error the ingest path refuses a ballot for is a reason shown at 0."""
    import pydantic

    from domain import errors
    from infra.ingest.messages import REFUSAL_REASONS, _reason

    met: list[Exception] = [
        errors.InvalidRequest("x"),
        errors.InvalidBallot("x"),
        errors.ElectionNotFound("x"),
        errors.ElectionNotOpen("x"),
        errors.AlreadyVoted("x"),
        errors.IdempotencyKeyReused("x"),
        errors.NotEligible("x"),
    ]
    try:
        pydantic.TypeAdapter(int).validate_python("x")
    except pydantic.ValidationError as error:
        met.append(error)
    assert {_reason(error) for error in met} <= set(REFUSAL_REASONS)


def test_every_protocol_refusal_is_counted_from_zero() -> None:
    """The answers the HTTP protocol writes itself (400, 431, 408, 503) are counted, each
    reason's series shown at 0 from the API's start: they are said at WARNING once a minute
    at most (a line each let one client fill the disk: the DoS review)."""
    from infra.metrics import HTTP_REFUSAL_REASONS

    assert sorted(_samples("; import api.protocol", "cardinal_http_protocol_refusals_total")) == (
        sorted(
            f'cardinal_http_protocol_refusals_total{{reason="{reason}"}} 0.0'
            for reason in HTTP_REFUSAL_REASONS
        )
    )
