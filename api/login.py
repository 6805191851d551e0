"""The administrator's account (SUPER_ADMIN_EMAIL, SUPER_ADMIN_PASSWORD), checked with argon2.

The password is hashed once, on the first sign-in, unless the setting already holds an
argon2 hash. A sign-in for any other address is checked against a dummy hash, so that the
time taken does not tell an attacker which address is the administrator's. argon2 costs
about 0.2 s of CPU and 64 MiB per check: checks run in a thread, two at a time per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import threading

from argon2 import PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

CONCURRENT_CHECKS = 2


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

    async def check(self, email: str, password: str) -> bool:
        """True only for the administrator's address with the right password."""
        async with self._checks:
            return await asyncio.to_thread(self._check, email, password)

    def _check(self, email: str, password: str) -> bool:
        stored, dummy = self._hashes()
        known = self.email is not None and hmac.compare_digest(
            email.strip().lower().encode(), self.email.encode()
        )
        try:
            self._hasher.verify(stored if known and stored else dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return known and stored is not None

    def _hashes(self) -> tuple[str | None, str]:
        with self._lock:
            if self._dummy is None:
                self._dummy = self._dummy_hasher.hash(secrets.token_urlsafe(16))
            if self._hash is None and self._password is not None:
                self._hash = self._hasher.hash(self._password)
            return self._hash, self._dummy
