"""The API's rate limits, shared by every process (infra/store/ratelimit.py keeps the counts).

- ``ballots``: ballot changes (casts, revisions, withdrawals) per client address,
  MAX_VOTES_PER_IP_PER_HOUR an hour, where ENABLE_RATE_LIMITING is on.
- ``login-account`` and ``login-address``: failed logins per account and per address,
  always on. An attempt takes a unit of each before the password is hashed (so a flood is
  refused cheaply) and a successful login gives both back. For these, an IPv6 address
  counts as its /56 (LOGIN_V6_PREFIX; below), not its /64.
- ``login-global``: failed logins from every address together (LOGIN_FAILURES_GLOBAL in
  LOGIN_WINDOW), always on: what bounds the argon2 work of a sign-in flood spread over many
  addresses (an IPv6 /48 holds 256 /56s). An attempt takes a unit of it too; once it is
  spent, an attempt is not hashed at all: only the administrator's address and password,
  told by an HMAC (api/login.py ``known``), get through, and anything else is a 429 that
  still counts against its account's and address's quotas. So a flood cannot lock the
  administrator out (docs/threat-model.md, "Sign-in"), except in a process that cannot tell
  the administrator (a hashed password no sign-in was accepted with there): its 429 is the
  same for everyone and gives its units back (api/routes/auth.py).

A row of the shared table names its subject by an HMAC under CARDINAL_SECRET, never as
typed: the table keeps when each key last voted, and a client's address beside that time
would link a voter to their ballot for anyone who reads the database. An address counts as
its IPv4 form when IPv4-mapped, and an IPv6 address as its /64 (one subscriber's network),
so that neither another spelling nor another address of the same network is a new quota.

Answers carry the IETF RateLimit-Policy and RateLimit fields
(draft-ietf-httpapi-ratelimit-headers-11); a refusal is a 429 with Retry-After. A check the
database does not answer within CHECK_WAIT (a second: the store hangs), or one made while the
writer has marked the event store down (refused at once), is a 503 with Retry-After, and the
request goes no further: this attempt records nothing (told in words that fit a keyed retry,
a keyless ballot, a withdrawal or a batch: ``_unchecked``). Its title says which: "Rate
limit not checked" when only the limiter's check went unanswered (the store may well be up),
"Event store unavailable" when the writer has the store marked down (LimiterStoreDown).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import ipaddress
import math
from dataclasses import dataclass

from starlette.requests import Request

from api.forwarded import TrustedProxies
from api.problems import TooManyRequests
from infra.runtime.settings import Settings
from infra.store.ratelimit import (
    CHECK_WAIT,
    Decision,
    LimiterStoreDown,
    LimiterUnavailable,
    Quota,
    SharedRateLimiter,
)
from infra.store.writer import KEYED_TAIL

HOUR = 3600.0
LOGIN_WINDOW = 900.0
LOGIN_FAILURES_PER_ACCOUNT = 10
LOGIN_FAILURES_PER_ADDRESS = 30
# Every address's failed sign-ins together: 120 argon2 checks (about 30 s of CPU) per 15
# minutes at most, once each address's and account's own quota is left aside.
LOGIN_FAILURES_GLOBAL = 120
# An IPv6 address counts for the sign-in quotas as its /56, a common delegation to one
# subscriber (a /64 is one of its 256 networks): a /48 is 256 quotas, not 65,536. No more
# for ballots, where a /56 may be many voters' (a campus, a provider's pool).
LOGIN_V6_PREFIX = 56
# A ballot change whose check the database did not answer (NO_ANSWER), or that was refused
# at once because the writer has marked the event store down (STORE_DOWN: a check would only
# wait CHECK_WAIT for a statement nobody answers). What follows the reason fits the request
# (``_unchecked``): one with an Idempotency-Key may be the retry of an attempt that was
# recorded, so it is told that this attempt recorded nothing, in the writer's words
# (KEYED_NOT_RECORDED), never that the ballot was not recorded (review D1); one without is
# not told to retry with a key; a withdrawal is told the voter's ballot stays as it was; a
# batch (keys per item, the header refused) is told about its ballots.
NO_ANSWER = (
    f"the rate limit could not be checked: the database did not answer within {CHECK_WAIT:g} s"
)
STORE_DOWN = "the rate limit could not be checked: the event store is unreachable"
NOT_RECORDED_TAIL = "the ballot was not recorded: retry shortly"
WITHDRAWAL_TAIL = (
    "the withdrawal was not recorded, and the voter's ballot stays as it was: retry shortly"
)
BATCH_TAIL = (
    "none of this request's ballots was recorded now (one recorded by an earlier attempt "
    "with its idempotency_key stays recorded): retry shortly, each ballot with the same "
    "idempotency_key if it had one"
)
BALLOT_UNCHECKED = f"{NO_ANSWER}; {NOT_RECORDED_TAIL}"
LOGIN_UNCHECKED = (
    f"the sign-in limit could not be checked: the database did not answer within "
    f"{CHECK_WAIT:g} s; retry shortly"
)
LOGIN_STORE_DOWN = (
    "the sign-in limit could not be checked: the event store is unreachable; retry shortly"
)


@dataclass(frozen=True)
class Policy:
    name: str
    quota: Quota

    @functools.cached_property
    def declared(self) -> str:
        """This policy as a RateLimit-Policy list member."""
        return f'"{self.name}";q={self.quota.limit};w={math.ceil(self.quota.period)}'

    def key(self, subject: str) -> str:
        return f"{self.name}:{subject}"


def _seconds(value: float) -> int:
    return max(1, math.ceil(value - 1e-6))


def fields(policy: Policy, decision: Decision) -> dict[str, str]:
    """RateLimit-Policy and RateLimit for one decision (and Retry-After for a refusal)."""
    if decision.allowed:
        window = f";t={_seconds(decision.next_unit)}" if decision.next_unit > 0 else ""
        state = f'"{policy.name}";r={decision.remaining}{window}'
        return {"RateLimit-Policy": policy.declared, "RateLimit": state}
    wait = _seconds(decision.next_unit)
    return {
        "RateLimit-Policy": policy.declared,
        "RateLimit": f'"{policy.name}";r=0;t={wait}',
        "Retry-After": str(wait),
    }


class RateLimits:
    """Every limit the API applies, with the client address resolved through proxies."""

    def __init__(self, settings: Settings, limiter: SharedRateLimiter, secret: str) -> None:
        self.limiter = limiter
        self._keyed = hmac.new(secret.encode(), b"rate-limit\x00", hashlib.sha256)
        self.proxies = TrustedProxies(settings.forwarded_allow_ips)
        self.ballots = (
            Policy("ballots", Quota(settings.max_votes_per_ip_per_hour, HOUR))
            if settings.enable_rate_limiting and settings.max_votes_per_ip_per_hour > 0
            else None
        )
        self.login_account = Policy(
            "login-account", Quota(LOGIN_FAILURES_PER_ACCOUNT, LOGIN_WINDOW)
        )
        self.login_address = Policy(
            "login-address", Quota(LOGIN_FAILURES_PER_ADDRESS, LOGIN_WINDOW)
        )
        self.login_global = Policy("login-global", Quota(LOGIN_FAILURES_GLOBAL, LOGIN_WINDOW))

    def client(self, request: Request) -> str:
        return self.proxies.client(request.scope)

    def subject(self, text: str) -> str:
        """The opaque name a quota's row is kept under (see the module's docstring)."""
        mac = self._keyed.copy()
        mac.update(text.encode())
        return mac.hexdigest()[:32]

    def _unanswered(self, request: Request) -> type[LimiterUnavailable]:
        """What a check the database did not answer in time is refused as: the limiter's
        own refusal ("Rate limit not checked", api/problems.py), unless the store is what is
        away ("Event store unavailable"): the writer has marked it down meanwhile, or the
        limiter's connection to it failed and was not made again. Either way the writer is
        asked to probe the store: with the limiter in front, no ballot reaches the writer to
        find an outage out, and every check would wait out its CHECK_WAIT (review mr1)."""
        writer = getattr(getattr(request.app.state, "services", None), "writer", None)
        if writer is not None:
            writer.suspect()
        if store_down(request) or self.limiter.unreachable is not None:
            return LimiterStoreDown
        return LimiterUnavailable

    def address(self, request: Request, v6_prefix: int = 64) -> str:
        return self.subject(quota_address(self.client(request), v6_prefix))

    async def ballot(self, request: Request, ballots: int = 1) -> dict[str, str] | None:
        """The RateLimit fields for ``ballots`` ballot changes (a batch takes as many units
        as it holds ballots); TooManyRequests past the limit."""
        policy = self.ballots
        if policy is None:
            return None
        if store_down(request):
            raise LimiterStoreDown(_unchecked(request, STORE_DOWN))
        try:
            decision = await self.limiter.hit(
                policy.key(self.address(request)), policy.quota, ballots
            )
        except LimiterUnavailable:
            raise self._unanswered(request)(_unchecked(request, NO_ANSWER)) from None
        answer = fields(policy, decision)
        if decision.allowed:
            return answer
        limit = policy.quota.limit
        if ballots > limit:
            answer.pop("Retry-After", None)  # (no wait makes it fit)
            detail = (
                f"this request holds {ballots} ballot changes, more than one address may make "
                f"in an hour ({limit}, MAX_VOTES_PER_IP_PER_HOUR): send fewer at a time"
            )
        elif ballots > 1:
            # (a batch: until enough units are back, each one step after the next)
            wait = decision.next_unit + (ballots - decision.remaining - 1) * policy.quota.step
            answer["Retry-After"] = str(_seconds(wait))
            detail = (
                f"this request holds {ballots} ballot changes, and this address has "
                f"{decision.remaining} left of its {limit} an hour (MAX_VOTES_PER_IP_PER_HOUR): "
                f"send fewer, or try again in {answer['Retry-After']} seconds"
            )
        else:
            detail = (
                f"this address has made {limit} ballot changes in the last hour, the most "
                f"allowed (MAX_VOTES_PER_IP_PER_HOUR); try again in {answer['Retry-After']} "
                "seconds"
            )
        raise TooManyRequests(detail, answer, [policy.name])

    async def login_attempt(self, request: Request, account: str) -> LoginAttempt:
        """Take one unit of the account's, the address's and the global failure quotas, or
        refuse (429). Only the global one spent: the attempt comes back with ``over_budget``,
        the refusal the route raises unless the credentials are ``known`` without argon2."""
        keys = [
            (self.login_account, self.login_account.key(self.subject(_account(account)))),
            (
                self.login_address,
                self.login_address.key(self.address(request, LOGIN_V6_PREFIX)),
            ),
            (self.login_global, self.login_global.key("all")),
        ]
        if store_down(request):
            raise LimiterStoreDown(LOGIN_STORE_DOWN)
        try:
            decisions = await asyncio.gather(
                *(self.limiter.hit(key, policy.quota) for policy, key in keys)
            )
        except LimiterUnavailable:
            raise self._unanswered(request)(LOGIN_UNCHECKED) from None
        attempt = LoginAttempt(self.limiter, keys)
        refused = [
            (policy, decision)
            for (policy, _), decision in zip(keys, decisions, strict=True)
            if not decision.allowed
        ]
        if not refused:
            return attempt
        wait = max(_seconds(decision.next_unit) for _, decision in refused)
        refusal = TooManyRequests(
            (
                "too many failed sign-ins, from every address together; try again in "
                f"{wait} seconds"
                if [policy for policy, _ in refused] == [self.login_global]
                else f"too many failed sign-ins for this account or from this address; "
                f"try again in {wait} seconds"
            ),
            {
                "RateLimit-Policy": ", ".join(policy.declared for policy, _ in keys),
                "RateLimit": ", ".join(
                    f'"{policy.name}";r=0;t={_seconds(decision.next_unit)}'
                    for policy, decision in refused
                ),
                "Retry-After": str(wait),
            },
            [policy.name for policy, _ in refused],
        )
        if refusal.policies == [self.login_global.name]:
            attempt.over_budget = refusal
            attempt.took = [d.allowed for d in decisions]
            return attempt
        await attempt.give_back(only=[d.allowed for d in decisions])
        raise refusal


class LoginAttempt:
    """The units one sign-in attempt took; a success gives them back."""

    def __init__(self, limiter: SharedRateLimiter, keys: list[tuple[Policy, str]]) -> None:
        self.limiter = limiter
        self.keys = keys
        # The global budget's refusal, when it alone was spent; which units were taken.
        self.over_budget: TooManyRequests | None = None
        self.took: list[bool] | None = None

    async def give_back(self, only: list[bool] | None = None) -> None:
        """(A give-back the database does not answer in time is still sent, once, in the
        background: the sign-in need not wait for it.)"""
        only = self.took if only is None else only
        with contextlib.suppress(LimiterUnavailable):
            await asyncio.gather(
                *(
                    self.limiter.hit(key, policy.quota, -1)
                    for n, (policy, key) in enumerate(self.keys)
                    if only is None or only[n]
                )
            )


def store_down(request: Request) -> bool:
    """Whether the writer has marked the event store down (it probes the store meanwhile,
    and marks it back up when it answers): a check then is refused at once, not after
    CHECK_WAIT spent waiting for a statement the store cannot answer."""
    services = getattr(request.app.state, "services", None)
    writer = getattr(services, "writer", None)
    return writer is not None and not writer.health.up


def _unchecked(request: Request, reason: str) -> str:
    """A ballot change refused for want of its check, in words that fit the request."""
    if request.url.path.endswith("/batch"):
        tail = BATCH_TAIL
    elif "idempotency-key" in request.headers:
        tail = KEYED_TAIL
    elif request.url.path.endswith("/withdrawals"):
        tail = WITHDRAWAL_TAIL
    else:
        tail = NOT_RECORDED_TAIL
    return f"{reason}; {tail}"


def _account(account: str) -> str:
    return "account:" + account.strip().lower()


def quota_address(client: str, v6_prefix: int = 64) -> str:
    """The address a quota counts: IPv4-mapped IPv6 as IPv4, other IPv6 as its /64 (or
    ``v6_prefix``)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, v6_prefix), strict=False))
    return str(address)
