"""The sign-in quotas (api/ratelimit.py) without a database: a global budget of failed
sign-ins from every address together, left to the route when it alone is spent (the
administrator's credentials pass it without argon2), and IPv6 counted per /56."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from api.problems import TooManyRequests
from api.ratelimit import RateLimits
from infra.store.ratelimit import Decision, Quota
from tests.servers import settings_for


class Recording:
    """A limiter that grants every unit but the ones of ``spent`` keys, and records keys."""

    def __init__(self, spent: tuple[str, ...] = ()) -> None:
        self.spent = spent
        self.hits: list[tuple[str, int]] = []
        self.unreachable: str | None = None

    async def hit(self, key: str, quota: Quota, cost: int = 1) -> Decision:
        self.hits.append((key, cost))
        allowed = cost < 0 or not key.startswith(self.spent)
        return Decision(allowed, quota.limit - 1 if allowed else 0, 0.0 if allowed else 7.5)


def _limits(limiter: Recording) -> RateLimits:
    settings = settings_for(
        "postgresql://nobody@127.0.0.1:1/none", forwarded_allow_ips=("127.0.0.1",)
    )
    return RateLimits(settings, limiter, "s" * 40)  # type: ignore[arg-type]


def _request(client: str) -> Request:
    writer = SimpleNamespace(health=SimpleNamespace(up=True), suspect=lambda: None)
    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(writer=writer)))
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/api/auth/login",
            "query_string": b"",
            "headers": [],
            "client": (client, 40000),
            "server": ("testserver", 80),
            "scheme": "http",
            "app": app,
        }
    )


def _address_key(limiter: Recording) -> str:
    return next(key for key, _ in limiter.hits if key.startswith("login-address:"))


async def test_sign_ins_count_an_ipv6_address_as_its_56() -> None:
    keys = []
    for client in ("2001:db8:0:1::1", "2001:db8:0:ff:1:2:3:4", "2001:db8:0:100::1"):
        limiter = Recording()
        await _limits(limiter).login_attempt(_request(client), "someone@example.org")
        keys.append(_address_key(limiter))
    assert keys[0] == keys[1]  # two /64s of one /56
    assert keys[0] != keys[2]  # the next /56
    # Ballots still count a /64.
    limits = _limits(Recording())
    assert limits.address(_request("2001:db8:0:1::1")) != limits.address(
        _request("2001:db8:0:2::1")
    )


async def test_the_global_budget_spent_alone_is_left_to_the_route() -> None:
    limiter = Recording(spent=("login-global:",))
    limits = _limits(limiter)
    assert limits.login_global.quota.limit == 120
    attempt = await limits.login_attempt(_request("192.0.2.9"), "someone@example.org")
    refusal: Any = attempt.over_budget
    assert refusal is not None
    assert refusal.policies == ["login-global"]
    assert refusal.headers["Retry-After"] == "8"
    # No unit given back yet (a failure counts against the account and the address)...
    assert all(cost == 1 for _, cost in limiter.hits)
    # ...and a success gives back only the units taken.
    await attempt.give_back()
    given = [key for key, cost in limiter.hits if cost == -1]
    assert sorted(key.split(":")[0] for key in given) == ["login-account", "login-address"]


async def test_an_address_or_account_spent_is_refused_as_before() -> None:
    limiter = Recording(spent=("login-address:", "login-global:"))
    with pytest.raises(TooManyRequests) as refused:
        await _limits(limiter).login_attempt(_request("192.0.2.9"), "someone@example.org")
    assert refused.value.policies == ["login-address", "login-global"]
    assert "for this account or from this address" in refused.value.detail
    given = [key for key, cost in limiter.hits if cost == -1]
    assert [key.split(":")[0] for key in given] == ["login-account"]
