"""What a connection is, as PostgreSQL's pg_stat_activity (and `cardinal bench`) shows it.

Every `cardinal` command names its process's connections after itself (PGAPPNAME: "cardinal
api", "cardinal project", ...); the connections with a role of their own say so instead.
An operator who sets PGAPPNAME to a name of their own keeps it for the rest.
"""

from __future__ import annotations

import os

PREFIX = "cardinal "


def connection_name(role: str) -> str:
    """The application_name of a connection with this role ("writer", "relay", ...)."""
    return PREFIX + role


def name_process_connections(command: str) -> None:
    """Name this process's other connections after its command (libpq reads PGAPPNAME)."""
    current = os.environ.get("PGAPPNAME")
    if current is None or current.startswith(PREFIX):
        os.environ["PGAPPNAME"] = connection_name(command)
