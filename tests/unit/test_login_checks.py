"""The administrator's sign-in check (api/login.py) and its quotas (api/ratelimit.py), without
a server: no argon2 without an account, a bounded queue, no check for a client gone while
queued; and ``known``, the way past a spent global budget (tests/unit/test_login_limits.py
has the budget itself)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from argon2 import PasswordHasher

from api.login import CONCURRENT_CHECKS, WAITING_CHECKS, AdminAccount, ChecksBusy, ClientGone


def test_without_an_account_nothing_is_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    account = AdminAccount(None, None)
    monkeypatch.setattr(AdminAccount, "_check", lambda *_: pytest.fail("argon2 was run"))
    assert not account.configured
    assert asyncio.run(account.check("admin@example.org", "any password at all")) is False
    assert account.known("admin@example.org", "any password at all") is False


class Held:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.gate = threading.Event()
        self.checked: list[str] = []

        def held(_: AdminAccount, email: str, password: str) -> bool:
            self.checked.append(email)
            self.gate.wait(30)
            return False

        monkeypatch.setattr(AdminAccount, "_check", held)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_past_the_waiting_checks_a_sign_in_is_refused_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(monkeypatch)
    account = AdminAccount("admin@example.org", "correct horse battery staple")
    tasks = [
        asyncio.create_task(account.check(f"{n}@example.org", "wrong"))
        for n in range(CONCURRENT_CHECKS + WAITING_CHECKS)
    ]
    await _settle()
    with pytest.raises(ChecksBusy):
        await account.check("late@example.org", "wrong")
    held.gate.set()
    assert await asyncio.gather(*tasks) == [False] * len(tasks)
    assert len(held.checked) == CONCURRENT_CHECKS + WAITING_CHECKS
    # Room again: the next one waits its turn.
    assert await account.check("next@example.org", "wrong") is False


async def test_a_client_gone_while_waiting_is_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(monkeypatch)
    account = AdminAccount("admin@example.org", "correct horse battery staple")
    running = [
        asyncio.create_task(account.check(f"{n}@example.org", "wrong"))
        for n in range(CONCURRENT_CHECKS)
    ]
    await _settle()
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(account.check("gone@example.org", "wrong", gone))
    await _settle()
    gone.set_result(None)
    with pytest.raises(ClientGone):
        await waiting
    held.gate.set()
    await asyncio.gather(*running)
    assert "gone@example.org" not in held.checked
    assert account._checks._value == CONCURRENT_CHECKS  # every slot back
    assert account._waiting == 0


def test_known_tells_the_admin_by_an_hmac_only_once_the_password_is_known() -> None:
    plain = AdminAccount("Admin@Example.org", "correct horse battery staple")
    assert plain.known(" admin@example.ORG", "correct horse battery staple")
    assert not plain.known("admin@example.org", "wrong")
    assert not plain.known("other@example.org", "correct horse battery staple")
    hashed = AdminAccount("admin@example.org", "$argon2id$v=19$m=8,t=1,p=1$c29tZXNhbHQ$aGFzaA")
    assert not hashed.known("admin@example.org", "correct horse battery staple")


def test_recognises_says_whether_known_can_pass_anyone_in_this_process() -> None:
    """The route gives a spent budget's units back where no one can pass (no oracle)."""
    password = "correct horse battery staple"
    assert AdminAccount("admin@example.org", password).recognises
    assert not AdminAccount(None, None).recognises
    hashed = AdminAccount(
        "admin@example.org",
        PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(password),
    )
    # (what it said before any check, after a wrong one, and after the right one)
    said = [hashed.recognises]
    assert not hashed._check("admin@example.org", "wrong")
    said.append(hashed.recognises)
    assert hashed._check("admin@example.org", password)
    said.append(hashed.recognises)
    assert said == [False, False, True]
    assert hashed.known("admin@example.org", password)
