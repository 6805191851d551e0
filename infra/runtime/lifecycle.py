"""A process's ties to the others: children that die with `cardinal serve`, and one
`serve` per port.

Killed with SIGKILL, the supervisor cannot stop its children; left alone they would keep
serving, unsupervised, and a new `serve` would share the port with them (SO_REUSEPORT).
So each child asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG) and
stops as it would on any SIGTERM: draining. And `serve` refuses to start on a port that
something else is bound to, with a message that says so; in development, also on a data
folder another live `serve` holds (its `env` file, which other commands source, and its
embedded PostgreSQL are that serve's).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1
PARENT_ENV = "CARDINAL_PARENT_PID"
SERVE_LOCK = "serve.pid"  # in the data folder: held (flock) by the serve that owns it


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


class DataDirInUse(PortInUse):
    """Another live `cardinal serve` holds the data folder (and the env file in it)."""


def hold_data_dir(data_dir: Path) -> int:
    """Take the data folder for this `serve` until the process ends: an exclusive flock on
    ``data_dir/serve.pid``, or DataDirInUse naming the serve that holds it. The kernel drops
    the lock when its holder dies, however it dies: a file left by a crashed serve blocks
    nothing. The file is emptied; name_holder() writes this process and its ports into it
    once its ports are known to be free (a serve refused for a busy port named a process
    that never served). Returns the descriptor to close (it is not inherited by children,
    which are started with exec)."""
    path = data_dir / SERVE_LOCK
    data_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(descriptor)
        os.close(descriptor)
        raise DataDirInUse(
            f"another `cardinal serve` ({holder}) is running with CARDINAL_DATA_DIR={data_dir}, "
            f"and {data_dir / 'env'} (which other commands source) and its database are that "
            "serve's; stop it first, or give this one its own CARDINAL_DATA_DIR"
        ) from None
    try:
        os.ftruncate(descriptor, 0)  # an earlier serve's pid: not this one's, not running
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def name_holder(descriptor: int, port: int, metrics_port: int) -> None:
    """Write this process and its ports into the held serve.pid (hold_data_dir's
    descriptor), for a serve refused beside it to name."""
    held = {"pid": os.getpid(), "port": port, "metrics_port": metrics_port}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(held) + "\n").encode(), 0)


def _holder(descriptor: int) -> str:
    try:
        held = json.loads(os.pread(descriptor, 4096, 0))
        return f"pid {int(held['pid'])}, port {int(held['port'])}, metrics port " + str(
            int(held["metrics_port"])
        )
    except (ValueError, KeyError, TypeError, OSError):
        return "its pid not written yet"


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
