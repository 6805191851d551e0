"""What a ballot change refused for want of its rate-limit check is told (review: every one
was told "the ballot was not recorded: retry shortly (with the same Idempotency-Key)"). A
keyed retry may follow an attempt that was recorded, so it is told that this attempt
recorded nothing, in the writer's words; a keyless request is not told to retry with a key
it never sent; a batch (keys per item, the header refused) hears about its ballots; a
withdrawal is not told that the event store is unreachable when it is up. And while the
writer has marked the store down, the check is refused at once, not after CHECK_WAIT."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from api import problems
from api.ratelimit import RateLimits
from domain.ports import StoreUnavailable
from infra.store.ratelimit import CHECK_WAIT, LimiterUnavailable, Quota
from infra.store.writer import KEYED_NOT_RECORDED
from tests.servers import settings_for

ELECTION = "/api/elections/4f0c1a52-3f0e-4d59-9d43-6a2c8a3c1f00"


class Unanswered:
    """A limiter whose database does not answer: each check is given up after ``wait``."""

    def __init__(self, wait: float = 0.0) -> None:
        self.wait = wait
        self.checks = 0
        self.unreachable: str | None = None  # (its connection stands: statements hang)

    async def hit(self, key: str, quota: Quota, cost: int = 1) -> Any:
        self.checks += 1
        await asyncio.sleep(self.wait)
        raise LimiterUnavailable("the rate limit's database did not answer")


def _limits(limiter: Unanswered) -> RateLimits:
    settings = settings_for(
        "postgresql://nobody@127.0.0.1:1/none",
        enable_rate_limiting=True,
        max_votes_per_ip_per_hour=5,
    )
    return RateLimits(settings, limiter, "s" * 40)  # type: ignore[arg-type]


def _request(path: str, keyed: bool = False, store_up: bool = True) -> Request:
    writer = SimpleNamespace(health=SimpleNamespace(up=store_up), suspect=lambda: None)
    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(writer=writer)))
    headers = [(b"idempotency-key", b"k-1")] if keyed else []
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": ELECTION + path,
            "query_string": b"",
            "headers": headers,
            "client": ("192.0.2.7", 40000),
            "server": ("testserver", 80),
            "scheme": "http",
            "app": app,
        }
    )


async def _told(request: Request, limiter: Unanswered | None = None) -> str:
    """The problem detail the request is answered with."""
    limits = _limits(limiter or Unanswered())
    batch = request.url.path.endswith("/batch")
    with pytest.raises(StoreUnavailable) as refused:
        await limits.ballot(request, 3 if batch else 1)
    answer = problems.store_unavailable(request, refused.value)
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    detail: str = json.loads(bytes(answer.body))["detail"]
    return detail


async def test_a_keyed_ballot_or_withdrawal_is_told_this_attempt_recorded_nothing() -> None:
    keyed_words = KEYED_NOT_RECORDED.split("; ", 1)[1]  # (the writer's, after its reason)
    for path in ("/ballots", "/withdrawals"):
        detail = await _told(_request(path, keyed=True))
        assert detail.startswith("the rate limit could not be checked"), detail
        assert detail.endswith(keyed_words), detail
        assert "not recorded" not in detail, detail


async def test_a_keyless_ballot_is_not_told_to_retry_with_a_key() -> None:
    detail = await _told(_request("/ballots"))
    assert detail.startswith("the rate limit could not be checked"), detail
    assert "the ballot was not recorded: retry shortly" in detail, detail
    assert "Idempotency-Key" not in detail, detail


async def test_a_keyless_withdrawal_is_told_in_a_withdrawals_words_not_the_store_is_down() -> None:
    detail = await _told(_request("/withdrawals"))
    assert detail.startswith("the rate limit could not be checked"), detail
    assert "event store is unreachable" not in detail, detail
    assert "the withdrawal was not recorded, and the voter's ballot stays as it was" in detail
    assert "Idempotency-Key" not in detail, detail


async def test_a_batch_is_told_about_its_ballots_and_their_own_keys() -> None:
    detail = await _told(_request("/ballots/batch"))
    assert detail.startswith("the rate limit could not be checked"), detail
    assert "Idempotency-Key" not in detail, detail  # (the bulk path refuses that header)
    assert "none of this request's ballots was recorded now" in detail, detail
    assert "each ballot with the same idempotency_key" in detail, detail


async def test_while_the_store_is_marked_down_the_check_is_refused_at_once() -> None:
    limiter = Unanswered(wait=CHECK_WAIT)  # (what waiting for the statement would cost)
    for path, keyed in (("/ballots", False), ("/ballots", True), ("/withdrawals", False)):
        started = time.monotonic()
        detail = await asyncio.wait_for(
            _told(_request(path, keyed, store_up=False), limiter), CHECK_WAIT / 2
        )
        assert time.monotonic() - started < CHECK_WAIT / 2
        assert detail.startswith(
            "the rate limit could not be checked: the event store is unreachable; "
        ), detail
    assert limiter.checks == 0
    limits = _limits(limiter)
    with pytest.raises(StoreUnavailable, match="event store is unreachable"):
        await asyncio.wait_for(
            limits.login_attempt(_request("/login", store_up=False), "a@example.org"),
            CHECK_WAIT / 2,
        )
    assert limiter.checks == 0


async def _refusal(request: Request, limiter: Unanswered | None = None) -> dict[str, Any]:
    """The problem document a ballot change refused for want of its check is answered with."""
    limits = _limits(limiter or Unanswered())
    with pytest.raises(StoreUnavailable) as refused:
        await limits.ballot(request)
    answer = problems.store_unavailable(request, refused.value)
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    document: dict[str, Any] = json.loads(bytes(answer.body))
    return document


async def test_a_check_that_went_unanswered_is_titled_as_the_limiters_not_the_stores() -> None:
    """The limiter's own check not answering in time was titled "Event store unavailable"
    (type store-unavailable) on a store that was up (review): an operator looked for an
    outage that was not there. It has a title and type of its own; while the writer has the
    store marked down (at once, or by the time the check gives up), the store is what is
    away, and is named."""
    for path, keyed in (("/ballots", False), ("/ballots", True), ("/withdrawals", False)):
        up = await _refusal(_request(path, keyed))
        assert up["title"] == "Rate limit not checked", up
        assert up["type"] == problems.PREFIX + "rate-limit-not-checked", up
        assert up["detail"].startswith("the rate limit could not be checked: the database"), up
        down = await _refusal(_request(path, keyed, store_up=False))
        assert down["title"] == "Event store unavailable", down
        assert down["type"] == problems.PREFIX + "store-unavailable", down

    # Marked down while the check waited: the store, with the check's own reason.
    request = _request("/ballots")
    health = request.app.state.services.writer.health

    class MarkedDownMeanwhile(Unanswered):
        async def hit(self, key: str, quota: Quota, cost: int = 1) -> Any:
            health.up = False
            return await super().hit(key, quota, cost)

    meanwhile = await _refusal(request, MarkedDownMeanwhile())
    assert meanwhile["title"] == "Event store unavailable", meanwhile
    assert "did not answer within" in meanwhile["detail"], meanwhile

    # A sign-in's check alike.
    limits = _limits(Unanswered())
    for store_up, title in ((True, "Rate limit not checked"), (False, "Event store unavailable")):
        login = _request("/login", store_up=store_up)
        with pytest.raises(StoreUnavailable) as refused:
            await limits.login_attempt(login, "a@example.org")
        answer = problems.store_unavailable(login, refused.value)
        assert json.loads(bytes(answer.body))["title"] == title
        assert answer.headers["retry-after"] == "5"
