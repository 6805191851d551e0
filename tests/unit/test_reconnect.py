"""Our pools reconnect at least every RECONNECT_AT_MOST seconds (infra/store/reconnect.py),
by psycopg_pool's own schedule: what it is built on is held here (an upgrade that changed
it fails this, not production). The outage itself: tests/integration/test_store_outage.py."""

from __future__ import annotations

import inspect

import pytest
from eventsourcing.utils import Environment
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from infra.runtime.bootstrap import _pool
from infra.store import store_environment
from infra.store.persistence import AliveFactory
from infra.store.reconnect import (
    RECONNECT_AT_MOST,
    CappedAttempt,
    ReconnectingPool,
    ReconnectingStorePool,
)

URL = "postgresql://nobody@127.0.0.1:1/nothing"


def test_the_waits_between_attempts_grow_to_at_most_the_cap() -> None:
    attempt = CappedAttempt(timeout=300)
    delays = []
    for now in range(12):
        attempt.update_delay(float(now))
        delays.append(attempt.delay)
    assert delays[0] < 1.2  # psycopg_pool's start: 1 s, doubling
    assert delays[1] > delays[0]
    assert max(delays) == RECONNECT_AT_MOST
    assert not attempt.time_to_give_up(12.0)


@pytest.mark.parametrize("pool", [AsyncConnectionPool, ConnectionPool])
def test_psycopg_pool_still_starts_a_reconnection_with_the_attempt_it_is_given(
    pool: type[AsyncConnectionPool] | type[ConnectionPool],
) -> None:
    assert list(inspect.signature(pool._add_connection).parameters) == [
        "self",
        "attempt",
        "growing",
    ]


def test_our_pools_are_the_reconnecting_ones() -> None:
    assert isinstance(_pool(URL, 2, name="reads"), ReconnectingPool)
    factory = AliveFactory(Environment("test", store_environment(URL)))  # (connects later)
    assert type(factory.datastore.pool) is ReconnectingStorePool


@pytest.mark.parametrize("pool", [AsyncConnectionPool, ConnectionPool])
def test_psycopg_pool_still_lends_and_takes_back_through_what_our_pools_override(
    pool: type[AsyncConnectionPool] | type[ConnectionPool],
) -> None:
    """Our pools pass over hung-up connections in ``_getconn_unchecked`` and give them back
    with ``_putconn(conn, from_getconn=True)``: psycopg_pool's internals, held here."""
    assert list(inspect.signature(pool._getconn_unchecked).parameters) == ["self", "timeout"]
    assert list(inspect.signature(pool._putconn).parameters) == [
        "self",
        "conn",
        "from_getconn",
    ]
