"""Sign-in under load (the denial-of-service review): each failed sign-in cost an argon2
check (about 0.27 s of CPU), even with no account configured; checks queued without bound
(requests waited 24.6 s, never a 503), a client that had hung up was still checked, and only
per-account and per-address quotas bounded the work (an IPv6 /48 is 65,536 /64s).

No assertion here is about time: argon2 checks are counted, the queue is read from the
semaphore's waiters, and the answers are compared."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher

from api import ratelimit
from api.login import CONCURRENT_CHECKS, AdminAccount
from infra.store.migrations import migrate
from tests.databases import create_database, drop_database
from tests.integration.client import assert_problem
from tests.servers import ADMIN_EMAIL, ADMIN_PASSWORD, running_api, settings_for

# (the per-queue bound of api/login.py; literal here so that the test runs on older code)
WAITING = 2 * CONCURRENT_CHECKS
LOGIN = "/api/auth/login"
_addresses = itertools.count(1)


def _address() -> dict[str, str]:
    n = next(_addresses)
    return {"X-Forwarded-For": f"198.51.100.{n % 250 + 1}" if n < 250 else f"203.0.113.{n % 250}"}


@pytest.fixture(scope="module")
async def server(database_url: str) -> AsyncIterator[str]:
    settings = settings_for(database_url, forwarded_allow_ips=("127.0.0.1",))
    async with running_api(settings, projections=()) as url:
        yield url


@pytest.fixture
def argon2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every argon2 hash and verify this process makes."""
    calls: list[str] = []
    verify, hash_ = PasswordHasher.verify, PasswordHasher.hash

    def counted_verify(self: PasswordHasher, *args: Any, **kwargs: Any) -> Any:
        calls.append("verify")
        return verify(self, *args, **kwargs)

    def counted_hash(self: PasswordHasher, *args: Any, **kwargs: Any) -> Any:
        calls.append("hash")
        return hash_(self, *args, **kwargs)

    monkeypatch.setattr(PasswordHasher, "verify", counted_verify)
    monkeypatch.setattr(PasswordHasher, "hash", counted_hash)
    return calls


class Held:
    """AdminAccount._check held until ``release``: what it was asked, and the account."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.checked: list[str] = []
        self.accounts: list[AdminAccount] = []

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def held(account: AdminAccount, email: str, password: str) -> bool:
            self.accounts.append(account)
            self.checked.append(email)
            self.gate.wait(60)
            return False

        monkeypatch.setattr(AdminAccount, "_check", held)

    def waiting(self) -> int:
        """Sign-ins waiting for a check's turn (the semaphore's waiters)."""
        if not self.accounts:
            return 0
        waiters = self.accounts[0]._checks._waiters or ()
        return sum(1 for waiter in waiters if not waiter.cancelled())


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[Held]:
    checks = Held()
    checks.patch(monkeypatch)
    yield checks
    checks.gate.set()


async def _until(condition: Callable[[], bool], within: float = 30.0) -> bool:
    """Whether ``condition`` came true within ``within`` seconds (polled)."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _fail(http: httpx.AsyncClient, n: int | str) -> httpx.Response:
    return await http.post(
        LOGIN,
        json={"email": f"guess-{n}@example.org", "password": "wrong password!"},
        headers=_address(),
    )


async def test_without_an_account_a_sign_in_is_refused_without_argon2(
    server: str, database_url: str, argon2_calls: list[str]
) -> None:
    """SUPER_ADMIN_EMAIL unset: no sign-in can succeed, and there is no address to hide.
    Each failure still ran argon2 (against a dummy hash): 0.27 s of CPU for nothing."""
    async with httpx.AsyncClient(base_url=server, timeout=60) as http:
        configured = await _fail(http, "configured")
    settings = settings_for(
        database_url,
        forwarded_allow_ips=("127.0.0.1",),
        super_admin_email=None,
        super_admin_password=None,
    )
    argon2_calls.clear()
    async with (
        running_api(settings, projections=()) as bare,
        httpx.AsyncClient(base_url=bare, timeout=60) as http,
    ):
        answers = [await _fail(http, n) for n in range(3)]
        answers.append(
            await http.post(
                LOGIN, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers=_address()
            )
        )
    assert argon2_calls == []
    for answer in answers:  # the documented 401, as a configured API's
        assert_problem(answer, 401, "email address or password is wrong")
        assert answer.json() == configured.json()
        assert answer.headers["www-authenticate"] == configured.headers["www-authenticate"]


