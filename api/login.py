"""The administrator's account (SUPER_ADMIN_EMAIL, SUPER_ADMIN_PASSWORD), checked with argon2.

The password is hashed once, on the first sign-in, unless the setting already holds an
argon2 hash. A sign-in for any other address is checked against a dummy hash, so that the
time taken does not tell an attacker which address is the administrator's. argon2 costs
about 0.2 s of CPU and 64 MiB per check: checks run in a thread, two at a time per process
(CONCURRENT_CHECKS), and at most WAITING_CHECKS more wait for a turn: past them a sign-in is
refused at once (ChecksBusy, a 503), not queued behind seconds of others' checks. A sign-in
whose client hung up while it waited is not checked at all (ClientGone).

Without an account (no SUPER_ADMIN_EMAIL, hence no password either: ``configured``) no
sign-in can succeed, and there is no address to hide: nothing is hashed.

``known`` tells the right address and password apart without argon2, by an HMAC under a key
of this process's own, once this process knows the password in clear (given so in the
setting, or from a sign-in argon2 accepted): the sign-in's way past an emptied global
failure budget (api/ratelimit.py), which must not spend argon2 on anyone. It takes the same
time for every address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import threading
from typing import Any

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

CONCURRENT_CHECKS = 2
# Sign-ins waiting for a check's turn, past which another is refused at once (503 Busy):
# two turns of every slot, about half a second of waiting.
WAITING_CHECKS = 2 * CONCURRENT_CHECKS


class ChecksBusy(Exception):
    """WAITING_CHECKS sign-ins already wait for a check: this one is not queued."""


class ClientGone(Exception):
    """The client hung up while its sign-in waited for a check: nothing was checked."""


class AdminAccount:
    """Who may sign in as the administrator."""

    def __init__(self, email: str | None, password: str | None) -> None:
        self.email = email.strip().lower() if email else None
        self._password = password
        self._hasher = PasswordHasher()
        self._hash: str | None = password if password and password.startswith("$argon2") else None
        # The dummy costs what the real check costs: a hash given in the setting keeps the
        # operator's parameters, and a dummy of the defaults would answer another address
        # at another speed (review helper-38: 79 ms against 557 ms).
        self._dummy_hasher = self._hasher
        if self._hash is not None:
            with contextlib.suppress(InvalidHashError):
                self._dummy_hasher = PasswordHasher.from_parameters(extract_parameters(self._hash))
        self._dummy: str | None = None
        self._lock = threading.Lock()
        self._checks = asyncio.Semaphore(CONCURRENT_CHECKS)
        self._waiting = 0
        self._key = secrets.token_bytes(32)
        self._verifier: bytes | None = None
        if password is not None and self._hash is None:
            self._verifier = self._mac(password)

    @property
    def configured(self) -> bool:
        """Whether any sign-in can succeed (settings take both or neither)."""
        return self.email is not None and self._password is not None

    async def check(
        self, email: str, password: str, gone: asyncio.Future[Any] | None = None
    ) -> bool:
        """True only for the administrator's address with the right password. ChecksBusy
        when WAITING_CHECKS others already wait for a turn; ClientGone when ``gone`` (the
        client's hang-up) is done before this one's turn comes."""
        if not self.configured:
            return False  # (no account: no argon2, nothing to hide)
        if self._checks.locked() and self._waiting >= WAITING_CHECKS:
            raise ChecksBusy
        self._waiting += 1
        try:
            await self._turn(gone)
        finally:
            self._waiting -= 1
        try:
            return await asyncio.to_thread(self._check, email, password)
        finally:
            self._checks.release()

    async def _turn(self, gone: asyncio.Future[Any] | None) -> None:
        """Wait for a slot, or until the client hangs up (``gone``): then ClientGone."""
        if gone is None or not self._checks.locked():
            await self._checks.acquire()
            return
        turn = asyncio.ensure_future(self._checks.acquire())
        try:
            await asyncio.wait((turn, gone), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._give_up(turn)
            raise
        if gone.done():
            self._give_up(turn)
            raise ClientGone
        turn.result()

    def _give_up(self, turn: asyncio.Future[Any]) -> None:
        """A slot waited for and no longer wanted goes back, if it came (or once it does)."""

        def returned(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                self._checks.release()

        turn.cancel()
        turn.add_done_callback(returned)

    @property
    def recognises(self) -> bool:
        """Whether ``known`` can be True in this process: it holds the HMAC verifier (a
        clear-text setting, or a sign-in argon2 accepted here since the process started).
        Says nothing of any address or password sent."""
        return self.email is not None and self._verifier is not None

    def known(self, email: str, password: str) -> bool:
        """The right address and password, told by an HMAC (no argon2): False until this
        process knows the password in clear. The same work for any address."""
        verifier = self._verifier
        right_password = hmac.compare_digest(self._mac(password), verifier or bytes(32))
        right_email = self.email is not None and hmac.compare_digest(
            email.strip().lower().encode(), self.email.encode()
        )
        return verifier is not None and right_password and right_email

    def _mac(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode(), hashlib.sha256).digest()

    def _check(self, email: str, password: str) -> bool:
        stored, dummy = self._hashes()
        known = self.email is not None and hmac.compare_digest(
            email.strip().lower().encode(), self.email.encode()
        )
        try:
            self._hasher.verify(stored if known and stored else dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        right = known and stored is not None
        if right and self._verifier is None:
            self._verifier = self._mac(password)
        return right

    def _hashes(self) -> tuple[str | None, str]:
        with self._lock:
            if self._dummy is None:
                self._dummy = self._dummy_hasher.hash(secrets.token_urlsafe(16))
            if self._hash is None and self._password is not None:
                self._hash = self._hasher.hash(self._password)
            return self._hash, self._dummy
