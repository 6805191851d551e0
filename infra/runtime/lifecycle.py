"""A process's ties to the others: children that die with `cardinal serve`, and one
`serve` per port.

Killed with SIGKILL, the supervisor cannot stop its children; left alone they would keep
serving, unsupervised, and a new `serve` would share the port with them (SO_REUSEPORT).
So each child asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG) and
stops as it would on any SIGTERM: draining. And `serve` refuses to start on a port that
something else is bound to, with a message that says so.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1
PARENT_ENV = "CARDINAL_PARENT_PID"


class PortInUse(Exception):
    """Another process is bound to the port `serve` was asked to use."""


def die_with_parent() -> None:
    """In a child of `serve`: SIGTERM when the parent dies; exit now if it already has."""
    if not sys.platform.startswith("linux"):  # pragma: no cover - Linux only
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:  # pragma: no cover
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    expected = os.environ.get(PARENT_ENV)
    if expected is not None and os.getppid() != int(expected):
        # The parent died before the request took effect: nobody will send the signal.
        raise SystemExit("the `cardinal serve` that started this process is gone; exiting")


def check_port_free(host: str, port: int, setting: str = "PORT") -> None:
    """PortInUse if something is bound to host:port (a plain bind, no SO_REUSEPORT, fails
    while any socket is bound there, our own API processes' included); ``setting`` names
    what to change."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        raise PortInUse(
            f"port {port} on {host} is already in use (another `cardinal serve`, or a "
            f"process it left behind?); stop it, or choose another {setting}"
        ) from None
    finally:
        probe.close()