async def test_a_sign_in_finding_the_queue_full_is_503_busy_at_once(
    server: str, held: Held
) -> None:
    """Checks queued without bound: a flood had sign-ins wait 24.6 s, and every one queued
    was checked in the end. Past WAITING waiting, another is refused at once: 503 Busy."""
    async with httpx.AsyncClient(base_url=server, timeout=120) as http:
        queued = [
            asyncio.create_task(_fail(http, f"queued-{n}"))
            for n in range(CONCURRENT_CHECKS + WAITING)
        ]
        assert await _until(lambda: len(held.checked) == CONCURRENT_CHECKS)
        assert await _until(lambda: held.waiting() == WAITING)
        extra = asyncio.create_task(_fail(http, "one-too-many"))
        # (answered while every check is still held: or, on a queue without bound, not)
        await _until(extra.done)
        held.gate.set()
        busy = await extra
        answers = await asyncio.gather(*queued)
    problem = assert_problem(busy, 503, "retry after a second")
    assert problem["type"] == "urn:cardinal-vote:problem:busy"
    assert problem["title"] == "Busy"
    assert busy.headers["retry-after"] == "1"
    assert [answer.status_code for answer in answers] == [401] * len(queued)
    assert "guess-one-too-many@example.org" not in held.checked
    assert len(held.checked) == CONCURRENT_CHECKS + WAITING


