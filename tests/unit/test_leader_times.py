"""A leader's times are checked as they are given (merge review of a08bc93): a keepalive at
or above its idle limit less the allowance kept the session silent for the limit between
keepalives, and every loss of it was then said as the session's end, none as an outage."""

from __future__ import annotations

import pytest

from infra.store.leader import KEEPALIVE, LEADER_IDLE_TIMEOUT, LeaderTimes


def test_a_keepalive_under_half_the_limit_or_none_is_taken() -> None:
    assert LeaderTimes(LEADER_IDLE_TIMEOUT, KEEPALIVE).keepalive == KEEPALIVE
    assert LeaderTimes(3.0, 1.4).keepalive == 1.4
    assert LeaderTimes(1.0, None).keepalive is None  # no keepalive


@pytest.mark.parametrize(
    ("idle_timeout", "keepalive"),
    [(3.0, 1.5), (3.0, 3.0), (1.0, 3600.0), (3.0, 0.0), (3.0, -1.0), (0.0, None), (-1.0, None)],
)
def test_a_keepalive_too_slow_for_the_limit_is_refused(
    idle_timeout: float, keepalive: float | None
) -> None:
    with pytest.raises(ValueError, match="leader's"):
        LeaderTimes(idle_timeout, keepalive)
