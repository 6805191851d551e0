"""The consumer's log of a batch it could not settle names the broker's reason."""

from __future__ import annotations

import aiormq.exceptions
from pamqp import commands

from infra.ingest.consumer import Abandoned, abandoned_reason


def test_an_abandoned_batch_names_the_brokers_reason() -> None:
    text = "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out"
    closed = aiormq.exceptions.ChannelPreconditionFailed(
        commands.Channel.Close(reply_code=406, reply_text=text)
    )
    abandoned = Abandoned()
    abandoned.__cause__ = closed
    assert abandoned_reason(abandoned) == f"406 {text}"


def test_an_abandoned_batch_without_a_cause_says_its_own_reason() -> None:
    assert abandoned_reason(Abandoned("every message came on a closed channel")) == (
        "every message came on a closed channel"
    )
    assert abandoned_reason(Abandoned()) == "its channel closed"
