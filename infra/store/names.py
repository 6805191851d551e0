"""What a connection is, as PostgreSQL's pg_stat_activity (and `cardinal bench`) shows it.

Every `cardinal` command names its process's connections after itself (PGAPPNAME: "cardinal
api", "cardinal project", ...); the connections with a role of their own say so instead.
An operator who sets PGAPPNAME to a name of their own keeps it for the rest.
"""

from __future__ import annotations

import os
from typing import Any

PREFIX = "cardinal "
# TCP keepalives and a send timeout for the connections ballots and reads wait on: a
# connection cut without a reset (a failover, a silent network cut) fails in about 11 s
# instead of after the kernel's two hours, into the paths that handle a lost connection.
# (A server that is frozen still acknowledges at the TCP level: see api/deadline.py and
# the writer's STALLED_AFTER for that.)
ALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}

# The one-shot commands' connections (`cardinal migrate`, `projections`, `rebuild`, `audit`):
# a server that accepts connections but does not answer (frozen, overloaded) is given
# CONNECT_TIMEOUT seconds, then the command says it cannot reach the database instead of
# hanging for good.
CONNECT_TIMEOUT = 10
COMMAND_CONNECTION: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, **ALIVE}


def connection_name(role: str) -> str:
    """The application_name of a connection with this role ("writer", "relay", ...)."""
    return PREFIX + role


def name_process_connections(command: str) -> None:
    """Name this process's other connections after its command (libpq reads PGAPPNAME)."""
    current = os.environ.get("PGAPPNAME")
    if current is None or current.startswith(PREFIX):
        os.environ["PGAPPNAME"] = connection_name(command)