async def test_a_sign_in_whose_client_hung_up_while_queued_is_not_checked(
    server: str, held: Held
) -> None:
    """30 sign-ins sent and closed at once by their client still cost 5.8 s of CPU."""
    host, port = server.removeprefix("http://").split(":")
    async with httpx.AsyncClient(base_url=server, timeout=120) as http:
        running = [
            asyncio.create_task(_fail(http, f"running-{n}")) for n in range(CONCURRENT_CHECKS)
        ]
        assert await _until(lambda: len(held.checked) == CONCURRENT_CHECKS)
        _, writer = await asyncio.open_connection(host, int(port))
        body = b'{"email": "gone@example.org", "password": "wrong password!"}'
        writer.write(
            b"POST /api/auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            + f"X-Forwarded-For: {_address()['X-Forwarded-For']}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        assert await _until(lambda: held.waiting() == 1)
        writer.close()
        await writer.wait_closed()
        # (the server sees the hang-up and gives up its place: or, before, kept it)
        await _until(lambda: held.waiting() == 0, within=10)
        held.gate.set()
        assert [answer.status_code for answer in await asyncio.gather(*running)] == [401, 401]
        # The queue empties either way: afterwards, no check is left to make.
        account = held.accounts[0]
        assert await _until(lambda: account._checks._value == CONCURRENT_CHECKS)
        after = await _fail(http, "after")
    assert after.status_code == 401
    assert "gone@example.org" not in held.checked
    assert len(held.checked) == CONCURRENT_CHECKS + 1  # the two running, and "after"


@pytest.fixture
def budget_of_three(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A database of its own (the global budget's row would outlive the test), and a global
    budget of three failures."""
    monkeypatch.setattr(ratelimit, "LOGIN_FAILURES_GLOBAL", 3, raising=False)
    url = create_database("cardinal_login")
    migrate(url)
    yield url
    drop_database(url)


async def test_a_global_budget_bounds_failures_from_every_address_but_lets_the_admin_in(
    budget_of_three: str, argon2_calls: list[str]
) -> None:
    """Per-address quotas alone let 20 addresses within their quotas spend 19 s of CPU;
    past the global budget nothing is hashed, and the administrator still signs in."""
    settings = settings_for(budget_of_three, forwarded_allow_ips=("127.0.0.1",))
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        for n in range(3):
            assert (await _fail(http, n)).status_code == 401
        checks = argon2_calls.count("verify")
        assert checks == 3
        over = await _fail(http, "over")
        problem = assert_problem(over, 429, "from every address together")
        assert problem["violated-policies"] == ["login-global"]
        assert '"login-global";q=3;w=900' in over.headers["ratelimit-policy"]
        assert int(over.headers["retry-after"]) > 0
        # The administrator, from anywhere, with the right password: in, without argon2.
        admin = await http.post(
            LOGIN, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers=_address()
        )
        assert admin.status_code == 200, admin.text
        # A wrong guess for the administrator's address is the same 429 as anyone's...
        wrong = {"email": ADMIN_EMAIL, "password": "wrong password!"}
        guesses = [await http.post(LOGIN, json=wrong, headers=_address()) for _ in range(10)]
        for guess in guesses:
            assert guess.json() == {**over.json(), "detail": guess.json()["detail"]}
            assert guess.json()["violated-policies"] == ["login-global"]
        assert argon2_calls.count("verify") == checks  # nothing hashed past the budget
        # ...and still counts against the account: the eleventh attempt finds it spent.
        spent = await http.post(
            LOGIN, json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}, headers=_address()
        )
        assert "login-account" in assert_problem(spent, 429, "try again")["violated-policies"]


async def test_admin_passes_the_spent_budget_once_a_hashed_password_was_checked(
    budget_of_three: str,
) -> None:
    """SUPER_ADMIN_PASSWORD given as an argon2 hash: the process learns the password from
    the first sign-in argon2 accepts; until then a spent budget refuses everyone."""
    hashed = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(ADMIN_PASSWORD)
    settings = settings_for(
        budget_of_three, forwarded_allow_ips=("127.0.0.1",), super_admin_password=hashed
    )
    right = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        assert (await http.post(LOGIN, json=right, headers=_address())).status_code == 200
        for n in range(3):
            assert (await _fail(http, n)).status_code == 401
        assert (await _fail(http, "over")).status_code == 429
        assert (await http.post(LOGIN, json=right, headers=_address())).status_code == 200


async def test_a_process_that_cannot_tell_the_admin_past_the_budget_charges_no_quota(
    budget_of_three: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SUPER_ADMIN_PASSWORD given as an argon2 hash, and no sign-in accepted by this process
    since it started (after a deploy, every process of `cardinal serve`): past the budget it
    refuses everyone alike. Each of the administrator's refused retries kept a unit of its
    account's quota (and its address's): ten of them spent the account for 15 minutes."""
    monkeypatch.setattr(ratelimit, "LOGIN_FAILURES_PER_ADDRESS", 5, raising=False)
    hashed = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(ADMIN_PASSWORD)
    settings = settings_for(
        budget_of_three, forwarded_allow_ips=("127.0.0.1",), super_admin_password=hashed
    )
    right = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    home = _address()
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        for n in range(3):
            assert (await _fail(http, n)).status_code == 401
        over = await _fail(http, "over")
        assert over.status_code == 429
        # More retries than the account's quota (10) and the address's (5 here).
        retries = [await http.post(LOGIN, json=right, headers=home) for _ in range(12)]
        wrong = await http.post(LOGIN, json={**right, "password": "wrong!"}, headers=home)
    for answer in [*retries, wrong]:
        problem = assert_problem(answer, 429, "from every address together")
        assert problem["violated-policies"] == ["login-global"]
        assert answer.json() == {**over.json(), "detail": problem["detail"]}


async def test_without_an_access_token_key_the_spent_budget_tells_nothing(
    budget_of_three: str, argon2_calls: list[str]
) -> None:
    """No JWT_SECRET_KEY (outside production): past the budget a wrong password was a 429
    and the right one a 401, which told whether the password was right."""
    settings = settings_for(
        budget_of_three, forwarded_allow_ips=("127.0.0.1",), jwt_secret_key=None
    )
    async with (
        running_api(settings, projections=()) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        for n in range(3):
            assert (await _fail(http, n)).status_code == 401
        answers = [
            await http.post(LOGIN, json={"email": ADMIN_EMAIL, "password": p}, headers=_address())
            for p in (ADMIN_PASSWORD, "wrong password!")
        ]
    assert argon2_calls.count("verify") == 0
    right, wrong = answers
    assert (right.status_code, wrong.status_code) == (429, 429)
    assert (
        right.json()["violated-policies"] == wrong.json()["violated-policies"] == ["login-global"]
    )
    assert {**right.json(), "detail": ""} == {**wrong.json(), "detail": ""}
