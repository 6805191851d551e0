"""A pool's connections cut as they are lent: the race a pool cannot see.

A backend terminated a few ms before its connection is lent has its goodbye still on the
way, and the connection looks alive; the statement sent on it fails. ``CutAsLent`` makes
that happen every time: it wraps ``infra.store.reconnect.hung_up`` (which every pool of
ours asks before it lends a connection), and each of the next ``times`` connections it
finds alive and ``chosen`` has its backend terminated, and gone, before it is lent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from infra.store import reconnect

Conn = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]


class CutAsLent:
    def __init__(
        self, url: str, monkeypatch: pytest.MonkeyPatch, chosen: Callable[[Conn], bool]
    ) -> None:
        self.url = url
        self.chosen = chosen
        self.times = 0
        self.cut: list[int] = []
        self._hung_up = reconnect.hung_up
        monkeypatch.setattr(reconnect, "hung_up", self.hung_up)

    def hung_up(self, conn: Conn) -> bool:
        if self._hung_up(conn):
            return True
        if self.times > 0 and self.chosen(conn):
            self.times -= 1
            pid = conn.info.backend_pid
            with psycopg.connect(self.url, autocommit=True) as admin:
                # (with a timeout it waits for the backend to exit: false if it did not)
                row = admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()
            assert row is not None
            assert row[0], "the backend outlived its termination"
            self.cut.append(pid)
        return False
